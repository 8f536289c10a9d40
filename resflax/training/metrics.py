"""Metric logging to TensorBoard event files and absl logs, without TensorFlow.

`clu.metric_writers` (0.0.12) and `clu.periodic_actions` import TensorFlow when
imported, and accelerator hosts may have neither TF nor clu. The writers here
implement clu's `MetricWriter` interface using only the `tensorboard` package:
protos from `tensorboard.compat.proto` and the TFRecord framing from
`tensorboard.summary.writer.record_writer`. `tensorboard`'s own
`EventFileWriter` is deliberately not used: it opens files through
`tensorboard.compat.tf`, which imports TensorFlow whenever it is installed.

The resulting files are ordinary `events.out.tfevents.*` files that TensorBoard
and `EventAccumulator` read (scalars as `simple_value`, i.e. float32).

Typical use::

  writer = metrics.create_writer(workdir)            # no-op on process != 0
  progress = metrics.ProgressLogger(total_steps, every_secs=60)
  for step in range(start, total_steps):
    state, m = train_step(state, batch)
    if progress.should_report(step + 1):             # host-side check only
      host = jax.device_get(m)                       # the one device sync
      info = progress.report(step + 1, images_per_step=batch_size, extra=host)
      writer.write_scalars(step + 1, {**host, **info})
  writer.close()
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from resflax.config import flatten

_FILE_COUNTER = itertools.count()
_IMAGE_PLUGIN = 'images'
_TEXT_PLUGIN = 'text'


# ---------------------------------------------------------------------------
# Helpers


def _to_float(value: Any) -> float:
  return float(np.asarray(value).astype(np.float64).reshape(()))


def _format_number(value: Any) -> str:
  try:
    x = _to_float(value)
  except (TypeError, ValueError):
    return str(value)
  if x.is_integer() and abs(x) < 1e15:
    return str(int(x))
  return f'{x:.6g}'


def _hparam_value(v: Any) -> bool | int | float | str:
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  if isinstance(v, (float, np.floating)):
    return float(v)
  if isinstance(v, str):
    return v
  # Tuples, None, enums...: TensorBoard's hparams plugin only knows the
  # primitive types above, so keep a readable rendering.
  return str(v)


def encode_png(image: np.ndarray) -> bytes:
  """Encodes an 8-bit [H, W, C] (C in 1, 3, 4) or [H, W] array as PNG.

  A minimal encoder (no Pillow/TF dependency) used for image summaries.

  Args:
    image: uint8 array.

  Returns:
    PNG file contents.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f'expected uint8 [H, W, C], got {image.dtype} {image.shape}')
  height, width, channels = image.shape
  color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  # Filter type 0 ("None") at the start of every scanline.
  raw = np.concatenate(
      [np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1
  ).tobytes()

  def chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack('>I', len(data))
        + tag
        + data
        + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)
    )

  header = struct.pack('>IIBBBBB', width, height, 8, color_type, 0, 0, 0)
  return (
      b'\x89PNG\r\n\x1a\n'
      + chunk(b'IHDR', header)
      + chunk(b'IDAT', zlib.compress(raw, 6))
      + chunk(b'IEND', b'')
  )


def _to_uint8_images(images: Any) -> np.ndarray:
  """Returns images as uint8 [N, H, W, C]; floats are taken to be in [0, 1]."""
  arr = np.asarray(images)
  if arr.ndim == 2:
    arr = arr[None, :, :, None]
  elif arr.ndim == 3:
    arr = arr[None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'images must be [N,] H, W, C with C<=4; got {arr.shape}')
  if arr.dtype != np.uint8:
    arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255)
    arr = arr.astype(np.uint8)
  return arr


def _make_string_tensor(values: Sequence[bytes], *, scalar: bool = False) -> Any:
  from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2  # pylint: disable=g-import-not-at-top,g-multiple-import

  # Same layouts as tf.summary: text is a scalar string (a rank-1 tensor
  # would be rendered as a table), images a vector.
  dims = [] if scalar else [tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
  return tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
      string_val=list(values),
  )


def _maybe_register_with_clu(cls: type) -> None:
  # Registering makes isinstance(w, clu MetricWriter) true for code that
  # expects it; only done if clu's interface is already loaded, because
  # importing it runs clu.metric_writers/__init__, which imports TensorFlow.
  interface = sys.modules.get('clu.metric_writers.interface')
  base = getattr(interface, 'MetricWriter', None)
  if base is not None and not issubclass(cls, base):
    base.register(cls)


# ---------------------------------------------------------------------------
# Writers


