"""Command line: ``python -m resflax.main --config experiments/X.py --workdir DIR``.

Flags:
  --config: an experiment file with ``get_config(arg)``; ``file.py:arg``
    passes ``arg`` (e.g. ``:110``, ``:smoke``). The config is locked: a
    mistyped ``--config.key=value`` is an error naming the key.
  --workdir: run directory (checkpoints, TensorBoard events, results).

A mistake in the flags, the config file or the config is one line on
stderr with exit status 2 (1 for errors found while running); set
``RESFLAX_TRACEBACK=1`` to see the full traceback instead.
"""

import os
import re
import sys

from absl import app
from absl import flags
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
  try:
    config = _CONFIG.value
    distributed = config.distributed  # an unreadable file raises only here
  except Exception as e:  # pylint: disable=broad-except
    _fail(flag_error_line(e, sys.argv))
  if distributed or _COORDINATOR.value:
    # Must precede any other use of JAX in the process.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from resflax import runner  # pylint: disable=g-import-not-at-top
  try:
    result = runner.run(config, _WORKDIR.value)
  except (ValueError, RuntimeError) as e:
    # Errors of ours carry a message a user can act on; print it alone.
    from resflax import errors  # pylint: disable=g-import-not-at-top
    if errors.is_user_error(e):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    raise
  if isinstance(result, dict) and result.get("interrupted"):
    # 128 + SIGTERM: schedulers read this as "stopped by a signal, rerun".
    sys.exit(143)


def _innermost(e: BaseException) -> BaseException:
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return e


def flag_error_line(e: BaseException, argv) -> str:
  """One line saying which flag, key or file is wrong and what is allowed."""
  inner = _innermost(e)
  if isinstance(inner, KeyError):  # a key the locked config does not have
    key = str(inner.args[0]).strip("'\"")
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    flag = next((g for g in given if g.rsplit(".", 1)[-1] == key), key)
    hint = re.search(r"Did you mean \"([^\"]+)\"", str(e))
    return (f"{flag}: no such config key" +
            (f"; did you mean {flag.rsplit('.', 1)[0]}.{hint.group(1)}?"
             if hint else ""))
  if isinstance(e, OSError) and "Failed loading config file" in str(e):
    given = next((a.split("=", 1)[-1] for a in argv
                  if a.startswith("--config=")), "")
    path = given or next((argv[i + 1] for i, a in enumerate(argv[:-1])
                          if a == "--config"), "?")
    return f"--config: cannot read the experiment file {path}"
  text = str(inner) if inner is not e else str(e)
  if inner is not e and isinstance(e, flags.Error):
    flag = re.match(r"flag (--[^=:]+)", str(e))
    if flag and flag.group(1) not in text:
      text = f"{flag.group(1)}: {text}"
  return " ".join(text.split())


def _fail(line: str):
  if os.environ.get("RESFLAX_TRACEBACK"):
    raise  # pylint: disable=misplaced-bare-raise
  print(f"error: {line}", file=sys.stderr)
  sys.exit(2)


def shipped_experiment_argv(argv):
  """``argv`` with ``--config experiments/NAME.py[:arg]`` pointed at the file
  shipped with resflax when the current directory has no such file."""
  from resflax import config as config_lib  # pylint: disable=g-import-not-at-top
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      prefix, value = "--config=", a[len("--config="):]
    elif a == "--config" and i + 1 < len(out):
      i, prefix, value = i + 1, "", out[i + 1]
    else:
      continue
    path, colon, arg = value.partition(":")
    out[i] = prefix + config_lib.resolve_experiment(path) + colon + arg
    break
  return out


def _parse_flags(argv):
  try:
    return flags.FLAGS(shipped_experiment_argv(argv))
  except Exception as e:  # pylint: disable=broad-except
    _fail(flag_error_line(e, argv))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
