"""Which exceptions carry a message meant for the user (no traceback)."""


def is_user_error(e: BaseException) -> bool:
  """True for errors raised with an actionable message by resflax."""
  from resflax import checkpoint, data, train  # pylint: disable=g-import-not-at-top
  return isinstance(e, (train.ConfigError, train.TrainingError,
                        data.DataError, checkpoint.CheckpointError))
