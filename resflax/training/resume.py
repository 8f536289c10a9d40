"""What a resumed run checks before it trains on: the checkpoint it restores
fits the config, and the config does not ask for fewer steps than were run.

Both refusals come before anything in the workdir changes.
"""

import jax

from resflax.errors import CheckpointError, ConfigError
from resflax.training.state import upgrade_v0_state, v0_layout

# What Orbax says when a checkpoint's tree or shapes differ from the target.
_MISMATCH = (
    "tree structures do not match",
    "is not compatible with the " "stored shape",
)


def restore(ckpt, state, batch_size: int, changes: list[str] | None = None):
  """The newest good checkpoint, in today's layout or resflax 0.1's.

  Args:
    ckpt: the run's ``checkpoint.Checkpointer``.
    state: the initial state (structure, shapes, shardings to restore into).
    batch_size: the run's batch size (to upgrade a resflax 0.1 state).
    changes: ``"key: old -> new"`` of a config change allowed by
      ``train.allow_config_change``; named when the checkpoint no longer fits.

  Returns:
    ``(step, state)``, or None for a new run.

  Raises:
    ConfigError: a changed config whose parameters do not fit the checkpoint.
    CheckpointError: the checkpoints cannot be restored.
  """
  try:
    return ckpt.restore_latest_good(state)
  except CheckpointError as e:
    error = e
  if "tree structures do not match" in str(error):
    try:  # a workdir of resflax 0.1: its metrics were plain sums.
      step, old = ckpt.restore_latest_good(v0_layout(state))
      shardings = jax.tree.map(lambda a: a.sharding, state)
      return step, jax.device_put(upgrade_v0_state(old, batch_size), shardings)
    except CheckpointError:
      if not changes:
        raise
  if changes and any(m in str(error) for m in _MISMATCH):
    raise ConfigError(
        f"the checkpoints in {ckpt.directory} do not fit the changed config "
        f"({'; '.join(changes)}): its parameters have another structure or "
        "shape. config.train.allow_config_change continues only changes "
        "that keep them (train.* keys, say); choose another --workdir"
    ) from None
  raise error


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
