"""Training: the run description, the step, the loop and its services.

Modules, from the bottom up: ``state`` (``RunSpec``, ``TrainState``, the
optimiser, learning rate), ``step`` (the compiled SGD step and evaluation),
``feeds`` (data on the devices or streamed), ``runs`` (parallel runs'
configs), ``checkpoint`` (Orbax, behind one module), ``metrics``
(TensorBoard, progress lines), ``preemption`` (SIGTERM), ``workdir`` (lock,
config, logs, results), ``validate`` (config checks), ``trainer`` (one
run's loop: ``Trainer``), ``parallel`` (a group of parallel runs:
``GroupTrainer``) and ``loop`` (``train_and_evaluate``, which picks one).
"""

from resflax.training.loop import train_and_evaluate
from resflax.training.resume import restore_state
from resflax.training.state import (
    RunSpec,
    TrainState,
    build_run,
    init_state,
    learning_rate,
    make_mesh,
    make_optimizer,
    model_config,
)
from resflax.training.step import (
    evaluate_split,
    sgd_update,
    step_on_batch,
    step_on_dataset,
)
from resflax.training.validate import validate_config

__all__ = [
    "train_and_evaluate",
    "restore_state",
    "RunSpec",
    "TrainState",
    "build_run",
    "init_state",
    "learning_rate",
    "make_mesh",
    "make_optimizer",
    "model_config",
    "evaluate_split",
    "sgd_update",
    "step_on_batch",
    "step_on_dataset",
    "validate_config",
]
