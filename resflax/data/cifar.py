"""CIFAR-10/100 from the canonical archives of Krizhevsky's site.

The archives in their *binary* format (no pickle is ever loaded) are
downloaded once into the download cache (:mod:`~resflax.data.download`) and
read straight from the ``.tar.gz`` with ``tarfile`` and numpy: no
TensorFlow, no tensorflow-datasets. Each record is the label byte(s)
followed by the 3072 bytes of a 32x32 image, channel by channel (CHW).

``ARCHIVES`` holds each dataset's URL, byte size and sha256 (as listed by
tensorflow-datasets' ``url_checksums/cifar10.txt`` and ``cifar100.txt``).
``$RESFLAX_CIFAR_URL_BASE`` replaces ``URL_BASE`` for a private mirror.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from resflax.data import download
from resflax.data.base import Raw
from resflax.errors import DataError

URL_BASE = "https://www.cs.toronto.edu/~kriz/"
URL_BASE_ENV = "RESFLAX_CIFAR_URL_BASE"

# config.data.name -> the archive. Tests replace entries to serve their own.
ARCHIVES: dict[str, download.Archive] = {
    "cifar10": download.Archive(
        URL_BASE + "cifar-10-binary.tar.gz",
        170052171,
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    ),
    "cifar100": download.Archive(
        URL_BASE + "cifar-100-binary.tar.gz",
        168513733,
        "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
    ),
}

_IMAGE_BYTES = 32 * 32 * 3


class Layout(NamedTuple):
  """Where a dataset's records and class names are in its archive.

  Attributes:
    folder: The archive's top folder, with a trailing '/'.
    train: Files of the training split, in order.
    test: Files of the test split.
    label_bytes: Bytes before each image; the label used is the last one
      (CIFAR-100 records are coarse label, fine label, image).
    names: The file of class names, one per line, in label order.
    num_classes: Number of classes.
  """

  folder: str
  train: tuple[str, ...]
  test: tuple[str, ...]
  label_bytes: int
  names: str
  num_classes: int


LAYOUTS = {
    "cifar10": Layout(
        "cifar-10-batches-bin/",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        "batches.meta.txt",
        10,
    ),
    "cifar100": Layout(
        "cifar-100-binary/",
        ("train.bin",),
        ("test.bin",),
        2,
        "fine_label_names.txt",
        100,
    ),
}


def archive(name: str) -> download.Archive:
  """The archive of `name` ('cifar10' or 'cifar100'), mirror applied."""
  entry = ARCHIVES[name]
  base = os.environ.get(URL_BASE_ENV, "").strip()
  if base and entry.url.startswith(URL_BASE):
    entry = dataclasses.replace(
        entry, url=base.rstrip("/") + "/" + entry.url[len(URL_BASE) :]
    )
  return entry


def load_cifar(name: str, config_data: Any, seed: int) -> Raw:
  """Loads CIFAR `name` from its archive, downloading it the first time.

  Args:
    name: 'cifar10' or 'cifar100'.
    config_data: `config.data`; uses `download_dir`.
    seed: Unused: CIFAR does not depend on the run's seed.

  Returns:
    The full train and test splits: NHWC uint8 images, int32 labels (the
    fine labels of CIFAR-100) and the class names of the archive.

  Raises:
    DataError: one line, if the archive can neither be found nor downloaded,
      or is not a CIFAR binary archive.
  """
  del seed
  path = download.fetch(
      archive(name),
      download.download_dir(config_data),
      otherwise=(
          "set config.data.path to an image-folder tree or .tar.gz "
          f"of {name}"
      ),
  )
  return read_archive(path, name)


def read_archive(path: Path, name: str) -> Raw:
  """Reads the binary-format archive of CIFAR `name` at `path`.

  Args:
    path: A `cifar-10-binary.tar.gz` or `cifar-100-binary.tar.gz`.
    name: 'cifar10' or 'cifar100'.

  Returns:
    The Raw arrays, as `load_cifar` describes.

  Raises:
    DataError: naming `path`, if a file is missing, damaged or malformed.
  """
  layout = LAYOUTS[name]
  wanted = {
      layout.folder + f for f in layout.train + layout.test + (layout.names,)
  }
  found = {}
  try:
    # Streamed in order: gzip cannot seek, so one pass reads everything.
    with tarfile.open(path, "r:gz") as tar:
      for member in tar:
        if member.name in wanted and member.isfile():
          found[member.name[len(layout.folder) :]] = tar.extractfile(
              member
          ).read()
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(
        f"cannot read {path}: {type(e).__name__}: {e}; delete it "
        "to download it again"
    ) from None
  missing = sorted(wanted - {layout.folder + f for f in found})
  if missing:
    raise DataError(
        f"{path} is not the CIFAR binary archive of {name}: it "
        f'has no {", ".join(missing)}'
    )
  names = tuple(
      line.strip()
      for line in found[layout.names].decode("utf-8", "replace").splitlines()
      if line.strip()
  )
  if len(names) != layout.num_classes:
    raise DataError(
        f"{path}: {layout.folder}{layout.names} lists "
        f"{len(names)} class names, expected {layout.num_classes}"
    )
  train = _records(path, layout, layout.train, found)
  test = _records(path, layout, layout.test, found)
  return Raw(
      name, layout.num_classes, names, *train, *test, source=f"archive {path}"
  )


def _records(
    path: Path, layout: Layout, files: tuple[str, ...], found: dict[str, bytes]
) -> tuple[np.ndarray, np.ndarray]:
  """(N, 32, 32, 3) uint8 images and (N,) int32 labels of record files."""
  size = layout.label_bytes + _IMAGE_BYTES
  for file in files:
    if len(found[file]) % size:
      raise DataError(
          f"{path}: {layout.folder}{file} has "
          f"{len(found[file])} bytes, not a multiple of the "
          f"{size}-byte record"
      )
  records = [np.frombuffer(found[f], np.uint8).reshape(-1, size) for f in files]
  count = sum(len(r) for r in records)
  images = np.empty((count, 32, 32, 3), np.uint8)
  labels = np.empty((count,), np.int32)
  at = 0
  for r in records:
    # CHW bytes to HWC pixels, written into place without an extra copy.
    images[at : at + len(r)] = (
        r[:, layout.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    labels[at : at + len(r)] = r[:, layout.label_bytes - 1]
    at += len(r)
  if count and labels.max() >= layout.num_classes:
    raise DataError(
        f"{path}: label {labels.max()} is out of range for "
        f"{layout.num_classes} classes"
    )
  return images, labels
