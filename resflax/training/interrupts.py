"""Ctrl-C stops a run the way SIGTERM does: finish the step, save, exit.

``Interrupts`` is a ``preemption.StopSignal`` that also catches SIGINT: the
first Ctrl-C sets the same flag (the loop saves and returns, the command
exits with 130), a second one raises ``KeyboardInterrupt`` for a user who
will not wait for the save (the last interval checkpoint stays intact).
``last_signal()`` tells the command line which signal stopped the run, also
when a sweep or lesion study ran it.
"""

import signal

from resflax.training.preemption import StopSignal

_last: int | None = None


def last_signal() -> int | None:
  """The signal that last stopped a run in this process, or None."""
  return _last


class Interrupts(StopSignal):
  """``StopSignal`` for SIGTERM and SIGINT alike (see module docs)."""

  def __enter__(self) -> "Interrupts":
    super().__enter__()
    self._previous_int = None
    if self._installed:
      self._previous_int = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    global _last
    if signum == signal.SIGINT and self.received == signal.SIGINT:
      raise KeyboardInterrupt  # pressed again: do not wait for the save
    _last = signum
    super()._handle(signum, frame)

  def __exit__(self, *exc):
    if self._previous_int is not None:
      signal.signal(signal.SIGINT, self._previous_int)
    super().__exit__(*exc)
