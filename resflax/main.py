"""Command line: ``python -m resflax.main --config experiments/X.py --workdir DIR``.

Flags:
  --config: an experiment file with ``get_config(arg)``; ``file.py:arg``
    passes ``arg`` (e.g. ``:110``, ``:smoke``). The config is locked: a
    mistyped ``--config.key=value`` is an error naming the key.
  --workdir: run directory (checkpoints, TensorBoard events, results).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from resflax import logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (file.py[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: host:port of process 0 (omit under SLURM, Open MPI or on "
    "Cloud TPU, where jax.distributed finds it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.setup_logging()
  config = _CONFIG.value
  if config.distributed or _COORDINATOR.value:
    # Must precede any other use of JAX in the process.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  logging.info("JAX process %d/%d, %d local devices, %d devices in all",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  from resflax import runner  # pylint: disable=g-import-not-at-top
  try:
    result = runner.run(config, _WORKDIR.value)
  except (ValueError, RuntimeError) as e:
    # Errors of ours carry a message a user can act on; print it alone.
    from resflax import errors  # pylint: disable=g-import-not-at-top
    if errors.is_user_error(e):
      logging.error("%s", e)
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    raise
  if isinstance(result, dict) and result.get("interrupted"):
    # 128 + SIGTERM: schedulers read this as "stopped by a signal, rerun".
    sys.exit(143)


if __name__ == "__main__":
  app.run(main)
