"""What a checkpoint error means: proven corruption, or anything else.

Restoring may set a checkpoint aside only when its data is provably damaged
(``is_corruption``); every other error stops the run. Errors are shown as
one line (``describe``), and Orbax's background-thread tracebacks stay off
the terminal (``orbax_traceback_filter``). No Orbax import: the module reads
exceptions and log records only.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import re

from resflax.errors import CheckpointError

# Tensorstore reports failures as ValueError('<STATUS>: ...'), without the
# status for some decoding failures. What it says for damaged files, as
# observed (tests/test_checkpoint.py reproduces each): a failed CRC or
# b-tree/manifest decoding, a file shorter than its index says, a compressed
# node or chunk that does not decompress.
_TS_STATUS = re.compile(r"([A-Z][A-Z_]{3,}): ")
_TS_CORRUPTION_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION")
_TS_CORRUPTION = re.compile(
    r"^DATA_LOSS: |^OUT_OF_RANGE: .*is not valid for value of size"
    r"|ZSTD_decompressStream\(\) failed: (?:Data corruption detected"
    r"|Unknown frame descriptor|Destination buffer is too small)"
    r"|Truncated Zstd-compressed stream",
    re.DOTALL,
)
_MAX_ERROR_CHARS = 600
_ORBAX_SOURCE = f"{os.sep}orbax{os.sep}"
# Orbax functions that log an exception with its traceback and then hand it
# on (raise it, or keep it for `check_for_errors`), so that it reaches our
# caller as one CheckpointError line anyway.
_ORBAX_RERAISING = frozenset(
    {
        ("future.py", "run"),
        ("async_checkpointer.py", "_thread_func"),
        ("checkpoint_manager.py", "wait_until_finished"),
        ("checkpoint.py", "_write_and_log"),
        ("checkpoint.py", "_update_and_log"),
    }
)


class Corrupt(CheckpointError):
  """A step's files provably differ from what was saved."""


def _error_chain(error: BaseException | None):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or (
        None if error.__suppress_context__ else error.__context__
    )


def describe(error: BaseException) -> str:
  """Returns '<Type>: <message>' on one line, for messages and logs."""
  # Orbax wraps tensorstore read errors in a bare Exception whose text is a
  # multi-line dump of the TensorStore spec; the cause says what went wrong.
  while type(error) is Exception and error.__cause__ is not None:
    error = error.__cause__
  if isinstance(error, CheckpointError):
    return str(error)
  text = " ".join(str(error).split(" [tensorstore_spec", 1)[0].split())
  if len(text) > _MAX_ERROR_CHARS:
    text = text[: _MAX_ERROR_CHARS - 3] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_corruption(error: BaseException) -> bool:
  """True only if `error` (from restoring a step) proves its data damaged.

  That is `Corrupt`, metadata that is not valid JSON/UTF-8, or a tensorstore
  error matching `_TS_CORRUPTION`, unless the chain also holds an OSError, a
  MemoryError or another tensorstore status (PERMISSION_DENIED, ...). Anything
  not known to mean damage is not proof.
  """
  chain = list(_error_chain(error))
  if any(isinstance(e, Corrupt) for e in chain):
    return True
  evidence = False
  for e in chain:
    if isinstance(e, (OSError, MemoryError)):
      return False
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
      evidence = True
    elif isinstance(e, ValueError):
      status = _TS_STATUS.match(str(e))
      if status and status.group(1) not in _TS_CORRUPTION_STATUSES:
        return False
      evidence = evidence or bool(_TS_CORRUPTION.search(str(e)))
  return evidence


def orbax_traceback_filter(record: py_logging.LogRecord) -> bool:
  """Logging filter (absl logger) keeping Orbax's tracebacks off the terminal.

  A failed background save makes Orbax log the same exception with its
  traceback from up to four threads. Those records (`_ORBAX_RERAISING`) go to
  DEBUG; other Orbax records keep their level but carry only a one-line
  summary of the exception. With DEBUG logging on, tracebacks are kept.
  """
  exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
  if (
      exc is None
      or record.levelno < py_logging.WARNING
      or _ORBAX_SOURCE not in record.pathname
  ):
    return True
  debug = py_logging.getLogger(record.name).isEnabledFor(py_logging.DEBUG)
  if (os.path.basename(record.pathname), record.funcName) in _ORBAX_RERAISING:
    record.levelno, record.levelname = py_logging.DEBUG, "DEBUG"
    return debug
  if not debug:
    record.msg, record.args = f"{record.getMessage()} ({describe(exc)})", ()
    record.exc_info = record.exc_text = None
  return True