class _Writer:
  """Base with clu's MetricWriter method set; every method is a no-op."""

  def write_summaries(
      self,
      step: int,
      values: Mapping[str, Any],
      metadata: Mapping[str, Any] | None = None,
  ) -> None:
    """Writes arbitrary tensors (with optional SummaryMetadata per key)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes scalar values (host numbers, numpy or jax scalars) at `step`."""

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes images ([N,] H, W, C; uint8 or floats in [0, 1]) at `step`."""

  def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
    """Videos are not written; see `LoggingWriter` for what gets logged."""

  def write_audios(
      self, step: int, audios: Mapping[str, Any], *, sample_rate: int
  ) -> None:
    """Audio is not written; see `LoggingWriter` for what gets logged."""

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Writes text snippets (markdown is rendered by TensorBoard)."""

  def write_histograms(
      self,
      step: int,
      arrays: Mapping[str, Any],
      num_buckets: Mapping[str, int] | None = None,
  ) -> None:
    """Writes histograms of the given arrays (default 30 buckets)."""

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes hyper-parameters; nested mappings are flattened with dots."""

  def flush(self) -> None:
    """Pushes buffered data to the OS."""

  def close(self) -> None:
    """Flushes and closes; later calls are undefined (here: ignored)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class NoOpWriter(_Writer):
  """Writer that drops everything (used on processes other than 0)."""


class LoggingWriter(_Writer):
  """Writes scalars, texts and hparams to the absl log (INFO)."""

  def __init__(self, collection: str | None = None):
    """Creates the writer.

    Args:
      collection: Optional name shown in each line, e.g. 'eval'.
    """
    self._prefix = f' {collection}:' if collection else ''

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not scalars:
      return
    values = ', '.join(
        f'{k}={_format_number(v)}' for k, v in sorted(scalars.items())
    )
    logging.info('[%d]%s %s', step, self._prefix, values)

  def write_summaries(self, step, values, metadata=None) -> None:
    logging.info(
        '[%d]%s Got raw tensors: %s.',
        step,
        self._prefix,
        {k: np.shape(v) for k, v in values.items()},
    )

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    logging.info(
        '[%d]%s Got images: %s.',
        step,
        self._prefix,
        {k: np.shape(v) for k, v in images.items()},
    )

  def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
    logging.info(
        '[%d]%s Got videos: %s.',
        step,
        self._prefix,
        {k: np.shape(v) for k, v in videos.items()},
    )

  def write_audios(self, step, audios, *, sample_rate) -> None:
    logging.info(
        '[%d]%s Got audios (sample rate %d): %s.',
        step,
        self._prefix,
        sample_rate,
        {k: np.shape(v) for k, v in audios.items()},
    )

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    logging.info('[%d]%s Got texts: %s.', step, self._prefix, dict(texts))

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    for k, v in sorted(arrays.items()):
      a = np.asarray(v, dtype=np.float64)
      if a.size:
        logging.info(
            '[%d]%s Histogram %s: min=%.6g mean=%.6g max=%.6g n=%d',
            step, self._prefix, k, a.min(), a.mean(), a.max(), a.size,
        )

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters]%s %s', self._prefix, dict(hparams))

  def flush(self) -> None:
    logging.flush()


