"""Datasets: loading on the host, sampling and augmentation on the device.

This module is the only place in resflax that knows where images come from.
It has two halves:

* Host side. :func:`load_dataset` turns ``config.data`` into a :class:`Dataset`
  of uint8 numpy arrays that fits in host memory (CIFAR-10/100, a synthetic
  set for smoke tests, or an image-folder tree / ``.tar.gz`` of one).
  :func:`imagenet_iterator` streams ImageNet, which does not fit in memory.
* Device side. :func:`normalize`, :func:`augment` and
  :func:`sample_batch_indices` are pure, jittable JAX functions meant to run
  inside the compiled training step, so the whole (small) dataset can live on
  the accelerator and no host round trip happens per step.
  :func:`eval_batches` lays out the evaluation split as fixed-shape batches.

Image-folder layout: ``<root>/<split>/<class>/<image>`` with splits ``train``
and ``test``; sorted class folder names give the label order. A tar archive
of such a tree is read as a stream, without unpacking it (see
`_gather_archive` for why). Decoded arrays are cached as an uncompressed
``.npz`` under ``$RESFLAX_CACHE`` (default ``~/.cache/resflax``) so only the
first load pays for decoding; TensorFlow is never imported for folders.

Pixel statistics (:attr:`Dataset.mean`, :attr:`Dataset.std`) are fractions of
255, so ``normalize`` maps uint8 pixels to ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from resflax.errors import DataError

__all__ = [
    'CIFAR10_CLASSES',
    'DataError',
    'Dataset',
    'EvalLayout',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'NORMALIZATIONS',
    'SOURCES',
    'augment',
    'eval_batches',
    'imagenet_iterator',
    'load_dataset',
    'normalize',
    'sample_batch_indices',
    'shard_for_process',
    'unpack_archive',
]

_log = logging.getLogger(__name__)

SOURCES = ('cifar10', 'cifar100', 'synthetic', 'folder', 'imagenet2012')
NORMALIZATIONS = ('pixel_mean', 'channel_standardize')

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')

# Standard ImageNet statistics (fractions of 255), for use with `normalize` on
# batches from `imagenet_iterator`: computing them would mean a pass over
# 1.28M images, and every published ImageNet ResNet uses these values.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

_IMAGE_EXTENSIONS = frozenset(
    {'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.tif', '.tiff', '.webp'})
_ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz', '.txz',
                     '.tar')
_SPLITS = ('train', 'test')

# Bump when the cached array layout changes, so stale caches are ignored.
_CACHE_VERSION = 1

# Below this many files, starting decoder subprocesses costs more than it saves.
_PARALLEL_MIN_FILES = 4096

# Decoder run in helper subprocesses. Threads do not help: decoding a 32x32
# JPEG is dominated by Pillow's Python-level header parsing, which holds the
# GIL (measured: 2 threads are slower than 1). `multiprocessing` is avoided
# because its 'spawn'/'forkserver' children re-import the caller's __main__
# and this module (and with it JAX, ~1 s), and 'fork' is unsafe once JAX has
# started its threads. A `python -c` child imports only Pillow (~0.1 s).
# It reports any problem only through its exit status; the parent then
# decodes that chunk itself to raise a DataError that names the file.
_WORKER_SOURCE = r'''
import io, json, sys
from PIL import Image
stdin, out = sys.stdin.buffer, sys.stdout.buffer
job = json.loads(stdin.readline())
height, width = job['shape']
if 'paths' in job:
    sources = job['paths']
else:
    sources = (io.BytesIO(stdin.read(size)) for size in job['sizes'])
for source in sources:
    with Image.open(source) as image:
        image.load()
        if image.mode != 'RGB':
            image = image.convert('RGB')
        if image.size != (width, height):
            sys.exit(3)
        out.write(image.tobytes())
out.flush()
'''



@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory image classification dataset.

  `eq=False` because numpy arrays have no single truth value, so a generated
  `__eq__` would raise.

  Attributes:
    train_images: uint8 array (N, H, W, 3) of training images.
    train_labels: int32 array (N,).
    eval_images: uint8 array of the evaluation split: the test split, or the
      held-out validation images when `validation_split > 0`.
    eval_labels: int32 labels of `eval_images`.
    test_images: uint8 array of the real test split (always).
    test_labels: int32 labels of `test_images`.
    num_classes: Number of classes; labels are in [0, num_classes).
    class_names: Class names in label order, or None when there are none.
    name: Dataset label, e.g. 'cifar10', 'synthetic' or the folder name.
    mean: float32 mean pixel value, as a fraction of 255, broadcastable to
      (H, W, 3): shape (H, W, 3) for 'pixel_mean', (3,) for
      'channel_standardize'. Computed on `train_images` only.
    std: float32 (3,) standard deviation as a fraction of 255 (ones for
      'pixel_mean').
    eval_split: 'test' or 'validation': what `eval_images` is.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: np.ndarray
  eval_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] | None
  name: str
  mean: np.ndarray
  std: np.ndarray
  eval_split: str = 'test'

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_train(self) -> int:
    return len(self.train_labels)

  @property
  def num_eval(self) -> int:
    return len(self.eval_labels)

  @property
  def num_test(self) -> int:
    return len(self.test_labels)


class _Raw(NamedTuple):
  """Full train/test arrays of a source, before splitting and subsetting."""
  name: str
  num_classes: int
  class_names: tuple[str, ...] | None
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


# ----------------------------------------------------------------------------
# Config access.
# ----------------------------------------------------------------------------


def _get(config: Any, key: str, default: Any) -> Any:
  """Reads `key` from a ConfigDict, a mapping or any attribute object."""
  if isinstance(config, collections.abc.Mapping):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  return default if value is None else value


def _get_int(config: Any, key: str, default: int, minimum: int = 0) -> int:
  value = _get(config, key, default)
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise DataError(
        f'config.data.{key} must be an integer, got {value!r}') from None
  if number != value or number < minimum:
    raise DataError(
        f'config.data.{key} must be an integer >= {minimum}, got {value!r}')
  return number


# ----------------------------------------------------------------------------
# Public host-side API.
# ----------------------------------------------------------------------------


def load_dataset(config_data: Any, *, seed: int = 0) -> Dataset:
  """Loads the dataset described by `config_data` into host memory.

  Config keys (missing keys take the defaults shown):
    name: one of SOURCES ('cifar10'). With a non-empty `path` it is only a
      label ('folder', 'cifar10', ...).
    path: image-folder root or a `.tar.gz` of one (''). Used when non-empty.
    tfds_data_dir: TFDS data directory for 'cifar10'/'cifar100' ('' = TFDS's
      default).
    tfds_download: let TFDS try to download a missing dataset (True).
    cache_dir: where decoded image-folder arrays are cached ('' =
      `$RESFLAX_CACHE` or `~/.cache/resflax`).
    validation_split: hold out this many training images as the evaluation
      set (0 = evaluate on the test split). They are the last K images of a
      fixed seed-0 permutation, so they do not depend on `seed`.
    normalization: 'pixel_mean' (He et al. 2016: subtract the per-pixel
      mean, std 1) or 'channel_standardize' (per-channel mean and std).
    image_size: expected image height/width (32); 0 skips the check.
    num_classes, synthetic_train_size, synthetic_test_size: synthetic data.
    max_train_images, max_test_images: keep a class-balanced, fixed-seed
      subset (0 = all); the test limit applies to eval and test arrays.

  Args:
    config_data: `config.data` (ConfigDict, mapping or attribute object).
    seed: Seed of the synthetic data. Splits and subsets use fixed seeds so
      that runs with different seeds see the same images.

  Returns:
    The Dataset, with `mean`/`std` computed on the final training images.

  Raises:
    DataError: for anything the user can fix; the message names the file,
      folder or config key. Raised before any cache entry is written.
  """
  name = str(_get(config_data, 'name', 'cifar10')).strip()
  path = str(_get(config_data, 'path', '')).strip()
  normalization = str(_get(config_data, 'normalization', 'pixel_mean'))
  if normalization not in NORMALIZATIONS:
    raise DataError(f'config.data.normalization must be one of '
                    f'{NORMALIZATIONS}, got {normalization!r}')
  validation_split = _get_int(config_data, 'validation_split', 0)
  max_train = _get_int(config_data, 'max_train_images', 0)
  max_test = _get_int(config_data, 'max_test_images', 0)

  if name == 'imagenet2012':
    raise DataError(
        'config.data.name = imagenet2012 does not fit in host memory, so '
        'load_dataset cannot load it; stream it with '
        'resflax.data.imagenet_iterator(config.data, split, batch_size, '
        'seed=..., process_index=..., process_count=...) instead.')
  if path:
    if name == 'synthetic':
      raise DataError(
          'config.data.name is synthetic but config.data.path is set to '
          f'{path!r}; clear config.data.path or set config.data.name to '
          "'folder' (or a label such as 'cifar10').")
    raw = _load_path(path, config_data, name, validation_split)
  elif name == 'synthetic':
    raw = _make_synthetic(config_data, seed)
  elif name in ('cifar10', 'cifar100'):
    raw = _load_tfds(config_data, name)
  elif name == 'folder':
    raise DataError(
        'config.data.name is folder but config.data.path is empty; set '
        'config.data.path to an image-folder root (<root>/{train,test}/'
        '<class>/<image>) or a .tar.gz of one.')
  else:
    raise DataError(f'config.data.name must be one of {SOURCES} (or set '
                    f'config.data.path), got {name!r}')
  return _finish(raw, normalization=normalization,
                 validation_split=validation_split, max_train=max_train,
                 max_test=max_test)


def shard_for_process(images: np.ndarray, labels: np.ndarray,
                      process_index: int,
                      process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns this host's contiguous shard of `images` and `labels`.

  On a multi-host run each host keeps only its shard, so host memory and
  host-to-device traffic do not grow with the number of hosts. Shard sizes
  differ by at most one; no example is dropped or duplicated. The returned
  arrays are views.

  Args:
    images: Array whose first axis indexes examples.
    labels: Array with the same first-axis length.
    process_index: This host's index, `jax.process_index()`.
    process_count: Number of hosts, `jax.process_count()`.

  Returns:
    (images_shard, labels_shard).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index ({process_index}) < '
                     f'process_count ({process_count})')
  if len(images) != len(labels):
    raise ValueError(f'{len(images)} images but {len(labels)} labels')
  n = len(images)
  start = n * process_index // process_count
  stop = n * (process_index + 1) // process_count
  return images[start:stop], labels[start:stop]


class EvalLayout(NamedTuple):
  """Fixed-shape batches covering an evaluation split exactly once.

  Attributes:
    indices: int32 (num_batches, batch_size) example indices. Padding slots
      of the last batch point at example 0 so gathers stay in bounds.
    mask: float32 (num_batches, batch_size): 1 for real examples, 0 for
      padding. Weight per-example metrics with it.
  """
  indices: np.ndarray
  mask: np.ndarray

  @property
  def num_batches(self) -> int:
    return self.indices.shape[0]


def eval_batches(num_examples: int, batch_size: int) -> EvalLayout:
  """Lays out `num_examples` as equally shaped batches plus a padding mask.

  Every batch has `batch_size` slots, so the eval step compiles once; the
  last batch is padded and masked, so each example is counted exactly once.

  Args:
    num_examples: Size of the evaluation split (> 0).
    batch_size: Global eval batch size (> 0).

  Returns:
    An EvalLayout; `sum(mask) == num_examples`.
  """
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(f'need num_examples ({num_examples}) > 0 and '
                     f'batch_size ({batch_size}) > 0')
  num_batches = -(-num_examples // batch_size)
  slots = np.arange(num_batches * batch_size, dtype=np.int64)
  valid = slots < num_examples
  indices = np.where(valid, slots, 0).astype(np.int32)
  mask = valid.astype(np.float32)
  return EvalLayout(indices.reshape(num_batches, batch_size),
                    mask.reshape(num_batches, batch_size))


# ----------------------------------------------------------------------------
# Public device-side API (pure JAX, jittable).
# ----------------------------------------------------------------------------


def normalize(images: jax.Array, mean: Any, std: Any,
              dtype: Any = jnp.float32) -> jax.Array:
  """Maps uint8 pixels to `(x / 255 - mean) / std` in `dtype`.

  Args:
    images: uint8 (or any numeric) images (..., H, W, C) in [0, 255].
    mean: Mean as a fraction of 255, broadcastable to (H, W, C).
    std: Standard deviation as a fraction of 255, broadcastable to (H, W, C).
    dtype: Output dtype, e.g. jnp.bfloat16 for mixed precision.

  Returns:
    Normalized images of `dtype`.
  """
  # Arithmetic in float32 even for a bfloat16 output: bfloat16 has 8 bits of
  # mantissa, too few to subtract a mean of ~120 from pixel values exactly.
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  scale = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
  return ((images.astype(jnp.float32) - mean) * scale).astype(dtype)


def augment(key: jax.Array, images: jax.Array, *, pad: int = 4,
            flip: bool = True) -> jax.Array:
  """The CIFAR augmentation of He et al. 2016: pad, random crop, random flip.

  Each image is zero-padded by `pad` pixels on each side, cropped back to its
  size at an independent uniform offset, and mirrored horizontally with
  probability 1/2. Zeros are padded in whatever space `images` is in: black
  pixels for uint8 input; the mean pixel for normalized input (as in
  fb.resnet.torch, which crops after normalizing).

  Args:
    key: PRNG key.
    images: Batch (N, H, W, C), any dtype.
    pad: Padding on each side, in pixels.
    flip: Whether to apply the random horizontal flip.

  Returns:
    Augmented batch with the shape and dtype of `images`.
  """
  n, height, width, channels = images.shape
  crop_key, flip_key = jax.random.split(key)
  # Pad the whole batch once; each crop is then a plain window of it.
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  out = jax.vmap(crop)(padded, offsets)
  if flip:
    # A select between the batch and its mirror is cheaper on accelerators
    # than a per-image conditional, and keeps shapes static.
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def sample_batch_indices(key: jax.Array, step: Any, num_examples: int,
                         batch_size: int) -> jax.Array:
  """Indices of the global training batch for `step`.

  Epoch `e = step // steps_per_epoch` with `steps_per_epoch = num_examples //
  batch_size` visits a fresh permutation drawn from `fold_in(key, e)`; the
  `num_examples % batch_size` examples at its end are skipped that epoch.
  Being a pure function of (key, step), resuming from a checkpoint at step s
  reproduces the batches of an uninterrupted run without saving any data
  iterator state.

  The permutation is recomputed every call (O(N log N) on the device, tiny
  next to a ResNet step for CIFAR-sized N) rather than carried in the train
  state, so nothing but the step counter needs checkpointing.

  Args:
    key: PRNG key, the same for the whole run.
    step: Training step, a Python int or a traced integer scalar.
    num_examples: Training set size (static).
    batch_size: Global batch size (static), at most `num_examples`.

  Returns:
    int32 array (batch_size,) of indices into the training set.
  """
  if batch_size <= 0 or num_examples < batch_size:
    raise ValueError(f'need 0 < batch_size ({batch_size}) <= num_examples '
                     f'({num_examples})')
  steps_per_epoch = num_examples // batch_size
  step = jnp.asarray(step)
  epoch = step // steps_per_epoch
  start = (step % steps_per_epoch) * batch_size
  permutation = jax.random.permutation(jax.random.fold_in(key, epoch),
                                       num_examples)
  return jax.lax.dynamic_slice(permutation, (start,), (batch_size,))


# ----------------------------------------------------------------------------
# Splitting, subsetting and statistics.
# ----------------------------------------------------------------------------


def _check_validation_split(num_train: int, validation_split: int) -> None:
  if validation_split >= num_train:
    raise DataError(
        f'config.data.validation_split = {validation_split} leaves no '
        f'training images: the training split has only {num_train}')


def _balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices of `size` examples with classes as equal as possible."""
  if size <= 0 or size >= len(labels):
    return np.arange(len(labels))
  order = np.random.default_rng(seed).permutation(len(labels))
  shuffled = labels[order]
  # Rank of each example within its class in the shuffled order: taking the
  # `size` smallest ranks deals examples out round-robin across classes.
  by_class = np.argsort(shuffled, kind='stable')
  sorted_labels = shuffled[by_class]
  first_of_class = np.searchsorted(sorted_labels, sorted_labels, side='left')
  rank = np.empty(len(labels), np.int64)
  rank[by_class] = np.arange(len(labels)) - first_of_class
  chosen = order[np.lexsort((shuffled, rank))[:size]]
  return np.sort(chosen)


