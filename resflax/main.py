"""Command line: ``python -m resflax.main --config X.py --workdir DIR``.

Flags:
  --config: an experiment file with ``get_config(arg)``; ``file.py:arg``
    passes ``arg``. In every experiment file a case, group or network is
    named the way models are (``resnet110``; ``resnet-110`` is read the
    same); ``smoke`` shrinks whatever the argument names to seconds on a
    CPU. In ``cifar_resnet.py`` a depth alone (``:110``) trains one network
    once (DIR/results.json) and a name (``:resnet110``) runs that case of
    the table for every seed (DIR/<case>/seed<s>/). The config is locked: a
    mistyped ``--config.key=value`` is an error naming the key.
  --workdir: run directory (checkpoints, TensorBoard events, results).
  --verbose: absl's prefix (level, date, thread, file:line) on every log
    line instead of ``HH:MM:SS``; so does ``RESFLAX_VERBOSE=1``.

A mistake in the flags, the config file or the config is one line on
stderr naming the flag, with exit status 2 (1 for errors found while
running); set ``RESFLAX_TRACEBACK=1`` to see the full traceback instead.
"""

import os
import re
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from resflax import logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (file.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    "Prefix log lines with absl's level, date, thread and "
    f"file:line (or set {logs.VERBOSE_ENV}=1).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-host: host:port of process 0 (omit under SLURM, Open MPI or on "
    "Cloud TPU, where jax.distributed finds it).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index."
)
flags.mark_flags_as_required(["config", "workdir"])

# Shown for a required flag left out.
_EXAMPLES = {
    "config": "--config experiments/cifar_resnet.py:smoke",
    "workdir": "--workdir runs/smoke",
}
_HELP = {
    "-h": True,
    "-?": True,
    "--help": True,
    "--helpshort": True,
    "--helpfull": False,
}  # flag -> short help (this module's flags)


def main(argv):
  del argv  # _parse_flags refused positional arguments
  logs.setup_logging(verbose=True if _VERBOSE.value else None)
  try:
    config = _CONFIG.value
    distributed = config.distributed  # an unreadable file raises only here
  except Exception as e:  # pylint: disable=broad-except
    _fail(flag_error_line(e, sys.argv))
  if distributed or _COORDINATOR.value:
    # Must precede any other use of JAX in the process.
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
  # pylint: disable=g-import-not-at-top
  from resflax import errors, runner
  from resflax.training import preemption

  try:
    result = runner.run(config, _WORKDIR.value)
  except KeyboardInterrupt:
    # Before training caught Ctrl-C, or pressed twice: no save was waited for.
    _stop_line(
        "error: interrupted (Ctrl-C) without saving this step; run the "
        "same command to resume from the last checkpoint",
        130,
    )
  except Exception as e:  # pylint: disable=broad-except
    # Errors of ours carry a message a user can act on; print it alone. An
    # OSError (also one a library's background writer wrapped) names the
    # file and what the system said, which is as useful.
    if errors.is_user_error(e):
      _stop_line(f"error: {e}", 1)
    cause = e
    while cause is not None and not isinstance(cause, OSError):
      cause = cause.__cause__
    if cause is not None:
      where = (
          f" {cause.filename}" if cause.filename else f" in {_WORKDIR.value}"
      )
      _stop_line(
          f"error: cannot use{where}: {cause.strerror or cause}; "
          "fix it and run the same command to resume",
          1,
      )
    raise
  if isinstance(result, dict) and result.get("interrupted"):
    # 128 + the signal (143 SIGTERM, 130 Ctrl-C): schedulers read it as
    # "stopped by a signal, rerun".
    sys.exit(128 + (preemption.last_signal() or 15))


def _stop_line(line: str, status: int):
  if os.environ.get("RESFLAX_TRACEBACK"):
    raise  # pylint: disable=misplaced-bare-raise
  print(" ".join(line.split()), file=sys.stderr)
  sys.exit(status)


def _innermost(e: BaseException) -> BaseException:
  """The first exception of the chain; ``raise ... from None`` ends it."""
  while True:
    nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if nxt is None:
      return e
    e = nxt


