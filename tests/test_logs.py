"""Tests for resflax.logs: log lines outside app.run, libraries kept quiet."""

import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

from resflax import logs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-c', script, *args], cwd=REPO,
                        env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def _record(level, pathname):
  return logging.LogRecord('absl', level, pathname, 1, 'msg', None, None)


def test_quiet_libraries_drops_their_info_only():
  quiet = logs.QuietLibraries(('orbax',))
  orbax = '/env/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not quiet.filter(_record(logging.INFO, orbax))
  assert not quiet.filter(_record(logging.DEBUG, orbax))
  assert quiet.filter(_record(logging.WARNING, orbax))
  assert quiet.filter(_record(logging.ERROR, orbax))
  assert quiet.filter(_record(logging.INFO, '/work/resflax/training/loop.py'))
  # A name that merely starts like the library is not the library.
  assert quiet.filter(_record(logging.INFO, '/env/orbax_tools/x.py'))


# absl's first log call configures Python logging (basicConfig) when nothing
# has; orbax logs at import. So set-up before the imports gets absl's format,
# and after them (a training entry point) basicConfig's.
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


@pytest.mark.parametrize('setup, prefix', [
    # level, date, time, thread, file:line]
    ('first', r'I\d{4} [\d:.]+ +\d+ metrics\.py:\d+\] '),
    ('after_imports', 'INFO:absl:'),
], ids=['setup_first', 'setup_after_imports'])
def test_progress_line_reaches_a_plain_python_call(setup, prefix):
  stderr = _run(_PROGRESS, setup)
  lines = [l for l in stderr.splitlines() if 'steps/s' in l]
  assert len(lines) == 1, stderr[-3000:]
  assert re.fullmatch(
      prefix + r'step 100/1000 \(10\.0%\) \| 10\.00 steps/s \| 1280 img/s'
      r' \| ETA 1m30s \| train_loss=2\.25 train_error=0\.875'
      r' learning_rate=0\.1', lines[0]), lines[0]


# Code compiled under orbax's and jax's package directories logs INFO and a
# warning through absl (as orbax does) and through Python logging (as jax
# does); then resflax logs one INFO line.
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
    for name in ('orbax', 'jax'):
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


@pytest.mark.parametrize('mode', ['plain', 'app'])
def test_library_info_dropped_and_warnings_kept(mode):
  stderr = _run(_CHATTER, mode)
  assert stderr.count('resflax info line') == 1, stderr
  for name in ('orbax', 'jax'):
    assert f'{name} info' not in stderr
    assert stderr.count(f'{name} warning') == 1, stderr