def _statistics(images: np.ndarray,
                normalization: str) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std (fractions of 255) of `images` for `normalization`."""
  if normalization == 'pixel_mean':
    # float64 accumulation (numpy reduces in buffered chunks, not a full copy)
    # so 50,000 summands of up to 255 lose no precision.
    mean = images.mean(axis=0, dtype=np.float64) / 255.0
    return mean.astype(np.float32), np.ones((3,), np.float32)
  means, stds = [], []
  values = np.arange(256, dtype=np.float64)
  for channel in range(images.shape[-1]):
    # A 256-bin histogram gives exact moments of uint8 data without
    # materialising a float copy of the dataset.
    counts = np.bincount(images[..., channel].ravel(), minlength=256)
    total = counts.sum()
    mean = (counts * values).sum() / total
    var = (counts * (values - mean) ** 2).sum() / total
    means.append(mean / 255.0)
    stds.append(math.sqrt(var) / 255.0)
  std = np.maximum(np.asarray(stds, np.float32), 1e-6)  # no 0-division
  return np.asarray(means, np.float32), std


def _finish(raw: _Raw, *, normalization: str, validation_split: int,
            max_train: int, max_test: int) -> Dataset:
  """Applies validation split, subsets and statistics to raw arrays."""
  train_images, train_labels = raw.train_images, raw.train_labels
  test_images, test_labels = raw.test_images, raw.test_labels
  _check_validation_split(len(train_labels), validation_split)
  if validation_split:
    # Fixed seed 0: the validation set must not change with the run's seed,
    # or validation scores of different seeds would not be comparable.
    permutation = np.random.default_rng(0).permutation(len(train_labels))
    keep = np.sort(permutation[:-validation_split])
    held_out = np.sort(permutation[-validation_split:])
    eval_images, eval_labels = train_images[held_out], train_labels[held_out]
    train_images, train_labels = train_images[keep], train_labels[keep]
    eval_split = 'validation'
  else:
    eval_images, eval_labels = test_images, test_labels
    eval_split = 'test'
  if max_train:
    keep = _balanced_subset(train_labels, max_train, seed=1)
    train_images, train_labels = train_images[keep], train_labels[keep]
  if max_test:
    keep = _balanced_subset(eval_labels, max_test, seed=2)
    eval_images, eval_labels = eval_images[keep], eval_labels[keep]
    keep = _balanced_subset(test_labels, max_test, seed=2)
    test_images, test_labels = test_images[keep], test_labels[keep]
  mean, std = _statistics(train_images, normalization)
  return Dataset(
      name=raw.name,
      num_classes=raw.num_classes,
      class_names=raw.class_names,
      train_images=train_images,
      train_labels=train_labels.astype(np.int32, copy=False),
      eval_images=eval_images,
      eval_labels=eval_labels.astype(np.int32, copy=False),
      test_images=test_images,
      test_labels=test_labels.astype(np.int32, copy=False),
      mean=mean,
      std=std,
      eval_split=eval_split,
  )


# ----------------------------------------------------------------------------
# Synthetic data.
# ----------------------------------------------------------------------------


def _make_synthetic(config_data: Any, seed: int) -> _Raw:
  """Class-coloured noise: learnable in a few steps, deterministic in seed."""
  num_train = _get_int(config_data, 'synthetic_train_size', 1024, minimum=1)
  num_test = _get_int(config_data, 'synthetic_test_size', 256, minimum=1)
  size = _get_int(config_data, 'image_size', 32, minimum=1)
  num_classes = _get_int(config_data, 'num_classes', 10, minimum=2)
  # Each class gets a mean colour; per-pixel noise (sd 32) hides it in any
  # single pixel, but a global average pool recovers it, so a tiny ResNet
  # beats chance within a few steps, which is what smoke tests check.
  colours = np.random.default_rng([seed, 0]).uniform(48, 208, (num_classes, 3))

  def make(count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
    images = np.empty((count, size, size, 3), np.uint8)
    for start in range(0, count, 2048):  # bounds the float32 scratch memory
      chunk = labels[start:start + 2048]
      noise = rng.standard_normal((len(chunk), size, size, 3), np.float32)
      pixels = colours[chunk][:, None, None, :] + 32.0 * noise
      images[start:start + len(chunk)] = np.clip(np.rint(pixels), 0, 255)
    return images, labels

  train_images, train_labels = make(num_train, 1)
  test_images, test_labels = make(num_test, 2)
  return _Raw('synthetic', num_classes, None, train_images, train_labels,
              test_images, test_labels)


# ----------------------------------------------------------------------------
# TFDS (CIFAR-10/100).
# ----------------------------------------------------------------------------


def _tfds_data_dir(config_data: Any) -> str | None:
  """Validated `config.data.tfds_data_dir`, or None for TFDS's default."""
  data_dir = str(_get(config_data, 'tfds_data_dir', '')).strip()
  if not data_dir:
    return None
  expanded = Path(data_dir).expanduser()
  if not expanded.is_dir():
    raise DataError(
        f'config.data.tfds_data_dir = {data_dir!r}: {expanded} is not a '
        'directory. Set config.data.tfds_data_dir to the directory holding '
        'prepared TFDS datasets (or leave it empty for TFDS\'s default), or '
        'set config.data.path to an image-folder tree or .tar.gz.')
  return str(expanded)


