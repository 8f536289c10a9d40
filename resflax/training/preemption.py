"""Stopping on SIGTERM (what Colab, Cloud TPU and SLURM send before a kill).

The handler only sets a flag; the loop finishes its step, saves a
checkpoint and returns. With several processes, every process must stop at
the same step (each takes part in saving it), so the flag is combined
across processes every ``check_every`` steps and all of them see the same
answer at the same step. Inside ``StopSignal.interrupting()`` (data loading:
a download or a decode that may take minutes) the handler raises
``resflax.errors.Stopped`` instead, so a stop does not wait for the load.

Ctrl-C (``StopSignal(sigint=True)``, what training uses) stops a run the
same way: the first SIGINT sets the same flag (the loop saves and returns,
the command exits with 130), a second one raises ``KeyboardInterrupt`` for
a user who will not wait for the save (the last interval checkpoint stays
intact). ``last_signal()`` tells the command line which signal stopped the
run, also when a sweep or lesion study ran it.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from resflax.errors import Stopped

_last: int | None = None


def last_signal() -> int | None:
  """The signal that last stopped a run in this process, or None."""
  return _last


class StopSignal:
  """Turns SIGTERM into a flag the loop polls through ``should_stop``.

  Use as a context manager around everything from data loading to the end of
  the loop; outside the main thread (a notebook's worker) no handler can be
  installed, which is logged once.
  """

  def __init__(self, check_every: int = 20, sigint: bool = False):
    self.received: int | None = None
    self._sigint = sigint
    self._previous = None
    self._previous_int = None
    self._check_every = max(1, int(check_every))
    self._installed = False
    self._interrupt = False

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      if self._sigint:
        self._previous_int = signal.signal(signal.SIGINT, self._handle)
      self._installed = True
    else:
      logging.warning(
          "training runs outside the main thread: SIGTERM is not "
          "caught, so a preemption will not save a checkpoint "
          "first (interval checkpoints still do)"
      )
    return self

  def _handle(self, signum, frame):
    global _last
    del frame
    if signum == signal.SIGINT and self.received == signal.SIGINT:
      raise KeyboardInterrupt  # pressed again: do not wait for the save
    _last = signum
    self.received = signum
    if self._interrupt:
      # Once: the cleanup the exception runs (closing a download's .part,
      # stopping decoder processes) must not be cut short by a second signal.
      self._interrupt = False
      raise Stopped(signum)

  @contextlib.contextmanager
  def interrupting(self) -> Iterator["StopSignal"]:
    """Within it, SIGTERM raises ``resflax.errors.Stopped`` at once.

    For work that cannot poll the flag and may run for minutes, such as
    downloading or decoding a dataset. The exception is raised in the main
    thread wherever it is (a blocking read returns early); ``finally``
    blocks and context managers still run. A signal received before entering
    raises on entry. Outside the main thread, where no handler is installed,
    it changes nothing.

    Yields:
      This StopSignal.

    Raises:
      resflax.errors.Stopped: on SIGTERM; ``received`` holds the signal.
    """
    if self.received is not None:
      raise Stopped(self.received)
    self._interrupt = True
    try:
      yield self
    finally:
      self._interrupt = False

  def should_stop(self, step: int) -> bool:
    """Whether to stop after ``step``; the same answer on every process.

    Every process must call it at every step (it may run a collective).
    """
    if jax.process_count() == 1:
      return self.received is not None
    if step % self._check_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(
        np.int32(self.received is not None)
    )
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      if self._previous_int is not None:
        signal.signal(signal.SIGINT, self._previous_int)
