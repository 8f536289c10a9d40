"""Decoding image files (paths or bytes) to uint8 RGB arrays on every core.

Large sets are decoded by a pool of worker processes running
:func:`decode_chunk`. Threads would not help: decoding a 32x32 JPEG is
dominated by Pillow's Python-level header parsing, which holds the GIL
(measured: 2 threads are slower than 1). Workers are spawned, not forked:
'fork' is unsafe once JAX has started its threads. A spawned worker imports
this package, which loads numpy and Pillow but not JAX (see
``resflax/data/__init__.py``), and, like any multiprocessing child, re-imports
the program's main module (not for ``python -m package``). So a script that
decodes a folder must keep its top-level code under ``if __name__ ==
'__main__':``, as multiprocessing requires; without it the workers fail to
start and this process decodes everything itself, after a warning.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import multiprocessing
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from resflax.errors import DataError

_log = logging.getLogger(__name__)

# Below this many files, starting worker processes costs more than it saves.
PARALLEL_MIN_FILES = 4096


def decode_image(
    source: Any, name: str, shape: tuple[int, int] | None, reference: str
) -> np.ndarray:
  """Decodes one image to uint8 RGB (H, W, 3), checking its size.

  Args:
    source: A file path, or the file's bytes.
    name: How the image is named in error messages.
    shape: Required (H, W), or None to accept any size.
    reference: The image that set `shape`, named when this one differs.

  Returns:
    The pixels.

  Raises:
    DataError: naming the image, if it cannot be decoded or has the wrong
      size.
  """
  try:
    with Image.open(
        io.BytesIO(source) if isinstance(source, bytes) else source
    ) as image:
      image.load()
      # convert() copies even when the mode already matches; skipping it and
      # numpy's __array_interface__ makes small images ~30% faster.
      if image.mode != "RGB":
        image = image.convert("RGB")
      width, height = image.size
      array = np.frombuffer(image.tobytes(), np.uint8).reshape(height, width, 3)
  except UnidentifiedImageError as e:
    # Pillow's own message names a BytesIO object for archive members.
    raise DataError(
        f"cannot read image {name}: not a recognised image "
        "format, or the file is corrupt"
    ) from e
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise DataError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
  if shape is not None and array.shape[:2] != shape:
    raise DataError(
        f"image {name} is {array.shape[1]}x{array.shape[0]} (WxH) but "
        f"{reference} is {shape[1]}x{shape[0]}; all images of a dataset must "
        "have the same size"
    )
  return array


def image_size(path: Any) -> tuple[int, int]:
  """(width, height) of an image file, from its header alone.

  Raises:
    DataError: naming the file, if it is not a readable image.
  """
  try:
    with Image.open(path) as image:
      return image.size
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def decode_chunk(
    sources: list[Any], names: list[str], shape: tuple[int, int], reference: str
) -> np.ndarray:
  """Decodes `sources`, all of size `shape`, into one (N, H, W, 3) array.

  The function the worker processes run; see `decode_image` for the
  arguments and errors.
  """
  out = np.empty((len(sources), shape[0], shape[1], 3), np.uint8)
  for i, (source, name) in enumerate(zip(sources, names)):
    out[i] = decode_image(source, name, shape, reference)
  return out


def num_decoders(num_files: int) -> int:
  """How many processes (this one included) decode `num_files` images."""
  if num_files < PARALLEL_MIN_FILES:
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  return max(1, min(cores, 16, num_files // 256))


def abandon(pool: concurrent.futures.ProcessPoolExecutor) -> None:
  """Shuts `pool` down at once: queued work is cancelled, workers killed.

  `shutdown(cancel_futures=True)` alone still lets running chunks finish,
  and the interpreter waits for them at exit.
  """
  # Private, but the only handle on the workers before Python 3.14's
  # terminate_workers(); read before shutdown, which forgets them.
  processes = list((getattr(pool, "_processes", None) or {}).values())
  pool.shutdown(wait=False, cancel_futures=True)
  for process in processes:
    if process.is_alive():
      process.terminate()


def decode_all(
    sources: list[Any], names: list[str], shape: tuple[int, int], reference: str
) -> np.ndarray:
  """Decodes images into one (N, H, W, 3) uint8 array using all cores.

  Args:
    sources: Paths or bytes of the images.
    names: How each image is named in error messages.
    shape: The (H, W) every image must have.
    reference: The image that set `shape`.

  Returns:
    The pixels, in the order of `sources`.

  Raises:
    DataError: naming the first bad image of the first chunk that has one.
  """
  workers = num_decoders(len(sources))
  bounds = [len(sources) * i // workers for i in range(workers + 1)]
  chunks = list(zip(bounds[:-1], bounds[1:]))
  out = np.empty((len(sources), shape[0], shape[1], 3), np.uint8)

  def decode_here(start: int, stop: int) -> None:
    out[start:stop] = decode_chunk(
        sources[start:stop], names[start:stop], shape, reference
    )

  if workers == 1:
    decode_here(*chunks[0])
    return out
  done = set()
  try:
    with concurrent.futures.ProcessPoolExecutor(
        workers - 1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
      try:
        futures = [
            (
                pool.submit(
                    decode_chunk, sources[a:b], names[a:b], shape, reference
                ),
                a,
                b,
            )
            for a, b in chunks[1:]
        ]
        # This process decodes the first chunk meanwhile, so every core works.
        decode_here(*chunks[0])
        done.add(chunks[0])
        for future, a, b in futures:
          out[a:b] = future.result()
          done.add((a, b))
      except BaseException:
        # A stop (resflax.errors.Stopped on SIGTERM) or a bad image: leaving
        # the block would wait for every worker's chunk, a minute or more.
        abandon(pool)
        raise
  except (concurrent.futures.BrokenExecutor, OSError) as e:
    # The pool is an optimisation: a sandbox without process semaphores or a
    # worker killed for memory must not stop the load.
    _log.warning(
        "image decoder processes failed (%s: %s); decoding here",
        type(e).__name__,
        e,
    )
    for a, b in chunks:
      if (a, b) not in done:
        decode_here(a, b)
  return out
