"""The exceptions resflax raises with a message a user can act on.

Every one of them carries a one-line message naming the key, file, case or
step at fault and what is allowed; the command line prints that line alone
(no traceback). They sit in the lowest layer so every module can raise them
without importing the module that owns the concern.
"""


class UserError(Exception):
  """Base of the errors whose message is meant for the user as it is."""


class ConfigError(UserError, ValueError):
  """A config value is invalid; the message names the key."""


class DataError(UserError, ValueError):
  """A dataset cannot be found, read or used; the message names the file."""


class CheckpointError(UserError, RuntimeError):
  """Checkpoints cannot be written or restored; the message names the path."""


class TrainingError(UserError, RuntimeError):
  """Training stopped for a reason the user must look at (e.g. NaN)."""


class WorkdirError(UserError, RuntimeError):
  """A workdir cannot be used (held by another run, unwritable, a file)."""


class Stopped(BaseException):
  """SIGTERM arrived inside `StopSignal.interrupting()` (a download, say).

  A BaseException, like KeyboardInterrupt, not a UserError: data code wraps
  failures with a broad `except Exception` (a corrupt image, a failing TFDS
  call) into DataError, which would turn a stop into a failed run. Only the
  code that asked for the interruption catches it.

  Attributes:
    signum: The signal's number.
  """

  def __init__(self, signum: int):
    super().__init__(f"received signal {signum}")
    self.signum = signum


def is_user_error(e: BaseException) -> bool:
  """True for errors raised with an actionable message by resflax."""
  return isinstance(e, UserError)
