"""Synthetic data for smoke tests: class-coloured noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from resflax.data.base import Raw, config_int


def image_size(config_data: Any) -> int:
  """Side of the square synthetic images (config.data.image_size)."""
  return config_int(config_data, "image_size", 32, minimum=1)


def num_classes(config_data: Any) -> int:
  """Number of synthetic classes (config.data.num_classes)."""
  return config_int(config_data, "num_classes", 10, minimum=2)


def load_synthetic(config_data: Any, seed: int) -> Raw:
  """Class-coloured noise: learnable in a few steps, deterministic in seed."""
  num_train = config_int(config_data, "synthetic_train_size", 1024, minimum=1)
  num_test = config_int(config_data, "synthetic_test_size", 256, minimum=1)
  size = image_size(config_data)
  classes = num_classes(config_data)
  # Each class gets a mean colour; per-pixel noise (sd 32) hides it in any
  # single pixel, but a global average pool recovers it, so a tiny ResNet
  # beats chance within a few steps, which is what smoke tests check.
  colours = np.random.default_rng([seed, 0]).uniform(48, 208, (classes, 3))

  def make(count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(count) % classes).astype(np.int32)
    images = np.empty((count, size, size, 3), np.uint8)
    for start in range(0, count, 2048):  # bounds the float32 scratch memory
      chunk = labels[start : start + 2048]
      noise = rng.standard_normal((len(chunk), size, size, 3), np.float32)
      pixels = colours[chunk][:, None, None, :] + 32.0 * noise
      images[start : start + len(chunk)] = np.clip(np.rint(pixels), 0, 255)
    return images, labels

  train_images, train_labels = make(num_train, 1)
  test_images, test_labels = make(num_test, 2)
  return Raw(
      "synthetic",
      classes,
      None,
      train_images,
      train_labels,
      test_images,
      test_labels,
      source=f"class-coloured noise, seed {seed}",
  )
