"""Restoring a run's train state, whatever resflax wrote it, and what a
resumed run checks before it trains on: the checkpoint it restores fits the
config, and the config does not ask for fewer steps than were run.

``restore`` is the one way to read a train state back: training, the
lesion study and ``training.restore_state`` (notebooks, tests) use it. It
keys the layout it restores into on the format version the workdir records
(``resflax.training.formats``), upgrading older ones.

Both refusals come before anything in the workdir changes.
"""

import os
from typing import Any

import ml_collections

from resflax import data as data_lib
from resflax.errors import CheckpointError, ConfigError
from resflax.training import checkpoint as checkpoint_lib
from resflax.training import formats, runs
from resflax.training import workdir as workdir_lib
from resflax.training.state import build_run


class _Misfit(CheckpointError):
  """A checkpoint whose structure or shapes are not the run's."""


def restore(
    ckpt,
    state,
    batch_size: int,
    changes: list[str] | None = None,
    step: int | None = None,
):
  """The newest good checkpoint (or ``step``'s), in today's format.

  Args:
    ckpt: the run's ``checkpoint.Checkpointer`` (in ``<workdir>/checkpoints``).
    state: the initial state or its abstract shapes (structure, shapes,
      shardings to restore into).
    batch_size: the run's batch size (to upgrade a resflax 0.1 state).
    changes: ``"key: old -> new"`` of a config change allowed by
      ``train.allow_config_change``; named when the checkpoint no longer fits.
    step: the checkpoint to restore; None takes the newest good one.

  Returns:
    ``(step, state)``, or None for a new run (``step`` None only).

  Raises:
    ConfigError: a changed config whose parameters do not fit the checkpoint.
    CheckpointError: the checkpoints cannot be restored.
  """
  workdir = os.path.dirname(ckpt.directory)
  versions = {}

  def target(s: int):
    recorded = workdir_lib.format_version(workdir, s)
    if recorded is None or changes:
      stored = formats.structure(ckpt.stored_tree(s))
    if recorded is None:
      inferred = formats.infer_version(stored, state)
      # Not a layout resflax wrote: restoring today's names the difference.
      recorded = formats.CURRENT if inferred is None else inferred
    versions[s] = recorded
    tree = formats.layout(state, recorded)
    if changes and formats.structure(tree) != stored:
      raise _Misfit(f"checkpoint {s} does not fit the changed config")
    return tree

  try:
    if step is None:
      restored = ckpt.restore_latest_good(target)
    else:
      restored = ckpt.restore(target, step)
  except CheckpointError as e:
    if changes and isinstance(e.__cause__, _Misfit):
      raise ConfigError(
          f"the checkpoints in {ckpt.directory} do not fit the changed config "
          f"({'; '.join(changes)}): its parameters have another structure or "
          "shape. config.train.allow_config_change continues only changes "
          "that keep them (train.* keys, say); choose another --workdir"
      ) from None
    raise
  if restored is None:
    return None
  s, tree = restored
  return s, formats.upgrade(tree, versions[s], state, batch_size)


def check_steps(config, workdir: str, step: int) -> None:
  """Refuses ``train.steps`` below the step the workdir has reached.

  Raises:
    ConfigError: ``config.train.steps < step``; nothing was changed.
  """
  if step > config.train.steps:
    raise ConfigError(
        f"config.train.steps={config.train.steps} is below step {step}, which "
        f"the run in {workdir} has already reached; set it to {step} or more, "
        "or choose another --workdir (nothing was changed)"
    )


def restore_state(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> Any:
  """The train state a run of ``config`` saved in ``workdir``.

  Args:
    config: the run's config (``parallel_runs > 1``: the stacked state).
    workdir: the run's directory.
    step: the checkpoint's step; None takes the newest.

  Raises:
    resflax.errors.CheckpointError: no checkpoint, or it does not restore.
  """
  info = data_lib.source_info(config.data)
  num_classes, image_shape = info.num_classes, info.image_shape
  if num_classes is None:  # only the dataset itself knows (image folders)
    dataset = data_lib.load_dataset(config.data, seed=config.seed)
    num_classes, image_shape = dataset.num_classes, dataset.image_shape
  group = runs.Runs(config, runs.run_configs(config), workdir, False)
  target = runs.initial_state(
      group, build_run(config, num_classes), image_shape
  )
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as c:
    restored = restore(c, target, config.train.batch_size, step=step)
    if restored is None:
      raise CheckpointError(f"no complete checkpoint in {c.directory}")
    return restored[1]
