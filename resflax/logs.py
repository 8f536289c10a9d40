"""Where resflax's log lines go: the command line, notebooks, plain Python.

resflax logs with absl. Under absl's ``app.run`` (the command line) absl's
handler prints INFO and above to stderr, and so do the libraries beneath
(orbax writes dozens of INFO lines per checkpoint). Elsewhere (a notebook, a
plain Python call) the level stays Python's default, WARNING, so progress
lines vanish. ``setup_logging`` fixes both.
"""

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

# Libraries whose INFO lines bury the progress lines; their warnings and
# errors still show.
QUIET_LIBRARIES = ('orbax', 'jax', 'flax', 'etils')

_handler = None


class QuietLibraries(logging.Filter):
  """Drops records below WARNING logged from within the given libraries.

  Matches the source file's path, not the logger's name: orbax logs through
  absl, so its records carry the logger name 'absl'.
  """

  def __init__(self, libraries=QUIET_LIBRARIES):
    """Creates the filter.

    Args:
      libraries: Top-level package names, e.g. ('orbax',).
    """
    super().__init__()
    self._dirs = tuple(f'{os.sep}{name}{os.sep}' for name in libraries)

  def filter(self, record: logging.LogRecord) -> bool:
    """Whether to keep `record`."""
    # Python's level: absl_logging.WARNING is an absl verbosity (-1), below
    # every record's level, so comparing with it keeps everything.
    return (record.levelno >= logging.WARNING
            or not any(d in record.pathname for d in self._dirs))


_FILTER = QuietLibraries()


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is when a record arrives.

  Notebooks and test runners replace `sys.stderr`; a handler holding the
  object it was created with would write to a stale or closed stream.
  """

  def __init__(self):
    super().__init__()
    self.setFormatter(absl_logging.PythonFormatter())

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value  # always sys.stderr


def setup_logging() -> None:
  """Shows resflax's INFO lines once each and hides libraries' INFO chatter.

  Idempotent. Under ``app.run`` it adds the filter and keeps the verbosity
  the flags chose. Elsewhere it sets absl's verbosity to INFO and keeps any
  handler already on the root logger: absl's first log call installs
  Python's basic one (``INFO:absl:...`` lines), as do users. With none yet
  it adds one in absl's format.
  """
  global _handler
  absl_logger = logging.getLogger('absl')
  root = logging.getLogger()
  if _FILTER not in absl_logger.filters:
    absl_logger.addFilter(_FILTER)
  if (not flags.FLAGS.is_parsed()
      and absl_logger.getEffectiveLevel() > logging.INFO):
    absl_logging.set_verbosity(absl_logging.INFO)
  handlers = [absl_logging.get_absl_handler()]
  if not root.handlers and _handler is None:
    # Not absl's handler: before flag parsing it prints a warning that
    # logging goes to stderr, which is the intent here.
    _handler = _StderrHandler()
    root.addHandler(_handler)
  if _handler is not None:
    handlers.append(_handler)
  for handler in handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
