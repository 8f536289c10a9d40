"""``train_and_evaluate(config, workdir)``: the entry point of training.

It validates the config, locks the workdir, loads the data onto the
devices, describes the run (``state.build_run``) and hands over to
``trainer.Trainer``, which builds or restores the train state, runs the
jitted SGD step (``trainer.make_step`` of ``step.step_on_dataset`` or
``step.step_on_batch``) with periodic reports, evaluations and
checkpoints, and writes the results. ``config.train.parallel_runs = R > 1``
trains R runs (``runs.run_configs``) in one program instead:
``parallel.GroupTrainer``, the state stacked on a leading run axis and the
step vmapped.

Workdir of a single run: ``config.json``, ``checkpoints/<step>/``,
``metrics.jsonl``, TensorBoard events, ``results.json`` (see
``resflax.training.workdir``). Of R parallel runs: ``config.json`` and
``checkpoints/`` (the stacked state) and ``results.json`` (``{"parallel_runs":
R, "runs": [{"seed", "dir", "status", "test_error" | "error"}], ...}``) at
the top, and each run's own ``config.json``, ``metrics.jsonl``, events and
``results.json`` (or ``failed.json``) in ``seed<s>/``.
"""

import contextlib
from typing import Any

import jax
import ml_collections
from absl import logging

from resflax import logs
from resflax.errors import Stopped
from resflax.training import compile_cache, feeds, runs, trainer
from resflax.training import workdir as workdir_lib
from resflax.training.parallel import GroupTrainer
from resflax.training.preemption import StopSignal
from resflax.training.runs import Runs
from resflax.training.state import RunSpec, build_run, make_mesh
from resflax.training.validate import validate_config


def make_step(group: Runs, spec: RunSpec, feed):
  """The compiled step of ``group``: one run's (``trainer.make_step``), or
  every run's vmapped (``runs.vmapped_step``). Benchmarks call it."""
  if group.stacked:
    return runs.vmapped_step(group, spec, feed)
  return trainer.make_step(spec, feed)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, brief: bool = False
) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if possible) and evaluates.

  Args:
    config: an experiment config (see ``resflax.config.base_config``).
    workdir: run directory: checkpoints, logs, TensorBoard events, results.
    brief: the start block, progress, evaluation and results lines at
      DEBUG, not INFO (a sweep's later runs); warnings still show.

  Returns:
    The results (the content of ``results.json``), or ``{"interrupted":
    True, "step": step}`` after SIGTERM.

  Raises:
    resflax.errors.ConfigError: an invalid config, or a workdir holding
      another config.
    resflax.errors.WorkdirError: a workdir in use or not writable.
    resflax.errors.DataError: data that cannot be found or read.
    resflax.errors.TrainingError: a non-finite loss or parameters
      (``on_nonfinite='stop'``; with parallel runs, once any run diverged,
      after the others' results are written).
    resflax.errors.CheckpointError: checkpoints that cannot be written or
      restored.
  """
  logs.setup_logging()
  validate_config(config)
  compile_cache.enable(config.train.compilation_cache)
  workdir_lib.check_config(config, workdir)
  is_main = jax.process_index() == 0
  # A group of parallel runs has each run's config and directory; one run
  # has only its own.
  group = None
  configs, config_files = [config], [(config, workdir)]
  if config.train.parallel_runs > 1:
    group = Runs(config, runs.run_configs(config), workdir, is_main)
    configs, config_files = group.configs, group.config_files()
  if is_main:
    workdir_lib.make_dir(workdir)
  with StopSignal(sigint=True) as stop:
    mesh = make_mesh()
    # Locked before the data loads, so a second run is refused at once.
    lock = workdir_lib.WorkdirLock(workdir) if is_main else None
    with lock or contextlib.nullcontext():
      try:
        # A download or decode can take minutes and polls no flag: SIGTERM
        # raises Stopped inside it (a download keeps its .part to resume).
        with stop.interrupting():
          feed = feeds.make_feed(config, configs, mesh)
      except Stopped:
        feed = None  # stop.received is set: reported below, before any use.
      changed = workdir_lib.check_config(config, workdir)
      if is_main and not changed:
        workdir_lib.write_configs(config_files, 0, missing_only=True)
      if stop.received is not None:
        logging.warning(
            "received signal %d while loading data: stopped "
            "before training; run the same command to start",
            stop.received,
        )
        return {"interrupted": True, "step": 0}
      spec = build_run(config, feed.num_classes, feed.num_train, mesh)
      if group is not None:
        return GroupTrainer(
            group, spec, feed, stop, config_changed=changed, brief=brief
        ).run()
      return trainer.Trainer(
          config,
          workdir,
          spec,
          feed,
          stop,
          config_changed=changed,
          is_main=is_main,
          brief=brief,
      ).run()
