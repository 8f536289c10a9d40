"""The in-memory dataset and what every source shares.

A source returns its full train and test arrays as a :class:`Raw`;
:func:`finish` turns that into a :class:`Dataset` the same way for all of
them: validation split, class-balanced subsets, normalisation statistics.
Pixel statistics are fractions of 255, so ``normalize`` maps uint8 pixels to
``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from resflax.errors import DataError
from resflax.registry import Registry

# Training images -> (mean, std) as fractions of 255.
Statistics = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# config.data.normalization -> how its statistics are computed.
NORMALIZATIONS: Registry[Statistics] = Registry("data.normalization")


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
    source: Where the images came from, e.g. 'TFDS cifar10', 'folder
      /data/mini' or 'archive /data/mini.tar.gz'.
    cache_path: The decoded-array cache (.npz) read or written for this
      load, or None when none was (TFDS, synthetic, or an unwritable cache).
    cache_hit: Whether the arrays were read from `cache_path` rather than
      decoded.
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
  eval_split: str = "test"
  source: str = ""
  cache_path: str | None = None
  cache_hit: bool = False

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

  def summary(self) -> str:
    """One line on what was loaded, a second naming the cache if one was used.

    Returns:
      E.g. ``"cifar10 from archive /d/c.tar.gz: 50000 train, 10000 eval
      (test), 10000 test images; 10 classes; 32x32x3"`` and
      ``"cache: /c/archive-c-0123.npz (read)"``.
    """
    shape = "x".join(str(d) for d in self.image_shape)
    line = (
        f"{self.name} from {self.source or self.name}: "
        f"{self.num_train} train, {self.num_eval} eval "
        f"({self.eval_split}), {self.num_test} test images; "
        f"{self.num_classes} classes; {shape}"
    )
    if self.cache_path is None:
      return line
    state = "read" if self.cache_hit else "written"
    return f"{line}\ncache: {self.cache_path} ({state})"


class Raw(NamedTuple):
  """Full train/test arrays of a source, before splitting and subsetting."""

  name: str
  num_classes: int
  class_names: tuple[str, ...] | None
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str = ""
  cache_path: str | None = None
  cache_hit: bool = False


# ----------------------------------------------------------------------------
# Config access.
# ----------------------------------------------------------------------------


def config_value(config: Any, key: str, default: Any) -> Any:
  """Reads `key` from a ConfigDict, a mapping or any attribute object."""
  if isinstance(config, collections.abc.Mapping):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  return default if value is None else value


def config_int(config: Any, key: str, default: int, minimum: int = 0) -> int:
  """Reads integer `key` (>= `minimum`); DataError naming the key if not."""
  value = config_value(config, key, default)
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise DataError(
        f"config.data.{key} must be an integer, got {value!r}"
    ) from None
  if number != value or number < minimum:
    raise DataError(
        f"config.data.{key} must be an integer >= {minimum}, got {value!r}"
    )
  return number


def choose(registry: Registry, key: str, value: str) -> Any:
  """`registry`'s entry for config.data.`key`; DataError listing the names."""
  if value not in registry:
    raise DataError(
        f"config.data.{key} = {value!r} is not valid; choose one "
        f'of {", ".join(registry.names())}'
    )
  return registry.get(value)


# ----------------------------------------------------------------------------
# Splitting and subsetting.
# ----------------------------------------------------------------------------


def check_validation_split(num_train: int, validation_split: int) -> None:
  """Raises DataError if holding out `validation_split` leaves no training."""
  if validation_split >= num_train:
    raise DataError(
        f"config.data.validation_split = {validation_split} leaves no "
        f"training images: the training split has only {num_train}"
    )


