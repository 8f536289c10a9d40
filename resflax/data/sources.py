"""The registry of data sources, and the two entry points that use it.

Each source declares, without reading any data, what a trainer must know
before compiling: its splits, its number of classes, its image shape, and
whether it is held in host memory (:func:`load_dataset`) or streamed batch by
batch (``imagenet_iterator``). :func:`source_info` reports that;
:func:`load_dataset` loads the in-memory ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from resflax.data import cifar, folder, imagenet, synthetic, tfds_source
from resflax.data.base import (
    NORMALIZATIONS,
    Dataset,
    Raw,
    choose,
    config_int,
    config_value,
    finish,
)
from resflax.errors import DataError
from resflax.registry import Registry

ImageShape = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Source:
  """How one kind of data is read.

  Attributes:
    splits: The splits the source has, training split first.
    num_classes: config.data -> number of classes, or None when only
      `load_dataset` can tell.
    image_shape: config.data -> (H, W, C), or None when only `load_dataset`
      can tell.
    load: (config.data, seed) -> Raw for a source held in memory; None for
      one that streams.
  """

  splits: tuple[str, ...]
  num_classes: Callable[[Any], int | None]
  image_shape: Callable[[Any], ImageShape | None]
  load: Callable[[Any, int], Raw] | None

  @property
  def streams(self) -> bool:
    return self.load is None


# config.data.name -> Source. With config.data.path set, 'folder' reads it
# whatever the name, which is then only a label.
SOURCES: Registry[Source] = Registry("data.name")

_TRAIN_TEST = ("train", "test")
_CIFAR_SHAPE = (32, 32, 3)


def _load_cifar(name: str, config_data: Any, seed: int) -> Raw:
  """CIFAR from its archive, or through TFDS with config.data.tfds_data_dir.

  The archive (downloaded once) needs no TensorFlow, so a plain
  `pip install resflax` trains on CIFAR; a TFDS data dir that already holds
  the prepared dataset keeps working.
  """
  if str(config_value(config_data, "tfds_data_dir", "")).strip():
    return tfds_source.load_cifar(name, config_data, seed)
  return cifar.load_cifar(name, config_data, seed)


SOURCES.register("cifar10")(
    Source(
        _TRAIN_TEST,
        lambda c: 10,
        lambda c: _CIFAR_SHAPE,
        functools.partial(_load_cifar, "cifar10"),
    )
)
SOURCES.register("cifar100")(
    Source(
        _TRAIN_TEST,
        lambda c: 100,
        lambda c: _CIFAR_SHAPE,
        functools.partial(_load_cifar, "cifar100"),
    )
)
SOURCES.register("synthetic")(
    Source(
        _TRAIN_TEST,
        synthetic.num_classes,
        lambda c: (synthetic.image_size(c),) * 2 + (3,),
        synthetic.load_synthetic,
    )
)
SOURCES.register("folder")(
    Source(
        _TRAIN_TEST, folder.num_classes, folder.image_shape, folder.load_path
    )
)
SOURCES.register("imagenet2012")(
    Source(
        ("train", "validation"),
        lambda c: imagenet.NUM_CLASSES,
        lambda c: (imagenet.image_size(c),) * 2 + (3,),
        None,
    )
)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What a config's data is, known without loading it.

  Attributes:
    name: The dataset's label, as `Dataset.name` will be (e.g. 'cifar10',
      or the folder's name for config.data.name 'folder').
    source: The SOURCES entry that reads it ('folder' whenever
      config.data.path is set).
    streams: True if it is streamed with `imagenet_iterator`; False if
      `load_dataset` holds it in host memory.
    num_classes: Number of classes, or None for a tar archive, whose
      classes only `load_dataset` reads (`Dataset.num_classes`): it is
      compressed as one stream.
    image_shape: (H, W, C) of the images the model sees, or None for a tar
      archive with config.data.image_size 0 (any size).
    eval_split: What is evaluated during training: 'test', or 'validation'
      (held-out training images, or ImageNet's validation split).
    splits: The source's own splits, training split first.
  """

  name: str
  source: str
  streams: bool
  num_classes: int | None
  image_shape: ImageShape | None
  eval_split: str
  splits: tuple[str, ...]


