"""Datasets: loading on the host, sampling and augmentation on the device.

This package is the only place in resflax that knows where images come from.

* Sources (:mod:`~resflax.data.sources`): :data:`SOURCES` maps
  ``config.data.name`` to how it is read. :func:`source_info` says what a
  config's data is (classes, image shape, streamed or in memory) without
  loading it; :func:`load_dataset` loads an in-memory source (CIFAR-10/100
  from their canonical archives, downloaded once by :mod:`download`, or
  through TFDS; synthetic data; an image folder or a ``.tar.gz`` of one)
  into a :class:`Dataset`; :func:`imagenet_iterator` streams ImageNet, which
  does not fit in memory.
* Device side (:mod:`~resflax.data.pipeline`): :func:`normalize`,
  :func:`augment` and :func:`sample_batch_indices` run inside the compiled
  step; :func:`eval_batches` lays out an evaluation split as fixed-shape
  batches; :func:`shard_for_process` gives each host its part.

The device-side names are imported on first use: importing this package
loads numpy and Pillow only, so the worker processes that decode images
(:mod:`~resflax.data.decode`), which import it, start without paying for
JAX. TensorFlow is imported only by the TFDS and ImageNet sources.
"""

import importlib
from typing import Any

from resflax.data.base import NORMALIZATIONS, Dataset, balanced_sample
from resflax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_iterator
from resflax.data.sources import (
    SOURCES,
    Source,
    SourceInfo,
    load_dataset,
    source_info,
)
from resflax.data.tfds_source import CIFAR10_CLASSES
from resflax.errors import DataError

_PIPELINE = (
    "EvalLayout",
    "augment",
    "eval_batches",
    "normalize",
    "sample_batch_indices",
    "shard_for_process",
)

__all__ = [
    "CIFAR10_CLASSES",
    "DataError",
    "Dataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "SOURCES",
    "Source",
    "SourceInfo",
    "balanced_sample",
    "imagenet_iterator",
    "load_dataset",
    "source_info",
    "EvalLayout",
    "augment",
    "eval_batches",
    "normalize",
    "sample_batch_indices",
    "shard_for_process",
]


def __getattr__(name: str) -> Any:
  if name in _PIPELINE:
    return getattr(importlib.import_module("resflax.data.pipeline"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_PIPELINE))