def _round_robin(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
  """`size` indices dealt out across classes in a random order.

  Returned in dealing order: rank 0 of every class (by label), then rank 1...
  """
  order = rng.permutation(len(labels))
  shuffled = labels[order]
  # Rank of each example within its class in the shuffled order: taking the
  # `size` smallest ranks deals examples out round-robin across classes.
  by_class = np.argsort(shuffled, kind="stable")
  sorted_labels = shuffled[by_class]
  first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
  rank = np.empty(len(labels), np.int64)
  rank[by_class] = np.arange(len(labels)) - first_of_class
  return order[np.lexsort((shuffled, rank))[:size]]


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices of `size` examples with classes as equal as possible."""
  if size <= 0 or size >= len(labels):
    return np.arange(len(labels))
  return np.sort(_round_robin(labels, size, np.random.default_rng(seed)))


def balanced_sample(labels: Any, count: int, key_or_seed: Any) -> np.ndarray:
  """A class-balanced random sample of `count` example indices.

  Classes get equal shares (differing by at most one); a class with fewer
  examples than its share gives all it has and the others make up the rest.
  Unlike the first `count` examples, which in a class-ordered image folder
  are all of one class, this is what "random training images" should be,
  e.g. for Veit et al.'s path-gradient measurement.

  Args:
    labels: int labels (N,), e.g. `Dataset.train_labels`.
    count: Number of indices, 1 <= count <= N.
    key_or_seed: An int seed or a JAX PRNG key (typed or raw uint32).

  Returns:
    int64 array (count,) of distinct indices into `labels`, in random order.

  Raises:
    ValueError: if `count` is out of range.
  """
  labels = np.asarray(labels)
  if not 0 < count <= len(labels):
    raise ValueError(
        f"need 0 < count ({count}) <= number of labels " f"({len(labels)})"
    )
  rng = np.random.default_rng(_seed_words(key_or_seed))
  return rng.permutation(_round_robin(labels, count, rng))


def _seed_words(key_or_seed: Any) -> Any:
  """A numpy seed from an int or from the bits of a JAX PRNG key."""
  if isinstance(key_or_seed, (int, np.integer)):
    return int(key_or_seed)
  # A key means the caller has JAX loaded; importing it here keeps it out of
  # processes that only decode images.
  import jax  # pylint: disable=g-import-not-at-top

  key = key_or_seed
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key, np.uint32).ravel()


# ----------------------------------------------------------------------------
# Statistics and the final Dataset.
# ----------------------------------------------------------------------------


@NORMALIZATIONS.register("pixel_mean")
def pixel_mean_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """He et al. 2016: the per-pixel mean (H, W, 3) and a std of ones (3,)."""
  # float64 accumulation (numpy reduces in buffered chunks, not a full copy)
  # so 50,000 summands of up to 255 lose no precision.
  mean = images.mean(axis=0, dtype=np.float64) / 255.0
  return mean.astype(np.float32), np.ones((3,), np.float32)


@NORMALIZATIONS.register("channel_standardize")
def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation, each (3,)."""
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


def finish(
    raw: Raw,
    *,
    normalization: str,
    validation_split: int,
    max_train: int,
    max_test: int,
) -> Dataset:
  """Applies validation split, subsets and statistics to raw arrays."""
  train_images, train_labels = raw.train_images, raw.train_labels
  test_images, test_labels = raw.test_images, raw.test_labels
  check_validation_split(len(train_labels), validation_split)
  if validation_split:
    # Fixed seed 0: the validation set must not change with the run's seed,
    # or validation scores of different seeds would not be comparable.
    permutation = np.random.default_rng(0).permutation(len(train_labels))
    keep = np.sort(permutation[:-validation_split])
    held_out = np.sort(permutation[-validation_split:])
    eval_images, eval_labels = train_images[held_out], train_labels[held_out]
    train_images, train_labels = train_images[keep], train_labels[keep]
    eval_split = "validation"
  else:
    eval_images, eval_labels = test_images, test_labels
    eval_split = "test"
  if max_train:
    keep = balanced_subset(train_labels, max_train, seed=1)
    train_images, train_labels = train_images[keep], train_labels[keep]
  if max_test:
    keep = balanced_subset(eval_labels, max_test, seed=2)
    eval_images, eval_labels = eval_images[keep], eval_labels[keep]
    keep = balanced_subset(test_labels, max_test, seed=2)
    test_images, test_labels = test_images[keep], test_labels[keep]
  statistics = choose(NORMALIZATIONS, "normalization", normalization)
  mean, std = statistics(train_images)
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
      source=raw.source,
      cache_path=raw.cache_path,
      cache_hit=raw.cache_hit,
  )