class SummaryWriter(_Writer):
  """Writes a TensorBoard event file with the `tensorboard` package only.

  Thread-safe. Records are written synchronously (they are small and only
  produced at logging intervals) and pushed to the OS on `flush`/`close`.
  """

  def __init__(self, logdir: str | os.PathLike, *, filename_suffix: str = ''):
    """Creates `logdir` and a new event file in it.

    Args:
      logdir: Directory for the event file (one file per writer).
      filename_suffix: Appended to the file name.
    """
    logdir = os.fspath(logdir)
    self._lock = threading.Lock()
    self._closed = False
    name = 'events.out.tfevents.%010d.%s.%d.%d%s' % (
        int(time.time()),
        socket.gethostname(),
        os.getpid(),
        next(_FILE_COUNTER),
        filename_suffix,
    )
    self.path = os.path.join(logdir, name)
    if '://' in logdir:
      # Remote filesystems need TensorFlow's (or TensorBoard's stub) gfile.
      from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top

      tf.io.gfile.makedirs(logdir)
      self._file = tf.io.gfile.GFile(self.path, 'wb')
    else:
      os.makedirs(logdir, exist_ok=True)
      self._file = open(self.path, 'wb')
    self._records = RecordWriter(self._file)
    self._write_event(
        event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2')
    )
    self.flush()

  def _write_event(self, event: Any) -> None:
    with self._lock:
      if self._closed:
        return
      self._records.write(event.SerializeToString())

  def _write_summary(self, step: int, values: Sequence[Any]) -> None:
    if values:
      self._write_event(
          event_pb2.Event(
              wall_time=time.time(),
              step=int(step),
              summary=summary_pb2.Summary(value=list(values)),
          )
      )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write_summary(
        step,
        [
            summary_pb2.Summary.Value(tag=k, simple_value=_to_float(v))
            for k, v in scalars.items()
        ],
    )

  def write_summaries(self, step, values, metadata=None) -> None:
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

    out = []
    for k, v in values.items():
      meta = (metadata or {}).get(k)
      if isinstance(meta, bytes):
        meta = summary_pb2.SummaryMetadata.FromString(meta)
      value = summary_pb2.Summary.Value(
          tag=k, tensor=tensor_util.make_tensor_proto(np.asarray(v))
      )
      if meta is not None:
        value.metadata.CopyFrom(meta)
      out.append(value)
    self._write_summary(step, out)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    from tensorboard.plugins.image import metadata as image_metadata  # pylint: disable=g-import-not-at-top

    out = []
    for k, v in images.items():
      batch = _to_uint8_images(v)
      # TF2 layout: [width, height, png_0, png_1, ...] as one string tensor.
      encoded = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode()]
      encoded += [encode_png(img) for img in batch]
      value = summary_pb2.Summary.Value(
          tag=k,
          tensor=_make_string_tensor(encoded),
          metadata=image_metadata.create_summary_metadata(
              display_name=k, description=''
          ),
      )
      out.append(value)
    self._write_summary(step, out)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    from tensorboard.plugins.text import metadata as text_metadata  # pylint: disable=g-import-not-at-top

    self._write_summary(
        step,
        [
            summary_pb2.Summary.Value(
                tag=k,
                tensor=_make_string_tensor(
                    [str(v).encode('utf-8')], scalar=True
                ),
                metadata=text_metadata.create_summary_metadata(
                    display_name=k, description=''
                ),
            )
            for k, v in texts.items()
        ],
    )

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    out = []
    for k, v in arrays.items():
      a = np.asarray(v, dtype=np.float64).ravel()
      a = a[np.isfinite(a)]
      if not a.size:
        continue
      bins = (num_buckets or {}).get(k, 30)
      counts, edges = np.histogram(a, bins=bins)
      histo = summary_pb2.HistogramProto(
          min=float(a.min()),
          max=float(a.max()),
          num=float(a.size),
          sum=float(a.sum()),
          sum_squares=float(np.dot(a, a)),
          bucket_limit=[float(e) for e in edges[1:]],
          bucket=[float(c) for c in counts],
      )
      out.append(summary_pb2.Summary.Value(tag=k, histo=histo))
    self._write_summary(step, out)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # pylint: disable=g-import-not-at-top

    flat = {k: _hparam_value(v) for k, v in flatten(hparams).items()}
    summary = hparams_summary.hparams_pb(flat)
    self._write_event(
        event_pb2.Event(wall_time=time.time(), step=0, summary=summary)
    )

  def flush(self) -> None:
    with self._lock:
      if not self._closed:
        self._records.flush()

  def close(self) -> None:
    with self._lock:
      if self._closed:
        return
      self._closed = True
      self._file.flush()
      if hasattr(self._file, 'fileno'):
        try:
          os.fsync(self._file.fileno())
        except (OSError, ValueError):
          pass
      self._records.close()


class MultiWriter(_Writer):
  """Forwards every call to several writers."""

  def __init__(self, writers: Sequence[_Writer]):
    """Creates the writer.

    Args:
      writers: Writers receiving every call, in order.
    """
    self._writers = list(writers)

  def write_summaries(self, step, values, metadata=None) -> None:
    for w in self._writers:
      w.write_summaries(step, values, metadata)

  def write_scalars(self, step, scalars) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images) -> None:
    for w in self._writers:
      w.write_images(step, images)

  def write_videos(self, step, videos) -> None:
    for w in self._writers:
      w.write_videos(step, videos)

  def write_audios(self, step, audios, *, sample_rate) -> None:
    for w in self._writers:
      w.write_audios(step, audios, sample_rate=sample_rate)

  def write_texts(self, step, texts) -> None:
    for w in self._writers:
      w.write_texts(step, texts)

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    for w in self._writers:
      w.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams) -> None:
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


