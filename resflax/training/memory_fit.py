"""A training step that would not fit the device is refused before it runs.

On a device that reports its memory (``memory_stats()['bytes_limit']``: GPUs
and TPUs), the training step is lowered and compiled ahead of time at its
first call, XLA's memory analysis of the compiled program is compared with
the device's memory, and a step that needs more fails with one line naming
the setting that makes it fit (``resflax.config.memory_fit_hint``) instead
of an out-of-memory error from its first execution. The compiled program is
the one the steps then run: the step compiles once. On a CPU, whose devices
report no limit, the step is the jitted function as it was.
"""

from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from resflax.config import memory_fit_hint
from resflax.errors import ConfigError
from resflax.training import compile_cache


def device_bytes_limit() -> int | None:
  """The smallest memory of this process's devices, or None if unknown."""
  limits = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      # Some backends raise instead of returning None: treat as unknown.
      return None
    if not stats or not stats.get("bytes_limit"):
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def peak_bytes(compiled) -> int | None:
  """Arguments + outputs - donated + temporaries per device, or None.

  XLA's own buffer-assignment bound of ``compiled``, as
  ``benchmarks/abstract_step.memory`` reports it.
  """
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  get = lambda k: int(getattr(analysis, f"{k}_size_in_bytes", 0) or 0)
  return get("argument") + get("output") - get("alias") + get("temp")


def check_fit(config, compiled, limit: int) -> None:
  """Raises ConfigError naming the fix when ``compiled`` needs > ``limit``."""
  peak = peak_bytes(compiled)
  hint = None if peak is None else memory_fit_hint(config, peak, limit)
  if hint:
    raise ConfigError(hint)


class _CheckedStep:
  """``step``, compiled at its first call and checked against ``limit``."""

  def __init__(self, step, config, limit: int):
    self.step, self.config, self.limit = step, config, limit
    self.compiled = None
    self.fell_back = False

  def __call__(self, *args):
    if self.compiled is None:
      jitted = self.step
      if not hasattr(jitted, "lower"):
        # Stacked runs: a closure over the jitted vmapped step. Jitting it
        # again inlines that one; donation and options as training sets.
        jitted = jax.jit(
            self.step,
            donate_argnums=0,
            compiler_options=compile_cache.compiler_options(self.config.train),
        )
      self.compiled = jitted.lower(*args).compile()
      check_fit(self.config, self.compiled, self.limit)
    if self.fell_back:
      return self.step(*args)
    try:
      return self.compiled(*args)
    except (TypeError, ValueError) as e:
      # Arguments the program was not compiled for (a sharding or a shape
      # that changed after the first step; checked before anything runs,
      # so no donated buffer is lost): jit compiles what they need.
      logging.warning("training step recompiled for its arguments: %s", e)
      self.fell_back = True
      return self.step(*args)


def checked_step(step: Callable[..., Any], config) -> Callable[..., Any]:
  """``step``, refused at its first call when it would not fit the device.

  Args:
    step: the jitted training step, ``step(state, *data) -> state``.
    config: the run's config, for the message's settings.

  Returns:
    ``step`` itself where the devices report no memory limit (CPU); else a
    callable that compiles ``step`` once at its first call, raises
    ``ConfigError`` (one line: the estimate, the device's memory and the
    setting that makes it fit) when XLA's memory analysis exceeds the
    device's memory, and otherwise runs the compiled program.
  """
  limit = device_bytes_limit()
  if limit is None:
    return step
  return _CheckedStep(step, config, limit)
