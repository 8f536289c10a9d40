"""Tests for resflax.logs: log lines outside app.run, libraries kept quiet."""

import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from resflax import logs


def _run(script, *args, env=None):
  """The stderr of ``python -c script args`` (``env`` added; '' unsets)."""
  full = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  full.pop(logs.VERBOSE_ENV, None)
  full.update({k: v for k, v in (env or {}).items() if v})
  proc = subprocess.run(
      [sys.executable, "-c", script, *args],
      cwd=REPO,
      env=full,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "msg", None, None)


def test_quiet_libraries_drops_their_info_only():
  quiet = logs.QuietLibraries(("orbax",))
  orbax = "/env/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not quiet.filter(_record(logging.INFO, orbax))
  assert not quiet.filter(_record(logging.DEBUG, orbax))
  assert quiet.filter(_record(logging.WARNING, orbax))
  assert quiet.filter(_record(logging.ERROR, orbax))
  assert quiet.filter(_record(logging.INFO, "/work/resflax/training/loop.py"))
  # A name that merely starts like the library is not the library.
  assert quiet.filter(_record(logging.INFO, "/env/orbax_tools/x.py"))


def test_line_formatter_time_message_and_level_word():
  formatter = logs.LineFormatter()
  info = logging.LogRecord(
      "absl", logging.INFO, "/x/loop.py", 7, "step %d", (3,), None
  )
  warning = logging.LogRecord(
      "absl", logging.WARNING, "/x/loop.py", 7, "disk %s", ("full",), None
  )
  assert re.fullmatch(r"\d\d:\d\d:\d\d step 3", formatter.format(info))
  assert re.fullmatch(
      r"\d\d:\d\d:\d\d WARNING disk full", formatter.format(warning)
  )


# absl's first log call configures Python logging (basicConfig) when nothing
# has; orbax logs at import. So set-up may come before the imports or after
# them (a training entry point, a notebook cell); both print the same.
_PROGRESS = textwrap.dedent("""
    import sys
    from resflax import logs

    if sys.argv[1] == 'first':
      logs.setup_logging()
    from resflax.training import metrics
    logs.setup_logging()
    logs.setup_logging()  # more calls must not print lines twice
    times = iter([0.0, 45.0, 54.9])  # start, first step done, report
    progress = metrics.ProgressLogger(
        1000, every_steps=100, every_secs=None, clock=lambda: next(times))
    progress.reset_timer(1)
    progress.report(100, images_per_step=128, extra={
        'train_loss': 2.25, 'train_error': 0.875, 'learning_rate': 0.1})
""")
_LINE = (
    r"step 100/1000 \(10\.0%\) \| 10\.00 steps/s \| 1280 img/s"
    r" \| ETA 1m30s \| train_loss=2\.25 train_error=0\.875"
    r" learning_rate=0\.1"
)
_TIME = r"\d\d:\d\d:\d\d "
# absl's: level, date, time, thread, file:line]
_ABSL_PREFIX = r"I\d{4} [\d:.]+ +\d+ metrics\.py:\d+\] "


@pytest.mark.parametrize("setup", ["first", "after_imports"])
@pytest.mark.parametrize(
    "verbose, prefix",
    [("", _TIME), ("1", _ABSL_PREFIX)],
    ids=["plain", "verbose"],
)
def test_progress_line_reaches_a_plain_python_call(setup, verbose, prefix):
  stderr = _run(_PROGRESS, setup, env={logs.VERBOSE_ENV: verbose})
  lines = [l for l in stderr.splitlines() if "steps/s" in l]
  assert len(lines) == 1, stderr[-3000:]
  assert re.fullmatch(prefix + _LINE, lines[0]), lines[0]
  assert "INFO:absl" not in stderr and "Logging before flag" not in stderr


# A user's own handler (a log file) keeps receiving resflax's records.
_USER_HANDLER = textwrap.dedent("""
    import logging, sys
    from absl import logging as absl_logging
    from resflax import logs

    logging.getLogger().addHandler(logging.FileHandler(sys.argv[1]))
    absl_logging.warning('before set-up')
    logs.setup_logging()
    absl_logging.info('after set-up')
""")


def test_setup_keeps_a_users_handler(tmp_path):
  path = tmp_path / "user.log"
  stderr = _run(_USER_HANDLER, str(path))
  assert path.read_text().splitlines() == ["before set-up", "after set-up"]
  assert re.search(r"^" + _TIME + "after set-up$", stderr, re.M), stderr


# Code compiled under orbax's, jax's and matplotlib's package directories
# logs INFO and a warning through absl (as orbax does) and through Python
# logging (as jax and matplotlib do); then resflax logs one INFO line.
_CHATTER = textwrap.dedent("""
    import sys
    from absl import app
    from absl import logging
    from resflax import logs

    LIBRARY = \'\'\'
    import logging as pylogging
    from absl import logging

    def chatter(name):
      logging.info(name + ' info via absl')
      pylogging.getLogger(name).info(name + ' info via logging')
      logging.warning(name + ' warning')
    \'\'\'
    libraries = []
    for name in ('orbax', 'jax', 'matplotlib'):
      module = {}
      path = f'/env/site-packages/{name}/_src/fake.py'
      exec(compile(LIBRARY, path, 'exec'), module)
      libraries.append((name, module['chatter']))

    def main(argv=()):
      logs.setup_logging()
      for name, chatter in libraries:
        chatter(name)
      logging.info('resflax info line')

    if sys.argv[1] == 'app':
      app.run(main, argv=sys.argv[:1])
    else:
      main()
""")


@pytest.mark.parametrize("mode", ["plain", "app"])
def test_library_info_dropped_and_warnings_kept(mode):
  stderr = _run(_CHATTER, mode)
  lines = stderr.splitlines()
  assert [l for l in lines if "resflax info line" in l] == [
      l for l in lines if re.fullmatch(_TIME + "resflax info line", l)
  ], stderr
  assert stderr.count("resflax info line") == 1, stderr
  for name in ("orbax", "jax", "matplotlib"):
    assert f"{name} info" not in stderr
    assert stderr.count(f"{name} warning") == 1, stderr
  # Warnings say so; absl's own warning went through the same handler.
  assert re.search(r"^" + _TIME + "WARNING orbax warning$", stderr, re.M)


def test_verbose_environment_under_app_run():
  stderr = _run(_CHATTER, "app", env={logs.VERBOSE_ENV: "1"})
  assert re.search(
      r"^I\d{4} [\d:.]+ +\d+ <string>:\d+\] resflax info line$", stderr, re.M
  ), stderr
