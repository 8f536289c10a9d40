"""The static description of a run and its train state.

``RunSpec`` is everything the compiled functions close over (the model, the
config, the device mesh, the dataset size, the optimiser): static for jit.
``TrainState`` is the train state: a ``flax.struct.dataclass`` of arrays
(a pytree: jit, vmap over parallel runs and checkpoints see its fields),
made by ``init_state`` and advanced by ``step.sgd_update``.

``TrainState.warm`` is True while the error-based warm-up is on;
``warm_errors`` holds the error of each of the last ``warmup_window``
mini-batches (batch ``s`` at ``s % warmup_window``; 1.0, all wrong, before
there were that many), whose mean ends the warm-up (``warmup_update``). Its
shape is fixed, so the step never recompiles, and it stays on the devices.

``TrainMetrics`` is a ``clu.metrics`` collection accumulated on the device
by every step (the mean loss of the finite steps, the error of every
image); the loop reads it only at reporting intervals.

Everything a step needs (data order, augmentation, dropout) is a pure
function of ``rng`` and ``step``, so a resumed run continues exactly where
the interrupted one was.
"""

import dataclasses
import warnings
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resflax import models
from resflax.training import compile_cache

PyTree = Any


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """What the step accumulates: loss per finite step, error per image."""

  loss: clu_metrics.Average.from_output("loss")
  error: clu_metrics.Average.from_output("error")


@flax.struct.dataclass
class TrainState:
  """The train state: everything that changes from one step to the next.

  With ``train.parallel_runs > 1`` every field has a leading run axis.

  Attributes:
    step: int32, the steps made (the next step's index).
    variables: the network's ``{'params', 'batch_stats', 'lesion'}``.
    opt_state: the optimiser's state (``make_optimizer``): the momentum
      buffers.
    rng: uint32 key data of the run's key, from which every step's data
      order, augmentation and dropout derive (with ``step``).
    warm: bool, True while the error-based warm-up is on.
    warm_errors: f32 ``(train.warmup_window,)``, the last batches' errors
      (``warmup_update``).
    nonfinite_step: int32, the first step whose loss or parameters were not
      finite; -1: none.
    nonfinite_value: f32, that step's loss.
    skipped: int32, the non-finite steps not applied.
    metrics: the ``TrainMetrics`` accumulated since the run started.
  """

  step: jax.Array
  variables: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  warm: jax.Array
  warm_errors: jax.Array
  nonfinite_step: jax.Array
  nonfinite_value: jax.Array
  skipped: jax.Array
  metrics: TrainMetrics

  def __getitem__(self, name: str):
    # The state was a dict: it reads as one for a release, so notebooks
    # and scripts written against that keep working meanwhile.
    warnings.warn(
        f"state[{name!r}] is deprecated: the train state is a TrainState, "
        f"read state.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(self, name)


@dataclasses.dataclass
class RunSpec:
  """Static description of a run: what the compiled functions close over.

  Attributes:
    model: the network.
    config: the experiment config.
    mesh: the device mesh.
    num_train: training images held on the devices (0 when streamed).
    optimizer: ``make_optimizer(config.train)``, SGD at the config's rate:
      it makes the state's ``opt_state``; each step builds the same SGD at
      that step's rate.
  """

  model: models.Network
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  num_train: int
  optimizer: optax.GradientTransformation

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def jit_options(self) -> dict[str, Any]:
    """Keyword arguments of ``jax.jit`` for this run's programs."""
    return {
        "compiler_options": compile_cache.compiler_options(self.config.train)
    }


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over every device (all processes)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1), ("data",))


def model_config(
    config: ml_collections.ConfigDict, num_devices: int
) -> dict[str, Any]:
  """The model keys of ``config`` with the trainer's BN choice applied."""
  m = config.model.to_dict()
  m["widths"] = tuple(m.get("widths") or ())
  if not config.train.bn_sync and not m.get("bn_group_size"):
    m["bn_group_size"] = config.train.batch_size // num_devices
  return m


def make_optimizer(train_cfg, rate=None) -> optax.GradientTransformation:
  """SGD as Torch's: weight decay added to the gradient, momentum, the rate.

  ``optax.add_decayed_weights`` adds ``weight_decay * p`` to the gradient of
  every parameter (Torch's SGD decays them all), then ``optax.sgd`` keeps
  the momentum (Nesterov's with ``train.nesterov``) and scales by the rate.
  The rate has no state, so the optimiser state is the same at every rate.

  Each step builds this at its own rate, ``learning_rate(step, warm)``, a
  traced scalar: a new rate never recompiles. The rate is not kept in the
  optimiser state (``optax.inject_hyperparams`` would keep the last one):
  it is a function of the step, the warm-up switch and the config, and a
  stored copy is one that checkpoints written before could not be upgraded
  to exactly (their last step's rate depends on whether the warm-up ended
  at that very step). Nor is it an optax schedule: a schedule sees optax's
  update count, not the warm-up switch.

  Args:
    train_cfg: ``config.train`` (parallel runs: its scalars traced per run).
    rate: the learning rate, a float or a traced scalar; None:
      ``train_cfg.learning_rate``.
  """
  return optax.chain(
      optax.add_decayed_weights(train_cfg.weight_decay),
      optax.sgd(
          train_cfg.learning_rate if rate is None else rate,
          momentum=train_cfg.momentum,
          nesterov=train_cfg.nesterov,
      ),
  )