def create_writer(
    logdir: str | os.PathLike | None,
    *,
    just_logging: bool = False,
    collection: str | None = None,
) -> _Writer:
  """Returns the metric writer for this process.

  Process 0 gets a writer that logs scalars (absl INFO) and, unless
  `just_logging`, also writes a TensorBoard event file under `logdir`; other
  processes get a `NoOpWriter` so a multi-host job writes one set of files.

  The object implements clu's `MetricWriter` methods (`write_scalars`,
  `write_images`, `write_texts`, `write_histograms`, `write_summaries`,
  `write_hparams`, `write_videos`/`write_audios` (logged only), `flush`,
  `close`) and is registered as a virtual subclass of
  `clu.metric_writers.interface.MetricWriter` if clu is already imported.

  Args:
    logdir: Directory for event files (e.g. the run's workdir). Ignored when
      `just_logging`.
    just_logging: Only log to absl, write no files.
    collection: Optional name for log lines, e.g. 'train' or 'eval'.

  Returns:
    The writer.
  """
  if jax.process_index() != 0:
    writer: _Writer = NoOpWriter()
  elif just_logging or logdir is None:
    writer = LoggingWriter(collection)
  else:
    writer = MultiWriter([SummaryWriter(logdir), LoggingWriter(collection)])
  _maybe_register_with_clu(type(writer))
  return writer


# ---------------------------------------------------------------------------
# Progress


def format_duration(seconds: float) -> str:
  """Formats seconds compactly: '42s', '5m12s', '2h03m', '1d04h'."""
  if not math.isfinite(seconds):
    return '?'
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  if s < 86400:
    return f'{s // 3600}h{(s % 3600) // 60:02d}m'
  return f'{s // 86400}d{(s % 86400) // 3600:02d}h'


class ProgressLogger:
  """Logs step, steps/s, images/s and ETA at an interval.

  The training loop asks `should_report(step)` every step; that is a host-side
  integer/clock comparison and never touches device values. Only when it
  returns True does the loop fetch its metrics (the single device sync) and
  call `report`. Rates are measured between consecutive reports; with JAX's
  asynchronous dispatch the host may run a few steps ahead of the device, but
  the sync at each report bounds that, so the rates over an interval are
  accurate. The first interval includes compilation.

  `step` everywhere means the number of completed training steps.
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
      total_steps: Step count at which training ends (for ETA and progress).
      every_steps: Report when this many steps passed since the last report.
      every_secs: Report when this many seconds passed since the last report.
      start_step: Step training (re)starts from, e.g. after a restore.
      log_fn: printf-style logging function; default absl `logging.info`.
      clock: Time source in seconds (injectable for tests).
    """
    if every_steps is None and every_secs is None:
      raise ValueError('set every_steps and/or every_secs')
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
    """Returns True if `report` should be called for `step` (cheap, no sync)."""
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
    """Restarts rate measurement, e.g. after an evaluation pause.

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
    """Logs one progress line and returns the computed rates.

    Args:
      step: Completed training steps.
      images_per_step: Global batch size, for images/s; None omits it.
      extra: Host-side numbers to append, e.g. {'loss': 0.53, 'lr': 0.1}.
        Pass values already fetched from the device; formatting a jax array
        here would block on it.

    Returns:
      {'steps_per_sec', 'eta_secs'} plus 'images_per_sec' when
      `images_per_step` is given; handy to pass on to `write_scalars`.
    """
    now = self._clock()
    dt = now - self._rate_time
    dsteps = step - self._rate_step
    steps_per_sec = dsteps / dt if dt > 0 and dsteps > 0 else float('nan')
    remaining = max(self.total_steps - step, 0)
    if remaining == 0:
      eta = 0.0
    elif steps_per_sec > 0:
      eta = remaining / steps_per_sec
    else:
      eta = float('nan')
    info = {'steps_per_sec': steps_per_sec, 'eta_secs': eta}
    parts = [
        f'step {step}/{self.total_steps}'
        f' ({100.0 * step / max(self.total_steps, 1):.1f}%)',
        f'{steps_per_sec:.2f} steps/s',
    ]
    if images_per_step is not None:
      info['images_per_sec'] = steps_per_sec * images_per_step
      parts.append(f'{info["images_per_sec"]:.0f} img/s')
    parts.append(f'ETA {format_duration(eta)}')
    if extra:
      parts.append(
          ' '.join(f'{k}={_format_number(v)}' for k, v in extra.items())
      )
    self._log('%s', ' | '.join(parts))
    self._last_report_step = step
    self._last_report_time = now
    self._rate_step = step
    self._rate_time = now
    return info
