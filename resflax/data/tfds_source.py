"""CIFAR-10/100 through tensorflow-datasets, and what the TFDS sources share.

CIFAR goes through TFDS only when ``config.data.tfds_data_dir`` is set;
without it, it is read from the canonical archive (:mod:`resflax.data.cifar`).

TensorFlow and tensorflow-datasets are imported inside the functions that
need them: they cost seconds and GPU memory that folder and synthetic data
do not need, and a run on those must work without them installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resflax.data.base import Raw, config_value
from resflax.errors import DataError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def tfds_data_dir(config_data: Any) -> str | None:
  """Validated `config.data.tfds_data_dir`, or None for TFDS's default."""
  data_dir = str(config_value(config_data, "tfds_data_dir", "")).strip()
  if not data_dir:
    return None
  expanded = Path(data_dir).expanduser()
  if not expanded.is_dir():
    raise DataError(
        f"config.data.tfds_data_dir = {data_dir!r}: {expanded} is not a "
        "directory. Set config.data.tfds_data_dir to the directory holding "
        "prepared TFDS datasets (or leave it empty for TFDS's default), or "
        "set config.data.path to an image-folder tree or .tar.gz."
    )
  return str(expanded)


def import_tensorflow() -> Any:
  """Imports TensorFlow with GPUs hidden; returns the module.

  TF only decodes and batches here. Left alone it reserves nearly all GPU
  memory on first use, which the JAX process needs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices; too late.
    pass
  return tf


def load_cifar(name: str, config_data: Any, seed: int) -> Raw:
  """Loads TFDS dataset `name` ('cifar10' or 'cifar100') into memory.

  Args:
    name: The TFDS name.
    config_data: `config.data`; uses `tfds_data_dir` (set, or the archive
      source is used instead) and `tfds_download`.
    seed: Unused: CIFAR does not depend on the run's seed.

  Returns:
    The full train and test splits.

  Raises:
    DataError: if the dataset is neither prepared nor downloadable.
  """
  del seed
  data_dir = tfds_data_dir(config_data)
  download = bool(config_value(config_data, "tfds_download", True))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = (
      data_dir
      or os.environ.get("TFDS_DATA_DIR")
      or str(tfds.core.constants.DATA_DIR)
  )
  try:
    if download or tfds.builder(name, data_dir=data_dir).is_prepared():
      # Loading will import TensorFlow; a failing lookup does not need it.
      import_tensorflow()
    (train, test), info = tfds.load(
        name,
        split=["train", "test"],
        batch_size=-1,
        as_supervised=True,
        data_dir=data_dir,
        download=download,
        with_info=True,
    )
    train_images, train_labels = tfds.as_numpy(train)
    test_images, test_labels = tfds.as_numpy(test)
  except Exception as e:  # TFDS raises AssertionError, OSError, ImportError...
    raise DataError(
        f"could not load TFDS dataset {name!r}: it is not prepared in "
        f"{where} and could not be downloaded ({type(e).__name__}: {e}). "
        f"Prepare it (e.g. `tfds build {name} --data_dir=DIR`) and set "
        "config.data.tfds_data_dir to DIR, or set config.data.path to an "
        "image-folder tree or .tar.gz of it."
    ) from e
  names = tuple(info.features["label"].names)
  if name == "cifar10" and names == tuple(str(i) for i in range(10)):
    names = CIFAR10_CLASSES  # TFDS fills real names in only when preparing.
  return Raw(
      name,
      len(names),
      names,
      np.asarray(train_images, np.uint8),
      np.asarray(train_labels, np.int32),
      np.asarray(test_images, np.uint8),
      np.asarray(test_labels, np.int32),
      source=f"TFDS {name}",
  )