def build_run(
    config: ml_collections.ConfigDict,
    num_classes: int,
    num_train: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> RunSpec:
  """The model and static run description of ``config``.

  Args:
    config: an experiment config.
    num_classes: the dataset's number of classes.
    num_train: training images held on the devices (0 when streamed).
    mesh: the device mesh; default: every device.
  """
  mesh = mesh if mesh is not None else make_mesh()
  mcfg = model_config(config, mesh.size)
  mcfg["num_classes"] = num_classes
  return RunSpec(
      models.create_model(mcfg),
      config,
      mesh,
      num_train,
      make_optimizer(config.train),
  )


def schedule_scale(train_cfg) -> float:
  """Factor applied to boundaries and warm-up (smoke configs only)."""
  t = train_cfg
  return (t.steps / t.schedule_steps) if t.scale_schedule else 1.0


def lr_drop_steps(train_cfg) -> tuple:
  """The steps at which the learning rate drops (boundaries, scaled)."""
  scale = schedule_scale(train_cfg)
  return tuple(int(round(b * scale)) for b in train_cfg.lr_boundaries)


def learning_rate(step, warm, train_cfg) -> jax.Array:
  """The step's learning rate: warm-up, then piecewise constant decay.

  Args:
    step: int32 step (traced).
    warm: bool, True while the error-based warm-up is still on (until the
      error over the last ``train.warmup_window`` batches is below
      ``train.warmup_until_error``: ``warmup_update``).
    train_cfg: ``config.train``.
  """
  t = train_cfg
  scale = schedule_scale(t)
  boundaries = jnp.asarray(
      lr_drop_steps(t) or [np.iinfo(np.int32).max], jnp.int32
  )
  passed = jnp.sum(step >= boundaries) if t.lr_boundaries else 0
  lr = t.learning_rate * jnp.power(t.lr_decay, passed)
  in_warmup = step < int(round(t.warmup_steps * scale))
  if t.warmup_until_error > 0:
    in_warmup = in_warmup | warm
  return jnp.where(in_warmup, t.warmup_learning_rate, lr).astype(jnp.float32)


def warmup_update(
    warm: jax.Array,
    errors: jax.Array,
    step: jax.Array,
    batch_error: jax.Array,
    until_error: float,
) -> tuple[jax.Array, jax.Array]:
  """The warm-up switch after one mini-batch (traced; no host sync).

  He et al. 2016 warm up "until the training error is below 80%": the
  error over the last ``len(errors)`` mini-batches, not one batch's (a
  128-image batch is under 80% wrong with 26 right answers, 6% of the time
  at a true error of 85%). Batches not yet seen count as all wrong, so a
  run cannot switch before its window has seen enough right answers. Once
  off, the warm-up stays off.

  Args:
    warm: bool, True while the warm-up is on.
    errors: f32 ``(window,)``, the last batches' errors (``warm_errors``).
    step: int32, the step whose batch this is.
    batch_error: f32, the fraction of the batch's images that were wrong.
    until_error: ``config.train.warmup_until_error``.

  Returns:
    ``(warm, errors)`` after this batch.
  """
  errors = errors.at[step % errors.shape[-1]].set(batch_error)
  return warm & ~(jnp.mean(errors) < until_error), errors


def init_state(spec: RunSpec, seed, image_shape) -> TrainState:
  """A fresh train state for ``seed`` (an int or a traced int32)."""
  init_key, run_key = jax.random.split(jax.random.key(seed))
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = spec.model.init(init_key, dummy)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      variables=variables,
      opt_state=spec.optimizer.init(variables["params"]),
      rng=jax.random.key_data(run_key),
      warm=jnp.asarray(spec.config.train.warmup_until_error > 0),
      warm_errors=jnp.ones((spec.config.train.warmup_window,), jnp.float32),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      nonfinite_value=jnp.zeros((), jnp.float32),
      skipped=jnp.zeros((), jnp.int32),
      metrics=TrainMetrics.empty(),
  )


def initial_state(spec: RunSpec, seed: int, image_shape) -> TrainState:
  """One run's initial state (``init_state``), jitted, replicated on the mesh.

  Drawn with JAX's classic (non-partitionable) threefry whatever the global
  setting: the initialiser is replicated, so nothing is lost, and XLA:CPU
  compiles it several times faster (benchmarks/RESULTS.md), which is most
  of a cold start. Steps use the global setting.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(
        lambda s: init_state(spec, s, image_shape),
        out_shardings=spec.replicated,
        **spec.jit_options,
    )(seed)
