"""Deprecated: ``resflax.train.train_and_evaluate`` is now
``resflax.train_and_evaluate`` (owned by ``resflax.training``).

The old name keeps working for one release, with a DeprecationWarning.
"""

import warnings


def __getattr__(name: str):
  if name == "train_and_evaluate":
    warnings.warn(
        "resflax.train.train_and_evaluate is deprecated and will be removed "
        "in the next release; use resflax.train_and_evaluate",
        DeprecationWarning,
        stacklevel=2,
    )
    from resflax.training import train_and_evaluate

    return train_and_evaluate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
