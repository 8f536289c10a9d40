"""TensorBoard scalars and hparams; a run's start block, progress lines and
parameter summary.

Nothing here needs TensorFlow: event files are written with tensorboardX and
read with TensorBoard's own loader, which uses its TF-free stub when
TensorFlow is not installed.

Typical use::

  writer = metrics.create_writer(workdir)     # a no-op on processes != 0
  writer.write_hparams(config.to_dict())
  progress = metrics.ProgressLogger(total_steps, every_secs=60)
  state, m = train_step(state, batch)
  jax.block_until_ready(m)
  progress.reset_timer(1)                     # rates exclude compilation
  for step in range(2, total_steps + 1):
    state, m = train_step(state, batch)
    if progress.should_report(step):          # host-side check, no sync
      host = jax.device_get(m)                # the one device sync
      rates = progress.report(step, batch_size, host)
      writer.write_scalars(step, {**host, **rates})
  writer.close()
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import asynclib, parameter_overview
from flax import traverse_util

_FILE_COUNTER = itertools.count()


def _tensorboardx():
  """tensorboardX's event writer, summary and proto modules."""
  # tensorboardX.writer imports PyTorch whenever it is installed (only to
  # accept torch tensors): seconds of start-up and a second CUDA runtime in a
  # JAX process, e.g. on Colab, which ships torch. A None entry in sys.modules
  # makes that import fail, and tensorboardX carries on without it.
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None
  try:
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer, record_writer, summary
    from tensorboardX.proto import event_pb2
    # pylint: enable=g-import-not-at-top
  finally:
    if hide_torch and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return event_file_writer, record_writer, summary, event_pb2


def _plain(tree: Mapping[str, Any]) -> dict:
  """Nested mappings (ConfigDicts included) as plain dicts."""
  return {
      k: _plain(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
      for k, v in tree.items()
  }


def _hparam_value(value: Any) -> bool | int | float | str:
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, (bool, int, float, str)):
    return value
  # TensorBoard's hparams only hold these types; tensorboardX silently drops
  # the rest (tuples, None), so keep them as their text.
  return str(value)