def _example(flag: str) -> str:
  """``flag=value`` with its current value, or a placeholder."""
  name = flag.lstrip("-")
  try:
    if name.startswith("config."):
      value = flags.FLAGS["config"].value
      for part in name.split(".")[1:]:
        value = value[part]
    else:
      value = flags.FLAGS[name].default
  except Exception:  # pylint: disable=broad-except
    value = None  # the config is not loaded yet, or no such key
  if value is None or hasattr(value, "keys"):
    return f"{flag}=VALUE"
  if isinstance(value, (tuple, list)):
    return f'{flag}="{tuple(value)}"'
  return f"{flag}={value}"


def _absl_error_line(text: str):
  """absl's message for a flag mistake as ``--flag: what``, or None."""
  m = re.match(r"Missing value for flag --(\S+)", text)
  if m:
    example = _EXAMPLES.get(m.group(1)) or _example(f"--{m.group(1)}")
    return f"--{m.group(1)}: needs a value (e.g. {example})"
  m = re.match(
      r"Found (--config\.[^=\s]+)\S* in argv before a value for " r"--config",
      text,
  )
  if m:
    return (
        f"{m.group(1)}: comes before --config; put --config first, "
        "the overrides after it"
    )
  m = re.match(
      r"Unknown command line flag '([^']+)'(?:\. Did you mean: " r"(.+?) \?)?",
      text,
  )
  if m:
    close = [
        f"--{c.strip()}" for c in (m.group(2) or "").split(",") if c.strip()
    ]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"--{m.group(1)}: no such flag; {hint}" "--help lists the flags"
  m = re.match(
      r"flag --(\w+)=None: Flag --\w+ must have a value other than " r"None",
      text,
  )
  if m:
    example = _EXAMPLES.get(m.group(1), f"--{m.group(1)}=VALUE")
    return f"--{m.group(1)}: required (e.g. {example})"
  m = re.match(r"flag (--[^=:]+)=[^:]*: (.+)", text, re.S)
  if m:
    return f"{m.group(1)}: {m.group(2)}"
  return None


def flag_error_line(e: BaseException, argv) -> str:
  """One line saying which flag, key or file is wrong and what is allowed."""
  inner = _innermost(e)
  if isinstance(inner, KeyError):  # a key the locked config does not have
    key = str(inner.args[0]).strip("'\"")
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    flag = next((g for g in given if g.rsplit(".", 1)[-1] == key), key)
    hint = re.search(r"Did you mean \"([^\"]+)\"", str(e))
    return f"{flag}: no such config key" + (
        f"; did you mean {flag.rsplit('.', 1)[0]}.{hint.group(1)}?"
        if hint
        else ""
    )
  if isinstance(e, OSError) and "Failed loading config file" in str(e):
    given = next(
        (a.split("=", 1)[-1] for a in argv if a.startswith("--config=")), ""
    )
    path = given or next(
        (argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), "?"
    )
    return f"--config: cannot read the experiment file {path}"
  text = str(inner) if inner is not e else str(e)
  bool_value = re.match(r"flag (--\w+)=(.*): \('Non-boolean argument", str(e))
  if bool_value:
    return (
        f"{bool_value.group(1)}: takes no value, =true or =false, not "
        f"{bool_value.group(2)!r}"
    )
  if inner is not e and isinstance(e, flags.Error):
    flag = re.match(r"flag (--[^=:]+)", str(e))
    if flag and flag.group(1) not in text:
      text = f"{flag.group(1)}: {text}"
  elif isinstance(e, flags.Error):
    text = _absl_error_line(text) or text
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
      prefix, value = "--config=", a[len("--config=") :]
    elif a == "--config" and i + 1 < len(out):
      i, prefix, value = i + 1, "", out[i + 1]
    else:
      continue
    path, colon, arg = value.partition(":")
    out[i] = prefix + config_lib.resolve_experiment(path) + colon + arg
    break
  return out


def _help(argv):
  """Prints the usage and exits 0 when ``argv`` asks for help."""
  asked = [a for a in argv[1:] if a in _HELP]
  if asked:
    short = _HELP[asked[0]]
    app.usage(shorthelp=short, writeto_stdout=True)
    if short:
      print("Try --helpfull to get a list of all flags.")
    sys.exit(0)


def _parse_flags(argv):
  _help(argv)
  try:
    rest = flags.FLAGS(shipped_experiment_argv(argv))
  except Exception as e:  # pylint: disable=broad-except
    _fail(flag_error_line(e, argv))
  if len(rest) > 1:
    _fail(
        f"unexpected argument {rest[1]!r}: flags take the form "
        "--name=value (--help lists them)"
    )
  return rest


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