def _hide_accelerators_from_tensorflow() -> Any:
  """Imports TensorFlow with GPUs hidden; returns the module.

  TF only decodes and batches here. Left alone it reserves nearly all GPU
  memory on first use, which the JAX process needs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices; too late.
    pass
  return tf


def _load_tfds(config_data: Any, name: str) -> _Raw:
  """Loads CIFAR-10/100 with TFDS (which imports TensorFlow)."""
  data_dir = _tfds_data_dir(config_data)
  download = bool(_get(config_data, 'tfds_download', True))
  # Imported here: tensorflow_datasets pulls in TensorFlow, which costs
  # seconds and GPU memory that folder and synthetic datasets do not need.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or str(
      tfds.core.constants.DATA_DIR)
  try:
    if download or tfds.builder(name, data_dir=data_dir).is_prepared():
      # Loading will import TensorFlow; a failing lookup does not need it.
      _hide_accelerators_from_tensorflow()
    (train, test), info = tfds.load(
        name, split=['train', 'test'], batch_size=-1, as_supervised=True,
        data_dir=data_dir, download=download, with_info=True)
    train_images, train_labels = tfds.as_numpy(train)
    test_images, test_labels = tfds.as_numpy(test)
  except Exception as e:  # TFDS raises AssertionError, OSError, ImportError...
    raise DataError(
        f'could not load TFDS dataset {name!r}: it is not prepared in '
        f'{where} and could not be downloaded ({type(e).__name__}: {e}). '
        f'Prepare it (e.g. `tfds build {name} --data_dir=DIR`) and set '
        'config.data.tfds_data_dir to DIR, or set config.data.path to an '
        'image-folder tree or .tar.gz of it.') from e
  names = tuple(info.features['label'].names)
  if name == 'cifar10' and names == tuple(str(i) for i in range(10)):
    names = CIFAR10_CLASSES  # TFDS fills real names in only when preparing.
  return _Raw(name, len(names), names, np.asarray(train_images, np.uint8),
              np.asarray(train_labels, np.int32),
              np.asarray(test_images, np.uint8),
              np.asarray(test_labels, np.int32))


# ----------------------------------------------------------------------------
# Image folders and archives.
# ----------------------------------------------------------------------------

# A layout before validation: split -> class -> [(file name, source, stat)].
# `source` is a path (folders) or the file's bytes (archives); `stat` is
# (size, mtime_ns) for folders, used in the cache key, and None for archives.
_Tree = dict[str, dict[str, list[tuple[str, Any, tuple[int, int] | None]]]]


class _Split(NamedTuple):
  """One validated split of an image-folder layout."""
  classes: tuple[str, ...]
  sources: list[Any]    # Paths or bytes, in label-then-file-name order.
  names: list[str]      # How each image is named in error messages.
  labels: np.ndarray    # int32, one per image.
  listing: list[tuple[str, int, int]]  # (relative path, size, mtime_ns).


def _cache_dir(config_data: Any) -> Path:
  configured = str(_get(config_data, 'cache_dir', '')).strip()
  root = configured or os.environ.get('RESFLAX_CACHE') or '~/.cache/resflax'
  return Path(root).expanduser()


def _archive_stem(filename: str) -> str | None:
  """Name of an archive without its suffix, or None if not an archive."""
  lower = filename.lower()
  for suffix in _ARCHIVE_SUFFIXES:
    if lower.endswith(suffix):
      return filename[:-len(suffix)]
  return None


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('._') or 'data'


def _is_image_name(name: str) -> bool:
  # Hidden files are skipped: macOS and editors leave '._x.jpg' and similar
  # files that are not images.
  return (not name.startswith('.') and
          os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS)


def _load_path(path_str: str, config_data: Any, name: str,
               validation_split: int) -> _Raw:
  """Loads an image-folder tree or archive named by `config.data.path`."""
  path = Path(path_str).expanduser()
  if not path.exists():
    raise DataError(
        f'config.data.path = {path_str!r}: {path.absolute()} does not exist. '
        'Set config.data.path to an image-folder root (<root>/{train,test}/'
        '<class>/<image>) or a .tar.gz of one.')
  image_size = _get_int(config_data, 'image_size', 32)
  cache_dir = _cache_dir(config_data)
  path = path.resolve()
  if path.is_dir():
    label = name if name not in ('', 'folder') else _slug(path.name)
    return _load_folder(path, label, cache_dir, image_size, validation_split)
  stem = _archive_stem(path.name)
  if stem is None:
    raise DataError(
        f'config.data.path = {path_str!r} is a file but not a tar archive '
        f'({", ".join(_ARCHIVE_SUFFIXES)}); point it at an image-folder root '
        'or an archive of one.')
  label = name if name not in ('', 'folder') else _slug(stem)
  return _load_archive(path, stem, label, cache_dir, image_size,
                       validation_split)


def _validate_layout(tree: _Tree, where: Callable[[str], str]
                     ) -> tuple[_Split, _Split]:
  """Checks a gathered layout and orders it; `where('train/cat')` names it."""
  splits = []
  for split in _SPLITS:
    classes = tree.get(split)
    if classes is None:
      raise DataError(
          f'split folder {where(split)} is missing: an image-folder dataset '
          'needs <root>/train/<class>/<image> and <root>/test/<class>/<image> '
          '(config.data.path).')
    if not classes:
      raise DataError(f'split folder {where(split)} has no class folders')
    ordered = tuple(sorted(classes))  # Sorted names define the labels.
    sources, names, labels, listing = [], [], [], []
    for label, cls in enumerate(ordered):
      files = sorted(classes[cls], key=lambda item: item[0])
      if not files:
        raise DataError(
            f'class folder {where(f"{split}/{cls}")} (class {cls!r}) has no '
            f'images (looked for {", ".join(sorted(_IMAGE_EXTENSIONS))} '
            'files)')
      for file_name, source, stat in files:
        rel = f'{split}/{cls}/{file_name}'
        sources.append(source)
        names.append(where(rel))
        if stat is not None:
          listing.append((rel, *stat))
      labels.extend([label] * len(files))
    splits.append(_Split(ordered, sources, names,
                         np.asarray(labels, np.int32), listing))
  train, test = splits
  if train.classes != test.classes:
    only_train = sorted(set(train.classes) - set(test.classes))
    only_test = sorted(set(test.classes) - set(train.classes))
    raise DataError(
        f'class folders of {where("train")} and {where("test")} differ: only '
        f'in train: {only_train}, only in test: {only_test}')
  return train, test


def _gather_folder(root: Path) -> _Tree:
  """Lists `<root>/<split>/<class>/<image>` without opening any image."""
  tree: _Tree = {}
  for split in _SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      continue  # Reported by _validate_layout.
    tree[split] = {}
    with os.scandir(split_dir) as class_entries:
      class_dirs = [e for e in class_entries
                    if not e.name.startswith('.') and e.is_dir()]
    for class_entry in class_dirs:
      files = []
      with os.scandir(class_entry.path) as entries:
        for entry in entries:
          if _is_image_name(entry.name) and entry.is_file():
            stat = entry.stat()
            files.append((entry.name, entry.path,
                          (stat.st_size, stat.st_mtime_ns)))
      tree[split][class_entry.name] = files
  return tree


def _gather_archive(archive: Path) -> tuple[_Tree, str]:
  """Reads every image of a tar archive into memory, keyed like a folder.

  The archive is streamed rather than unpacked: creating 60,000 small files
  took 1.3 s to 30 s on this project's 2-core test machine (ext4; openat
  alone took 440 us per file once the disk was busy), while reading them
  from the stream takes 3-5 s. Never writing members to disk also makes
  hostile member names ('../x', absolute paths, links) harmless.

  Returns:
    The layout, and the wrapping folder ('mydata/') or ''.
  """
  files: list[tuple[tuple[str, ...], bytes]] = []
  dirs: list[tuple[str, ...]] = []
  try:
    with tarfile.open(archive, mode='r|*') as tar:  # One sequential pass.
      for member in tar:
        parts = tuple(p for p in member.name.split('/') if p not in ('', '.'))
        if not parts or '..' in parts:
          continue
        if member.isdir():
          dirs.append(parts)
        elif member.isfile() and _is_image_name(parts[-1]):
          files.append((parts, tar.extractfile(member).read()))
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot read archive {archive} (config.data.path): '
                    f'{type(e).__name__}: {e}') from e
  # Accept one wrapping folder, as made by `tar czf x.tar.gz mydata/`.
  tops = {parts[0] for parts, _ in files} | {parts[0] for parts in dirs}
  prefix = 0
  wrapper = ''
  if not tops & set(_SPLITS) and len(tops) == 1:
    prefix = 1
    wrapper = f'{next(iter(tops))}/'
  tree: _Tree = {}
  for parts in dirs:
    parts = parts[prefix:]
    if len(parts) >= 1 and parts[0] in _SPLITS:
      tree.setdefault(parts[0], {})
    if len(parts) == 2 and parts[0] in _SPLITS and not parts[1].startswith('.'):
      tree[parts[0]].setdefault(parts[1], [])
  for parts, data in files:
    parts = parts[prefix:]
    if (len(parts) == 3 and parts[0] in _SPLITS
        and not parts[1].startswith('.')):
      split, cls, file_name = parts
      tree.setdefault(split, {}).setdefault(cls, []).append(
          (file_name, data, None))
  return tree, wrapper


def _archive_namer(archive: Path, prefix: str = '') -> Callable[[str], str]:
  return lambda rel: f"'{prefix}{rel}' in archive {archive}"


def _decode_image(source: Any, name: str, shape: tuple[int, int] | None,
                  reference: str) -> np.ndarray:
  """Decodes one image (path or bytes) to uint8 RGB, checking its size."""
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes)
                    else source) as image:
      image.load()
      # convert() copies even when the mode already matches; skipping it and
      # numpy's __array_interface__ makes small images ~30% faster.
      if image.mode != 'RGB':
        image = image.convert('RGB')
      width, height = image.size
      array = np.frombuffer(image.tobytes(), np.uint8).reshape(height, width, 3)
  except UnidentifiedImageError as e:
    # Pillow's own message names a BytesIO object for archive members.
    raise DataError(f'cannot read image {name}: not a recognised image '
                    'format, or the file is corrupt') from e
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise DataError(
        f'cannot read image {name}: {type(e).__name__}: {e}') from e
  if shape is not None and array.shape[:2] != shape:
    raise DataError(
        f'image {name} is {array.shape[1]}x{array.shape[0]} (WxH) but '
        f'{reference} is {shape[1]}x{shape[0]}; all images of a dataset must '
        'have the same size')
  return array


def _decode_serial(sources: list[Any], names: list[str], out: np.ndarray,
                   reference: str) -> None:
  shape = out.shape[1:3]
  for i, (source, name) in enumerate(zip(sources, names)):
    out[i] = _decode_image(source, name, shape, reference)


def _decode_in_subprocess(sources: list[Any],
                          shape: tuple[int, int]) -> np.ndarray | None:
  """Decodes `sources` in a child Python; None if it failed for any reason."""
  if isinstance(sources[0], bytes):
    header = {'shape': list(shape), 'sizes': [len(s) for s in sources]}
    payload = b''.join(sources)
  else:
    header = {'shape': list(shape), 'paths': sources}
    payload = b''
  job = json.dumps(header).encode('utf-8', 'surrogateescape') + b'\n' + payload
  try:
    # -P: do not put the working directory on sys.path, so a stray json.py
    # or PIL/ there cannot shadow the real modules.
    result = subprocess.run([sys.executable, '-P', '-c', _WORKER_SOURCE],
                            input=job, capture_output=True, check=False)
  except OSError as e:
    _log.warning('cannot start decoder subprocess (%s); decoding in-process',
                 e)
    return None
  expected = len(sources) * shape[0] * shape[1] * 3
  if result.returncode != 0 or len(result.stdout) != expected:
    return None
  return np.frombuffer(result.stdout, np.uint8).reshape(
      len(sources), shape[0], shape[1], 3)


def _num_decoders(num_files: int) -> int:
  if num_files < _PARALLEL_MIN_FILES:
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  return max(1, min(cores, 16, num_files // 256))


def _decode_all(sources: list[Any], names: list[str],
                shape: tuple[int, int], reference: str) -> np.ndarray:
  """Decodes images into one (N, H, W, 3) uint8 array using all cores."""
  out = np.empty((len(sources), shape[0], shape[1], 3), np.uint8)
  workers = _num_decoders(len(sources))
  bounds = [len(sources) * i // workers for i in range(workers + 1)]
  chunks = list(zip(bounds[:-1], bounds[1:]))
  with concurrent.futures.ThreadPoolExecutor(max(1, workers - 1)) as pool:
    # Threads only wait on the child processes; this thread decodes the
    # first chunk meanwhile, so every core is busy.
    futures = [(pool.submit(_decode_in_subprocess, sources[a:b], shape), a, b)
               for a, b in chunks[1:]]
    a, b = chunks[0]
    _decode_serial(sources[a:b], names[a:b], out[a:b], reference)
    for future, a, b in futures:
      decoded = future.result()
      if decoded is None:
        # Redo the chunk here: either it fails again with a DataError that
        # names the file, or the child's failure was environmental.
        _decode_serial(sources[a:b], names[a:b], out[a:b], reference)
      else:
        out[a:b] = decoded
  return out


def _decode_layout(train: _Split, test: _Split, label: str, image_size: int,
                   where: Callable[[str], str]) -> _Raw:
  """Decodes validated splits into arrays (no caching)."""
  reference = train.names[0]
  first = _decode_image(train.sources[0], reference, None, reference)
  shape = first.shape[:2]
  if image_size and shape != (image_size, image_size):
    raise DataError(
        f'images of {where("train")} are {shape[1]}x{shape[0]} (e.g. '
        f'{reference}) but config.data.image_size is {image_size}; set '
        'config.data.image_size to match the images.')
  images = _decode_all(train.sources + test.sources, train.names + test.names,
                       shape, reference)
  num_train = len(train.sources)
  return _Raw(label, len(train.classes), train.classes, images[:num_train],
              train.labels, images[num_train:], test.labels)


def _read_cache(path: Path) -> _Raw | None:
  """Cached arrays at `path`, or None if absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
    class_names = tuple(str(c) for c in arrays['class_names'])
    return _Raw(str(arrays['name']), len(class_names), class_names,
                arrays['train_images'], arrays['train_labels'],
                arrays['test_images'], arrays['test_labels'])
  except Exception as e:  # A truncated or foreign file: rebuild it.
    _log.warning('ignoring unreadable cache file %s: %s', path, e)
    return None