class NoOpWriter:
  """The writer of processes other than 0: every method does nothing."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Does nothing (see `SummaryWriter.write_scalars`)."""

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Does nothing (see `SummaryWriter.write_hparams`)."""

  def flush(self) -> None:
    """Does nothing."""

  def close(self) -> None:
    """Does nothing."""


class SummaryWriter:
  """One TensorBoard event file, written by a background thread.

  Values are converted on the caller's thread; the writes, and the syncs of
  `flush` (an upload on remote filesystems), run in order on one worker
  thread so the training loop never waits for the disk. An error there is
  raised by the next call.
  """

  def __init__(self, logdir: str | os.PathLike):
    """Creates `logdir` if needed and a new event file in it.

    Args:
      logdir: The run's directory (local, or gs:// / s3:// as tensorboardX
        supports them).
    """
    file_writer, record_writer, self._summary, self._event_pb2 = _tensorboardx()
    self.logdir = os.fspath(logdir)
    record_writer.directory_check(self.logdir)
    # The pid and a counter keep two writers started in the same second (a
    # quick resume, parallel runs) from sharing a file name.
    self._events = file_writer.EventsWriter(
        os.path.join(self.logdir, "events"),
        filename_suffix=f".{os.getpid()}.{next(_FILE_COUNTER)}",
    )
    self._pool = asynclib.Pool(thread_name_prefix="tensorboard", max_workers=1)
    self._write = self._pool(self._events.write_event)
    self._flush = self._pool(self._events.flush)
    self._closed = False

  def _event(self, step: int, summary: Any) -> None:
    if self._closed:
      raise ValueError(f"the writer of {self.logdir} is closed")
    self._write(
        self._event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary
        )
    )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes scalars at `step`.

    Args:
      step: The x-axis value, e.g. completed training steps.
      scalars: tag -> number (Python, NumPy or a one-element array). Pass
        values already on the host: converting a jax array waits for it.
    """
    values = [
        value
        for tag, x in scalars.items()
        for value in self._summary.scalar(
            tag, np.asarray(x, np.float64).item()
        ).value
    ]
    if values:
      self._event(step, self._summary.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes a run's hyper-parameters for TensorBoard's HPARAMS tab.

    Args:
      hparams: A (nested) mapping such as `config.to_dict()`; nested keys are
        joined with dots, values other than bool/int/float/str become text.
    """
    flat = {
        k: _hparam_value(v)
        for k, v in traverse_util.flatten_dict(_plain(hparams), sep=".").items()
    }
    # Only the session start: without an experiment summary TensorBoard takes
    # the metric columns from the run's scalars (tensorboardX's would declare
    # none), and a session end would mark a running run as finished.
    _, session_start, _ = self._summary.hparams(flat, {})
    self._event(0, session_start)

  def flush(self) -> None:
    """Asks the worker to push what was written so far to the file.

    Returns at once; `close` waits for everything.
    """
    if not self._closed:
      self._flush()

  def close(self) -> None:
    """Waits for all writes, then closes the file; later closes do nothing."""
    if self._closed:
      return
    self._closed = True
    try:
      self._pool.close()
    finally:
      self._events.close()


def create_writer(logdir: str | os.PathLike) -> SummaryWriter | NoOpWriter:
  """The metric writer of this process.

  Args:
    logdir: Directory for the event file, e.g. the run's workdir.

  Returns:
    A `SummaryWriter` on process 0, a `NoOpWriter` elsewhere, so that a
    multi-host job writes one set of files.
  """
  if jax.process_index() != 0:
    return NoOpWriter()
  return SummaryWriter(logdir)


def read_scalars(
    logdir: str | os.PathLike,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The scalars of the TensorBoard event files in `logdir` (not recursive).

  Uses TensorBoard's event loader: through TensorFlow's record reader when
  TensorFlow is installed (and imports it), its pure-Python stub otherwise.

  Args:
    logdir: A run's directory.

  Returns:
    tag -> (steps, values) as int64 and float64 arrays sorted by step. A
    step written twice (a resumed run repeats the steps after its last
    checkpoint) keeps the value of the newer file.
  """
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader, io_wrapper
  from tensorboard.plugins.scalar import metadata as scalar_metadata
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top

  series: dict[str, dict[int, float]] = {}
  # File names start with the creation time, so name order is time order.
  paths = sorted(
      p
      for p in io_wrapper.ListDirectoryAbsolute(os.fspath(logdir))
      if io_wrapper.IsSummaryEventsFile(p)
  )
  for path in paths:
    # The loader turns legacy `simple_value`s into scalar-plugin tensors.
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == scalar_metadata.PLUGIN_NAME:
          x = tensor_util.make_ndarray(value.tensor)
          series.setdefault(value.tag, {})[event.step] = float(x)
  return {
      tag: (
          np.array(sorted(d), np.int64),
          np.array([d[s] for s in sorted(d)], np.float64),
      )
      for tag, d in series.items()
  }


@dataclasses.dataclass
class _ModuleRow:
  module: str
  parameters: int
  share: str


def start_block(
    workdir: str,
    runs: int,
    data: str,
    model: Any,
    params: Mapping[str, Any],
    train: Any,
    lr_drops: Any,
    step: int,
) -> str:
  """The text a run logs when it starts: where, on what, which model, how.

  Args:
    workdir: The run's directory.
    runs: Runs trained in one program (1: a single run).
    data: The data's one-line summary.
    model: The model config (name, depth, block, shortcut, unit).
    params: One run's parameter tree.
    train: The train config (steps, batch, learning rate schedule).
    lr_drops: The steps at which the learning rate drops.
    step: The step training starts (0) or resumes at.

  Returns:
    Lines joined by newlines, each after the first indented by two spaces.
  """
  devices = jax.devices()
  total = int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
  lines = [
      f"resflax run in {workdir}"
      + (f" ({runs} runs in one program)" if runs > 1 else ""),
      f"devices: {len(devices)} x {devices[0].device_kind} "
      f"({jax.process_count()} process(es))",
      f"data: {data}",
      f"model: {model.name} depth {model.depth} ({model.block}, "
      f"{model.shortcut}, {model.unit}), {total:,} parameters",
      f"schedule: {train.steps} steps of {train.batch_size}, lr "
      f"{train.learning_rate} decays x{train.lr_decay} at {lr_drops}"
      + (
          f" (scaled to {train.steps} of {train.schedule_steps} steps)"
          if train.scale_schedule
          else ""
      ),
      "starting" if step == 0 else f"resuming at step {step}",
  ]
  return "\n  ".join(lines)


def model_summary(params: Mapping[str, Any]) -> str:
  """A table of parameter counts per top-level module, and the total.

  Args:
    params: The parameter tree (e.g. `variables['params']`): arrays or
      `jax.ShapeDtypeStruct`s, keyed by module name at the top.

  Returns:
    Lines like ``| stage0 | 23,360 | 8.6% |`` in a table, then
    ``Total: 272,474 parameters``.
  """
  counts = {
      name: int(parameter_overview.count_parameters({name: value}))
      for name, value in params.items()
  }
  total = sum(counts.values())
  rows = [
      _ModuleRow(name, n, f"{100 * n / max(total, 1):.1f}%")
      for name, n in counts.items()
  ]
  return parameter_overview.make_table(rows) + f"\nTotal: {total:,} parameters"


# ---------------------------------------------------------------------------
# Progress


def format_duration(seconds: float) -> str:
  """Formats seconds compactly: '42s', '5m12s', '2h03m', '1d04h', '?'."""
  if not math.isfinite(seconds):
    return "?"
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
  return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _format_number(value: Any) -> str:
  try:
    x = np.asarray(value, np.float64).item()
  except (TypeError, ValueError):
    return str(value)
  if x.is_integer() and abs(x) < 1e15:
    return str(int(x))
  return f"{x:.4g}"


class ProgressLogger:
  """One progress line per report: step, % done, rates, ETA and metrics.

  The loop asks `should_report(step)` every step, a host-side comparison
  that never touches the device; only when it is True does the loop fetch
  its metrics (the one device sync) and call `report`. Rates cover the steps
  since the previous report or since `reset_timer`: call `reset_timer` once
  the first step after a start or resume has finished, so that compilation
  is not counted, and after pauses such as evaluations.

  `step` always means the number of completed training steps.
  """

  def __init__(
      self,
      total_steps: int,
      *,
      every_steps: int | None = None,
      every_secs: float | None = 60.0,
      start_step: int = 0,
      log_fn: Callable[..., None] | None = None,
      clock: Callable[[], float] = time.monotonic,
  ):
    """Creates the logger.

    Args:
      total_steps: Step count at which training ends (for % done and ETA).
      every_steps: Report when this many steps passed since the last report.
      every_secs: Report when this many seconds passed since the last report.
      start_step: Step training (re)starts from, e.g. after a restore.
      log_fn: printf-style logging function; default absl `logging.info`
        (see `resflax.logs.setup_logging` to see it outside `app.run`).
      clock: Time source in seconds (injectable for tests).

    Raises:
      ValueError: If neither interval is set.
    """
    if every_steps is None and every_secs is None:
      raise ValueError("set every_steps and/or every_secs")
    self.total_steps = int(total_steps)
    self.every_steps = every_steps
    self.every_secs = every_secs
    self._log = log_fn or logging.info
    self._clock = clock
    now = clock()
    self._last_report_step = start_step
    self._last_report_time = now
    self._rate_step = start_step
    self._rate_time = now

  def should_report(self, step: int) -> bool:
    """Whether `report` should be called for `step` (cheap, no device sync)."""
    if step <= self._last_report_step:
      return False
    if step >= self.total_steps:
      return True
    if self.every_steps and step - self._last_report_step >= self.every_steps:
      return True
    if self.every_secs is not None:
      return self._clock() - self._last_report_time >= self.every_secs
    return False

  def reset_timer(self, step: int | None = None) -> None:
    """Starts rate measurement now.

    Args:
      step: Completed steps now; defaults to the last reported step.
    """
    self._rate_step = self._last_report_step if step is None else step
    self._rate_time = self._clock()

  def report(
      self,
      step: int,
      images_per_step: int | None = None,
      extra: Mapping[str, Any] | None = None,
  ) -> dict[str, float]:
    """Logs one progress line and returns the rates it shows.

    A line reads ``step 100/1000 (10.0%) | 5.00 steps/s | 640 img/s |
    ETA 3m00s | train_loss=0.5 learning_rate=0.1``; a rate not measured yet
    (no step since `reset_timer`) shows as ``?``.

    Args:
      step: Completed training steps.
      images_per_step: Global batch size, for images/s; None omits it.
      extra: Host-side numbers to append, e.g. loss, error and learning
        rate. Formatting a jax array here would wait for the device.

    Returns:
      'steps_per_sec', 'images_per_sec' (with `images_per_step`) and
      'eta_secs', each only when measured; ready for `write_scalars`.
    """
    now = self._clock()
    dt, dsteps = now - self._rate_time, step - self._rate_step
    remaining = max(self.total_steps - step, 0)
    info = {}
    if dt > 0 and dsteps > 0:
      info["steps_per_sec"] = dsteps / dt
      if images_per_step is not None:
        info["images_per_sec"] = info["steps_per_sec"] * images_per_step
      info["eta_secs"] = remaining / info["steps_per_sec"]
    elif not remaining:
      info["eta_secs"] = 0.0
    rate = info.get("steps_per_sec")
    parts = [
        f"step {step}/{self.total_steps}"
        f" ({100.0 * step / max(self.total_steps, 1):.1f}%)",
        f'{"?" if rate is None else f"{rate:.2f}"} steps/s',
    ]
    if images_per_step is not None:
      images = info.get("images_per_sec")
      parts.append(f'{"?" if images is None else f"{images:.0f}"} img/s')
    parts.append(f'ETA {format_duration(info.get("eta_secs", math.nan))}')
    if extra:
      parts.append(
          " ".join(f"{k}={_format_number(v)}" for k, v in extra.items())
      )
    self._log("%s", " | ".join(parts))
    self._last_report_step = self._rate_step = step
    self._last_report_time = self._rate_time = now
    return info
