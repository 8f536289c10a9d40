"""``resflax.train.train_and_evaluate``: the name scripts and notebooks use.

The training engine lives in ``resflax.training``; this module keeps the
entry point under its first name.
"""

from resflax.training import train_and_evaluate  # noqa: F401