def _write_cache(path: Path, raw: _Raw) -> None:
  """Atomically writes `raw` to `path`; failures only log a warning."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                               suffix='.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        # Uncompressed: loading must be a memcpy, not a decompression.
        np.savez(f, name=np.asarray(raw.name),
                 class_names=np.asarray(raw.class_names),
                 train_images=raw.train_images, train_labels=raw.train_labels,
                 test_images=raw.test_images, test_labels=raw.test_labels)
      os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache.
      # Atomic: concurrent readers see the old file or the complete new one.
      os.replace(tmp, path)
    except BaseException:
      Path(tmp).unlink(missing_ok=True)
      raise
  except OSError as e:
    # The cache is an optimisation; a read-only home must not stop a run.
    _log.warning('could not write dataset cache %s: %s', path, e)


def _check_cached_size(raw: _Raw, image_size: int, source: Any) -> None:
  height, width = raw.train_images.shape[1:3]
  if image_size and (height, width) != (image_size, image_size):
    raise DataError(
        f'images of {source} are {width}x{height} but config.data.image_size '
        f'is {image_size}; set config.data.image_size to match the images.')


def _load_folder(root: Path, label: str, cache_dir: Path, image_size: int,
                 validation_split: int) -> _Raw:
  """Loads an image-folder tree, via the decoded-array cache."""
  where = lambda rel: str(root / rel)
  train, test = _validate_layout(_gather_folder(root), where)
  _check_validation_split(len(train.sources), validation_split)
  # The key covers the root and every file's size and mtime, so editing,
  # adding or removing an image invalidates the cache.
  digest = hashlib.sha256(f'v{_CACHE_VERSION}\0{root}\0'.encode(
      'utf-8', 'surrogateescape'))
  for rel, size, mtime in train.listing + test.listing:
    digest.update(f'{rel}\0{size}\0{mtime}\n'.encode('utf-8',
                                                     'surrogateescape'))
  cache = (cache_dir /
           f'folder-{_slug(root.name)}-{digest.hexdigest()[:20]}.npz')
  raw = _read_cache(cache)
  if raw is None:
    raw = _decode_layout(train, test, label, image_size, where)
    _write_cache(cache, raw)
  _check_cached_size(raw, image_size, root)
  return raw._replace(name=label)


def _load_archive(archive: Path, stem: str, label: str, cache_dir: Path,
                  image_size: int, validation_split: int) -> _Raw:
  """Loads a tar archive of an image-folder tree, via the cache."""
  stat = archive.stat()
  # Keyed by the archive's identity: a cached load does not read it at all.
  key = hashlib.sha256(
      f'v{_CACHE_VERSION}\0{archive}\0{stat.st_size}\0{stat.st_mtime_ns}'
      .encode('utf-8', 'surrogateescape')).hexdigest()[:20]
  cache = cache_dir / f'archive-{_slug(stem)}-{key}.npz'
  raw = _read_cache(cache)
  if raw is None:
    tree, wrapper = _gather_archive(archive)
    where = _archive_namer(archive, wrapper)
    train, test = _validate_layout(tree, where)
    _check_validation_split(len(train.sources), validation_split)
    raw = _decode_layout(train, test, label, image_size, where)
    _write_cache(cache, raw)
  _check_cached_size(raw, image_size, archive)
  return raw._replace(name=label)


def unpack_archive(archive: str | os.PathLike[str],
                   cache_dir: str | os.PathLike[str] | None = None) -> Path:
  """Unpacks an image-folder archive once into the cache; returns its root.

  `load_dataset` does not need this (it streams archives); it is for tools
  that want real files, e.g. a torchvision ImageFolder baseline. The archive
  is unpacked into a temporary folder that is renamed into place, so an
  interrupted unpack never looks complete, and a second call returns at once.

  Args:
    archive: Path of a tar archive (.tar.gz, .tgz, .tar, ...).
    cache_dir: Parent folder; default `$RESFLAX_CACHE` or `~/.cache/resflax`.

  Returns:
    The folder that holds `train/` and `test/`.
  """
  archive = Path(archive).expanduser().resolve()
  if not archive.is_file():
    raise DataError(f'archive {archive} does not exist (config.data.path)')
  stem = _archive_stem(archive.name) or archive.name
  stat = archive.stat()
  key = hashlib.sha256(
      f'{archive}\0{stat.st_size}\0{stat.st_mtime_ns}'.encode(
          'utf-8', 'surrogateescape')).hexdigest()[:20]
  root = Path(cache_dir or _cache_dir({})).expanduser()
  unpacked = root / f'{_slug(stem)}-{key}'
  if not unpacked.is_dir():
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f'.{_slug(stem)}-',
                                suffix='.tmp'))
    try:
      _unpack(archive, tmp)
      os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache.
      os.rename(tmp, unpacked)
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)
      if not unpacked.is_dir():  # Not merely a concurrent caller's win.
        raise
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  children = [c for c in unpacked.iterdir()
              if c.is_dir() and not c.name.startswith('.')]
  if not (unpacked / 'train').is_dir() and len(children) == 1:
    return children[0]  # One wrapping folder, as in `tar czf x.tgz data/`.
  return unpacked


def _unpack(archive: Path, dest: Path) -> None:
  """Extracts `archive` into the empty directory `dest`."""
  tar = shutil.which('tar')
  if tar:
    # The tar binary is ~8x faster than Python's tarfile on 60,000 small
    # files, and it refuses absolute and '..' member names.
    result = subprocess.run(
        [tar, '-xf', str(archive), '-C', str(dest), '--no-same-owner',
         '--no-same-permissions'], capture_output=True, check=False)
    if result.returncode == 0:
      return
    for child in dest.iterdir():  # Start over clean with tarfile below.
      if child.is_dir() and not child.is_symlink():
        shutil.rmtree(child)
      else:
        child.unlink()
  try:
    with tarfile.open(archive) as tar_file:
      tar_file.extractall(dest, filter='data')
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot unpack archive {archive}: '
                    f'{type(e).__name__}: {e}') from e


# ----------------------------------------------------------------------------
# ImageNet (streamed with tf.data).
# ----------------------------------------------------------------------------


def imagenet_iterator(config_data: Any, split: str, batch_size: int, *,
                      seed: int = 0, process_index: int = 0,
                      process_count: int = 1,
                      training: bool | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
  """Streams ImageNet batches from TFDS as host numpy arrays.

  Training batches (infinite, shuffled) use an Inception-style random resized
  crop (8%-100% of the area, aspect 3/4-4/3) to `image_size` and a random
  horizontal flip. Evaluation batches (one pass) resize the shorter side to
  `image_size * 256 / 224` and take the central `image_size` crop; the last
  batch is padded and every host yields the same number of batches, with
  `mask` marking real examples, so the eval step compiles once and multi-host
  collectives stay in lockstep. Images are uint8: normalize them on the
  device with `normalize(images, IMAGENET_MEAN, IMAGENET_STD)`.

  Args:
    config_data: `config.data`; uses `name` (default 'imagenet2012' unless it
      starts with 'imagenet'), `tfds_data_dir` and `image_size` (output
      side, default 224; set it, a CIFAR config's 32 is taken literally).
    split: TFDS split, e.g. 'train', 'validation' or 'train[:10000]'.
    batch_size: Per-host batch size.
    seed: Seed of file order, shuffling and augmentation.
    process_index: This host's index; each host reads a disjoint 1/count.
    process_count: Number of hosts.
    training: Augment and repeat; defaults to `split.startswith('train')`.

  Returns:
    An iterator of dicts with 'image' uint8 (B, S, S, 3), 'label' int32 (B,)
    and, for evaluation, 'mask' float32 (B,).

  Raises:
    DataError: if the dataset is not prepared (raised by this call, before
      any batch is requested).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index ({process_index}) < '
                     f'process_count ({process_count})')
  data_dir = _tfds_data_dir(config_data)
  tf = _hide_accelerators_from_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = str(_get(config_data, 'name', 'imagenet2012'))
  if not name.startswith('imagenet'):
    name = 'imagenet2012'
  image_size = _get_int(config_data, 'image_size', 224, minimum=1)
  resize_size = int(round(image_size * 256 / 224))
  if training is None:
    training = split.startswith('train')

  builder = tfds.builder(name, data_dir=data_dir)
  subsplits = tfds.even_splits(split, n=process_count)
  host_split = subsplits[process_index]
  host_seed = seed * 1_000_003 + process_index  # Distinct stream per host.
  try:
    dataset = builder.as_dataset(
        split=host_split, shuffle_files=training,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=host_seed))
  except Exception as e:  # TFDS raises AssertionError when not prepared.
    raise DataError(
        f'cannot read TFDS dataset {name!r} from {builder.data_dir} '
        f'({type(e).__name__}: {e}). ImageNet must be downloaded by hand '
        f'and prepared with `tfds build {name} --data_dir=DIR '
        '--manual_dir=...`; then set config.data.tfds_data_dir to DIR.'
    ) from e
  # Per-example stateless seeds: augmentation stays reproducible even with
  # parallel, non-deterministic map scheduling.
  seeds = tf.data.Dataset.random(seed=host_seed).batch(2)
  dataset = tf.data.Dataset.zip((dataset, seeds))

  def crop_train(example, rng):
    image_bytes = example['image']
    crop_rng, flip_rng = tf.unstack(
        tf.random.experimental.stateless_split(rng, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(image_bytes),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_rng, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = tf.image.resize(image, [image_size, image_size], 'bicubic')
    image = tf.image.stateless_random_flip_left_right(image, flip_rng)
    return _to_uint8(tf, image), tf.cast(example['label'], tf.int32)

  def crop_eval(example, rng):
    del rng
    image = tf.io.decode_jpeg(example['image'], channels=3)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    scale = resize_size / tf.minimum(height, width)
    new_size = tf.cast(tf.round(tf.stack([height, width]) * scale), tf.int32)
    image = tf.image.resize(image, new_size, 'bilinear', antialias=True)
    top = (new_size[0] - image_size) // 2
    left = (new_size[1] - image_size) // 2
    image = image[top:top + image_size, left:left + image_size]
    image.set_shape([image_size, image_size, 3])
    return _to_uint8(tf, image), tf.cast(example['label'], tf.int32)

  autotune = tf.data.AUTOTUNE
  if training:
    dataset = dataset.repeat().shuffle(16 * batch_size, seed=host_seed)
    dataset = dataset.map(crop_train, num_parallel_calls=autotune)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda image, label: {'image': image,
                                                'label': label})
  else:
    dataset = dataset.map(crop_eval, num_parallel_calls=autotune)
    dataset = dataset.batch(batch_size)

    def pad(image, label):
      count = tf.shape(label)[0]
      missing = batch_size - count
      image = tf.pad(image, [[0, missing], [0, 0], [0, 0], [0, 0]])
      image.set_shape([batch_size, image_size, image_size, 3])
      label = tf.ensure_shape(tf.pad(label, [[0, missing]]), [batch_size])
      mask = tf.ensure_shape(
          tf.pad(tf.ones([count], tf.float32), [[0, missing]]), [batch_size])
      return {'image': image, 'label': label, 'mask': mask}

    dataset = dataset.map(pad)
    # Hosts whose shard is one example shorter may have one batch fewer; top
    # them up with all-padding batches so every host runs the same steps.
    try:
      largest = max(builder.info.splits[s].num_examples for s in subsplits)
    except KeyError:  # No split sizes recorded (e.g. tfds.testing.mock_data).
      largest = None
    if largest is not None:
      num_batches = -(-largest // batch_size)
      filler = tf.data.Dataset.from_tensors({
          'image': tf.zeros([batch_size, image_size, image_size, 3],
                            tf.uint8),
          'label': tf.zeros([batch_size], tf.int32),
          'mask': tf.zeros([batch_size], tf.float32)})
      dataset = dataset.concatenate(filler.repeat()).take(num_batches)
  dataset = dataset.prefetch(autotune)
  # Returned, not yielded from this function: a generator would postpone
  # the errors above until the first batch is requested.
  return iter(tfds.as_numpy(dataset))


def _to_uint8(tf: Any, image: Any) -> Any:
  """Rounds resized float pixels back to uint8 (bicubic can overshoot)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
