"""Where resflax's log lines go: the command line, notebooks, plain Python.

resflax logs with absl. Every line reads ``HH:MM:SS message``; warnings and
errors add their level (``HH:MM:SS WARNING message``). The verbose format,
absl's own (level, date, time, thread, file:line), is for debugging: pass
``--verbose`` on the command line, set ``RESFLAX_VERBOSE=1`` in the
environment, or call ``setup_logging(verbose=True)``.

Under absl's ``app.run`` (the command line) absl's handler prints; it gets
this format. Elsewhere (a notebook, a plain Python call) absl's first log
call installs Python's ``basicConfig`` handler, which prints ``INFO:absl:``
lines, while the level stays WARNING so progress lines vanish;
``setup_logging`` replaces that handler with one in this format and shows
INFO. Both ways, libraries' INFO chatter (orbax writes dozens of lines per
checkpoint) stays hidden and their warnings show.
"""

import logging
import os
import sys

from absl import logging as absl_logging

# Libraries whose INFO lines bury the progress lines; their warnings and
# errors still show.
QUIET_LIBRARIES = (
    "orbax",
    "jax",
    "jaxlib",
    "flax",
    "etils",
    "matplotlib",
    "clu",
    "tensorboardX",
    "PIL",
)
VERBOSE_ENV = "RESFLAX_VERBOSE"

_handler = None
_verbose: bool | None = None  # None: the environment decides


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
    self._dirs = tuple(f"{os.sep}{name}{os.sep}" for name in libraries)

  def filter(self, record: logging.LogRecord) -> bool:
    """Whether to keep `record`."""
    # Python's level: absl_logging.WARNING is an absl verbosity (-1), below
    # every record's level, so comparing with it keeps everything.
    return record.levelno >= logging.WARNING or not any(
        d in record.pathname for d in self._dirs
    )


_FILTER = QuietLibraries()


class ReraisedInOneLine(logging.Filter):
  """One line, not a traceback, for errors clu's background writer re-raises.

  clu's pool (behind the TensorBoard writer) logs a failed write with its
  traceback and raises the same error again when the writer is used or
  closed, where resflax reports it in one line. With DEBUG logging on, the
  traceback is kept.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    """Whether to keep `record` (always; it may be shortened)."""
    exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
    if (
        exc is not None
        and f"{os.sep}clu{os.sep}asynclib.py" in record.pathname
        and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    ):
      record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
      record.args, record.exc_info, record.exc_text = (), None, None
    return True


_RERAISED = ReraisedInOneLine()


class LineFormatter(logging.Formatter):
  """``HH:MM:SS message``; warnings and errors add their level word."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

  def formatMessage(self, record: logging.LogRecord) -> str:
    if record.levelno >= logging.WARNING:
      return f"{record.asctime} {record.levelname} {record.message}"
    return super().formatMessage(record)


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is when a record arrives.

  Notebooks and test runners replace `sys.stderr`; a handler holding the
  object it was created with would write to a stale or closed stream.
  """

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value  # always sys.stderr


def verbose() -> bool:
  """Whether lines carry absl's prefix (file and line): ``setup_logging``'s
  choice, else ``RESFLAX_VERBOSE`` (1, true, yes)."""
  if _verbose is not None:
    return _verbose
  return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def _formatter() -> logging.Formatter:
  return absl_logging.PythonFormatter() if verbose() else LineFormatter()


def _is_basic_config(handler: logging.Handler) -> bool:
  """Whether `handler` is the one ``logging.basicConfig()`` installs."""
  fmt = getattr(handler.formatter, "_fmt", None)
  # pylint: disable-next=unidiomatic-typecheck
  return type(handler) is logging.StreamHandler and fmt == logging.BASIC_FORMAT


# pylint: disable-next=redefined-outer-name
def setup_logging(verbose: bool | None = None) -> None:
  """Shows resflax's INFO lines once each and hides libraries' INFO chatter.

  Idempotent; training calls it again. Under ``app.run`` it formats absl's
  handler and keeps the verbosity the flags chose. Elsewhere it sets absl's
  verbosity to INFO, removes the ``basicConfig`` handler absl's first log
  call installs (its ``INFO:absl:`` lines would repeat every line) and adds
  its own on the root logger, so other root handlers (a log file, pytest's
  capture) still receive every record.

  Args:
    verbose: True: absl's prefix (level, date, time, thread, file:line) on
      every line; False: ``HH:MM:SS message``; None: keep the earlier
      choice, or ``RESFLAX_VERBOSE`` when there was none.
  """
  global _handler, _verbose
  if verbose is not None:
    _verbose = verbose
  absl_logger = logging.getLogger("absl")
  root = logging.getLogger()
  for f in (_FILTER, _RERAISED):
    if f not in absl_logger.filters:
      absl_logger.addFilter(f)
  absl_handler = absl_logging.get_absl_handler()
  if absl_handler in root.handlers:  # app.run: absl's handler prints
    handler = absl_handler
  else:
    if absl_logger.getEffectiveLevel() > logging.INFO:
      absl_logging.set_verbosity(absl_logging.INFO)
    for h in [h for h in root.handlers if _is_basic_config(h)]:
      root.removeHandler(h)
    if _handler is None:
      # Not absl's handler: before flag parsing it prints a warning that
      # logging goes to stderr, which is the intent here.
      _handler = _StderrHandler()
    if _handler not in root.handlers:
      root.addHandler(_handler)
    handler = _handler
  handler.setFormatter(_formatter())
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)


def _is_closed_loop_noise(unraisable) -> bool:
  return (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"
  )


class _AbandonedOrbaxFutures(logging.Filter):
  """Demotes asyncio's "exception was never retrieved" for Orbax's futures."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
    if exc is None or "never retrieved" not in str(record.msg):
      return True
    tb, frames = exc.__traceback__, []
    while tb is not None:
      frames.append(tb.tb_frame.f_code.co_filename)
      tb = tb.tb_next
    if not any(f"{os.sep}orbax{os.sep}" in f for f in frames):
      return True
    # Kept, traceback and all, for whoever turns on DEBUG.
    absl_logging.debug(
        "ignored after a failed save: %s",
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return False


_ABANDONED = _AbandonedOrbaxFutures()


def quiet_abandoned_saves() -> None:
  """Keeps the tracebacks of a failed save's abandoned work off stderr.

  After a checkpoint save failed, tensorstore completes the writes Orbax
  abandoned: their callbacks find Orbax's event loop closed (printed as
  unraisable "Event loop is closed" tracebacks) and asyncio reports each
  failed future as "exception was never retrieved" with its traceback. The
  save's error already says what went wrong, in one line; these go to the
  DEBUG log. Every other unraisable exception or asyncio error is kept.
  Idempotent.
  """
  asyncio_logger = logging.getLogger("asyncio")
  if _ABANDONED not in asyncio_logger.filters:
    asyncio_logger.addFilter(_ABANDONED)
  previous = sys.unraisablehook
  if getattr(previous, "_resflax_quiet", False):
    return

  def hook(unraisable):
    if _is_closed_loop_noise(unraisable):
      absl_logging.debug(
          "ignored after a failed save: %s",
          unraisable.exc_value,
          exc_info=(
              unraisable.exc_type,
              unraisable.exc_value,
              unraisable.exc_traceback,
          ),
      )
    else:
      previous(unraisable)

  hook._resflax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
