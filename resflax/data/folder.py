"""Image-folder trees and tar archives of them.

Layout: ``<root>/<split>/<class>/<image>`` with splits ``train`` and
``test``; sorted class folder names give the label order. A tar archive of
such a tree (optionally inside one wrapping folder) is read as a stream,
without unpacking it (see :func:`gather_archive` for why). Decoded arrays go
through the cache of :mod:`resflax.data.cache`, so only the first load
decodes. TensorFlow is never imported here.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from resflax.data import cache as cache_lib
from resflax.data import decode
from resflax.data.base import (
    Raw,
    check_validation_split,
    config_int,
    config_value,
)
from resflax.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}
)
ARCHIVE_SUFFIXES = (
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
    ".tar",
)
SPLITS = ("train", "test")

# A layout before validation: split -> class -> [(file name, source, stat)].
# `source` is a path (folders) or the file's bytes (archives); `stat` is
# (size, mtime_ns) for folders, used in the cache key, and None for archives.
Tree = dict[str, dict[str, list[tuple[str, Any, tuple[int, int] | None]]]]


class Split(NamedTuple):
  """One validated split of an image-folder layout."""

  classes: tuple[str, ...]
  sources: list[Any]  # Paths or bytes, in label-then-file-name order.
  names: list[str]  # How each image is named in error messages.
  labels: np.ndarray  # int32, one per image.
  listing: list[tuple[str, int, int]]  # (relative path, size, mtime_ns).


# ----------------------------------------------------------------------------
# What config.data.path names.
# ----------------------------------------------------------------------------


def archive_stem(filename: str) -> str | None:
  """Name of an archive without its suffix, or None if not an archive."""
  lower = filename.lower()
  for suffix in ARCHIVE_SUFFIXES:
    if lower.endswith(suffix):
      return filename[: -len(suffix)]
  return None


def resolve_path(config_data: Any) -> Path:
  """The absolute folder or archive named by config.data.path.

  Raises:
    DataError: if it does not exist or is a file but not a tar archive.
  """
  path_str = str(config_value(config_data, "path", "")).strip()
  path = Path(path_str).expanduser()
  if not path.exists():
    raise DataError(
        f"config.data.path = {path_str!r}: {path.absolute()} does not exist. "
        "Set config.data.path to an image-folder root (<root>/{train,test}/"
        "<class>/<image>) or a .tar.gz of one."
    )
  path = path.resolve()
  if not path.is_dir() and archive_stem(path.name) is None:
    raise DataError(
        f"config.data.path = {path_str!r} is a file but not a tar archive "
        f'({", ".join(ARCHIVE_SUFFIXES)}); point it at an image-folder root '
        "or an archive of one."
    )
  return path


def label(config_data: Any, path: Path) -> str:
  """config.data.name, or for 'folder' (or 'synthetic', which a path
  overrides) a name made from the path."""
  name = str(config_value(config_data, "name", "cifar10")).strip()
  if name not in ("", "folder", "synthetic"):
    return name
  return cache_lib.slug(path.name if path.is_dir() else archive_stem(path.name))


def num_classes(config_data: Any) -> int | None:
  """Class folders under <path>/train, or None for an archive.

  An archive is compressed as one stream: counting its classes would mean
  reading all of it, which `load_dataset` does anyway.
  """
  train = resolve_path(config_data) / "train"
  if not train.is_dir():
    return None  # load_dataset names the missing folder.
  with os.scandir(train) as entries:
    return sum(1 for e in entries if not e.name.startswith(".") and e.is_dir())


def image_shape(config_data: Any) -> tuple[int, int, int] | None:
  """(S, S, 3) for config.data.image_size S, which the load checks.

  With image_size 0 (any size) a folder's shape is read from the header of
  its first training image; an archive's is None, like its `num_classes`.
  """
  size = config_int(config_data, "image_size", 32)
  if size:
    return (size, size, 3)
  train = resolve_path(config_data) / "train"
  if not train.is_dir():
    return None
  for class_dir in sorted(
      p for p in train.iterdir() if not p.name.startswith(".") and p.is_dir()
  ):
    images = sorted(
        p for p in class_dir.iterdir() if _is_image_name(p.name) and p.is_file()
    )
    if images:
      width, height = decode.image_size(images[0])
      return (height, width, 3)
  return None  # load_dataset names the empty folder.


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------


def load_path(config_data: Any, seed: int) -> Raw:
  """Loads the image-folder tree or archive named by config.data.path.

  Args:
    config_data: `config.data`; uses `name` (a label unless 'folder'),
      `path`, `image_size`, `cache_dir` and `validation_split`, which is
      checked before anything is decoded or cached.
    seed: Unused: the images do not depend on the run's seed.

  Returns:
    The full train and test splits, with the cache file that was used.
  """
  del seed
  path = resolve_path(config_data)
  image_size = config_int(config_data, "image_size", 32)
  validation_split = config_int(config_data, "validation_split", 0)
  directory = cache_lib.cache_dir(config_data)
  name = label(config_data, path)
  if path.is_dir():
    raw = _load_folder(path, name, directory, image_size, validation_split)
    source = f"folder {path}"
  else:
    raw = _load_archive(path, name, directory, image_size, validation_split)
    source = f"archive {path}"
  height, width = raw.train_images.shape[1:3]
  if image_size and (height, width) != (image_size, image_size):
    raise DataError(
        f"images of {path} are {width}x{height} but config.data.image_size "
        f"is {image_size}; set config.data.image_size to match the images."
    )
  return raw._replace(name=name, source=source)


def _load_folder(
    root: Path,
    name: str,
    directory: Path,
    image_size: int,
    validation_split: int,
) -> Raw:
  """Loads an image-folder tree, via the decoded-array cache."""
  where = lambda rel: str(root / rel)
  train, test = validate_layout(gather_folder(root), where)
  check_validation_split(len(train.sources), validation_split)
  cache = cache_lib.folder_cache_path(
      directory, root, train.listing + test.listing
  )
  raw = cache_lib.read_cache(cache)
  if raw is None:
    raw = _decode_layout(train, test, name, image_size, where)
    if cache_lib.write_cache(cache, raw):
      raw = raw._replace(cache_path=str(cache))
  return raw


def _load_archive(
    archive: Path,
    name: str,
    directory: Path,
    image_size: int,
    validation_split: int,
) -> Raw:
  """Loads a tar archive of an image-folder tree, via the cache."""
  cache = cache_lib.archive_cache_path(
      directory, archive, archive_stem(archive.name)
  )
  raw = cache_lib.read_cache(cache)
  if raw is None:
    tree, wrapper = gather_archive(archive)
    where = lambda rel: f"'{wrapper}{rel}' in archive {archive}"
    train, test = validate_layout(tree, where)
    check_validation_split(len(train.sources), validation_split)
    raw = _decode_layout(train, test, name, image_size, where)
    if cache_lib.write_cache(cache, raw):
      raw = raw._replace(cache_path=str(cache))
  return raw


def _decode_layout(
    train: Split,
    test: Split,
    name: str,
    image_size: int,
    where: Callable[[str], str],
) -> Raw:
  """Decodes validated splits into arrays (no caching)."""
  reference = train.names[0]
  first = decode.decode_image(train.sources[0], reference, None, reference)
  shape = first.shape[:2]
  if image_size and shape != (image_size, image_size):
    raise DataError(
        f'images of {where("train")} are {shape[1]}x{shape[0]} (e.g. '
        f"{reference}) but config.data.image_size is {image_size}; set "
        "config.data.image_size to match the images."
    )
  images = decode.decode_all(
      train.sources + test.sources, train.names + test.names, shape, reference
  )
  num_train = len(train.sources)
  return Raw(
      name,
      len(train.classes),
      train.classes,
      images[:num_train],
      train.labels,
      images[num_train:],
      test.labels,
  )


# ----------------------------------------------------------------------------
# Listing and checking a layout.
# ----------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
  # Hidden files are skipped: macOS and editors leave '._x.jpg' and similar
  # files that are not images.
  return (
      not name.startswith(".")
      and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
  )


def gather_folder(root: Path) -> Tree:
  """Lists `<root>/<split>/<class>/<image>` without opening any image."""
  tree: Tree = {}
  for split in SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      continue  # Reported by validate_layout.
    tree[split] = {}
    with os.scandir(split_dir) as class_entries:
      class_dirs = [
          e for e in class_entries if not e.name.startswith(".") and e.is_dir()
      ]
    for class_entry in class_dirs:
      files = []
      with os.scandir(class_entry.path) as entries:
        for entry in entries:
          if _is_image_name(entry.name) and entry.is_file():
            stat = entry.stat()
            files.append(
                (entry.name, entry.path, (stat.st_size, stat.st_mtime_ns))
            )
      tree[split][class_entry.name] = files
  return tree


def gather_archive(archive: Path) -> tuple[Tree, str]:
  """Reads every image of a tar archive into memory, keyed like a folder.

  The archive is streamed rather than unpacked: creating 60,000 small files
  costs far more than reading them from the stream once a disk is busy
  (every file is an open, a write and a close). Never writing members to
  disk also makes hostile member names ('../x', absolute paths, links)
  harmless.

  Returns:
    The layout, and the wrapping folder ('mydata/') or ''.
  """
  files: list[tuple[tuple[str, ...], bytes]] = []
  dirs: list[tuple[str, ...]] = []
  try:
    with tarfile.open(archive, mode="r|*") as tar:  # One sequential pass.
      for member in tar:
        parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
        if not parts or ".." in parts:
          continue
        if member.isdir():
          dirs.append(parts)
        elif member.isfile() and _is_image_name(parts[-1]):
          files.append((parts, tar.extractfile(member).read()))
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(
        f"cannot read archive {archive} (config.data.path): "
        f"{type(e).__name__}: {e}"
    ) from e
  # Accept one wrapping folder, as made by `tar czf x.tar.gz mydata/`.
  tops = {parts[0] for parts, _ in files} | {parts[0] for parts in dirs}
  prefix = 0
  wrapper = ""
  if not tops & set(SPLITS) and len(tops) == 1:
    prefix = 1
    wrapper = f"{next(iter(tops))}/"
  tree: Tree = {}
  for parts in dirs:
    parts = parts[prefix:]
    if len(parts) >= 1 and parts[0] in SPLITS:
      tree.setdefault(parts[0], {})
    if len(parts) == 2 and parts[0] in SPLITS and not parts[1].startswith("."):
      tree[parts[0]].setdefault(parts[1], [])
  for parts, data in files:
    parts = parts[prefix:]
    if len(parts) == 3 and parts[0] in SPLITS and not parts[1].startswith("."):
      split, cls, file_name = parts
      tree.setdefault(split, {}).setdefault(cls, []).append(
          (file_name, data, None)
      )
  return tree, wrapper


def validate_layout(
    tree: Tree, where: Callable[[str], str]
) -> tuple[Split, Split]:
  """Checks a gathered layout and orders it; `where('train/cat')` names it."""
  train, test = (_validate_split(tree, split, where) for split in SPLITS)
  if train.classes != test.classes:
    only_train = sorted(set(train.classes) - set(test.classes))
    only_test = sorted(set(test.classes) - set(train.classes))
    raise DataError(
        f'class folders of {where("train")} and {where("test")} differ: only '
        f"in train: {only_train}, only in test: {only_test}"
    )
  return train, test


def _validate_split(
    tree: Tree, split: str, where: Callable[[str], str]
) -> Split:
  classes = tree.get(split)
  if classes is None:
    raise DataError(
        f"split folder {where(split)} is missing: an image-folder dataset "
        "needs <root>/train/<class>/<image> and <root>/test/<class>/<image> "
        "(config.data.path)."
    )
  if not classes:
    raise DataError(f"split folder {where(split)} has no class folders")
  ordered = tuple(sorted(classes))  # Sorted names define the labels.
  sources, names, labels, listing = [], [], [], []
  for index, cls in enumerate(ordered):
    files = sorted(classes[cls], key=lambda item: item[0])
    if not files:
      raise DataError(
          f'class folder {where(f"{split}/{cls}")} (class {cls!r}) has no '
          f'images (looked for {", ".join(sorted(IMAGE_EXTENSIONS))} files)'
      )
    for file_name, source, stat in files:
      rel = f"{split}/{cls}/{file_name}"
      sources.append(source)
      names.append(where(rel))
      if stat is not None:
        listing.append((rel, *stat))
    labels.extend([index] * len(files))
  return Split(ordered, sources, names, np.asarray(labels, np.int32), listing)