def _source_name(config_data: Any) -> str:
  """The SOURCES entry for config.data; DataError for a bad name or path."""
  name = str(config_value(config_data, "name", "cifar10")).strip()
  path = str(config_value(config_data, "path", "")).strip()
  if path:
    # The path is the more specific choice: a smoke config's 'synthetic'
    # (or any name) then only labels the data, as 'folder' does.
    return "folder"
  if name == "folder":
    raise DataError(
        "config.data.name is folder but config.data.path is empty; set "
        "config.data.path to an image-folder root (<root>/{train,test}/"
        "<class>/<image>) or a .tar.gz of one."
    )
  if name not in SOURCES:
    raise DataError(
        f"config.data.name = {name!r} is not valid; choose one "
        f'of {", ".join(SOURCES.names())}, or set '
        "config.data.path to an image folder or archive"
    )
  return name


def source_info(config_data: Any) -> SourceInfo:
  """Describes the data of `config_data` without loading it.

  Cheap enough to call before compiling: it imports no TensorFlow and
  decodes no image; for a folder it lists <path>/train (and with
  config.data.image_size 0 reads one image header).

  Args:
    config_data: `config.data` (ConfigDict, mapping or attribute object).

  Returns:
    The SourceInfo.

  Raises:
    DataError: for a config `load_dataset` or `imagenet_iterator` would
      refuse by name or path: an unknown name, a missing path, a file that
      is not an archive, or a bad integer key.
  """
  key = _source_name(config_data)
  source = SOURCES.get(key)
  if key == "folder":
    name = folder.label(config_data, folder.resolve_path(config_data))
  else:
    name = str(config_value(config_data, "name", "cifar10")).strip()
  if source.streams:
    eval_split = source.splits[1]
  else:
    held_out = config_int(config_data, "validation_split", 0)
    eval_split = "validation" if held_out else "test"
  return SourceInfo(
      name=name,
      source=key,
      streams=source.streams,
      num_classes=source.num_classes(config_data),
      image_shape=source.image_shape(config_data),
      eval_split=eval_split,
      splits=source.splits,
  )


def load_dataset(config_data: Any, *, seed: int = 0) -> Dataset:
  """Loads the dataset described by `config_data` into host memory.

  Config keys (missing keys take the defaults shown):
    name: a SOURCES name ('cifar10'). With a non-empty `path` it is only a
      label ('folder', 'cifar10', ...).
    path: image-folder root or a `.tar.gz` of one (''). Used when non-empty.
    tfds_data_dir: TFDS data directory for 'cifar10'/'cifar100': set, they
      load through tensorflow-datasets; '' (the default), from the
      canonical binary archive of Krizhevsky's site, downloaded once into
      `download_dir`.
    download_dir: where downloaded archives are kept ('' =
      `$RESFLAX_CACHE/downloads` or `~/.cache/resflax/downloads`).
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
    DataError: for anything the user can fix, including a streamed source
      (ImageNet without config.data.path); the message names the file,
      folder or config key. Raised before any cache entry is written.
  """
  normalization = str(config_value(config_data, "normalization", "pixel_mean"))
  choose(NORMALIZATIONS, "normalization", normalization)
  validation_split = config_int(config_data, "validation_split", 0)
  max_train = config_int(config_data, "max_train_images", 0)
  max_test = config_int(config_data, "max_test_images", 0)
  key = _source_name(config_data)
  source = SOURCES.get(key)
  if source.streams:
    raise DataError(
        f"config.data.name = {key} does not fit in host memory, so "
        "load_dataset cannot load it; stream it with "
        "resflax.data.imagenet_iterator(config.data, split, batch_size, "
        "seed=..., process_index=..., process_count=...) instead (or set "
        "config.data.path to an image folder of it)."
    )
  raw = source.load(config_data, seed)
  return finish(
      raw,
      normalization=normalization,
      validation_split=validation_split,
      max_train=max_train,
      max_test=max_test,
  )
