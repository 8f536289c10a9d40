"""Tests for resflax.data's sources: registry, TFDS, ImageNet, synthetic."""

import jax
import numpy as np
import pytest
from helpers import assert_data_error
from helpers import data_config as make_config

from resflax import data

# ---------------------------------------------------------------------------
# Config errors, TFDS and ImageNet.
# ---------------------------------------------------------------------------


def test_error_config_values():
  assert_data_error(make_config(name="mnist"), "mnist", "cifar10")
  assert_data_error(make_config(name="imagenet2012"), "imagenet_iterator")
  assert_data_error(
      make_config(name="synthetic", normalization="zca"),
      "config.data.normalization",
  )
  assert_data_error(
      make_config(name="synthetic", max_train_images=-1),
      "config.data.max_train_images",
  )


def test_error_tfds_data_dir_missing(tmp_path):
  missing = tmp_path / "no_tfds"
  assert_data_error(
      make_config(name="cifar10", tfds_data_dir=str(missing)),
      missing,
      "config.data.tfds_data_dir",
  )


def test_error_tfds_not_prepared(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  # No download: whether one is attempted must not depend on the network.
  error = assert_data_error(
      make_config(
          name="cifar10", tfds_data_dir=str(empty), tfds_download=False
      ),
      empty,
      "config.data.tfds_data_dir",
      "cifar10",
  )
  assert error.__cause__ is not None


def test_tfds_cifar_glue(monkeypatch, tmp_path):
  """The TFDS path converts dtypes and names without needing real data.

  CIFAR goes through TFDS only with config.data.tfds_data_dir set (without
  it, the canonical archive is downloaded: tests/test_download.py).
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)

  def fake_load(
      name, split, batch_size, as_supervised, data_dir, download, with_info
  ):
    assert (name, split, batch_size, as_supervised, with_info) == (
        "cifar10",
        ["train", "test"],
        -1,
        True,
        True,
    )
    splits = [
        (
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            np.arange(n, dtype=np.int64) % 10,
        )
        for n in (30, 20)
    ]
    label = type("Label", (), {"names": [str(i) for i in range(10)]})
    info = type("Info", (), {"features": {"label": label}})
    return splits, info

  monkeypatch.setattr(tfds, "load", fake_load)
  monkeypatch.setattr(tfds, "as_numpy", lambda x: x)
  # tfds_download=False and nothing prepared: TensorFlow is not imported.
  ds = data.load_dataset(
      make_config(
          name="cifar10",
          validation_split=5,
          tfds_data_dir=str(tmp_path),
          tfds_download=False,
      )
  )
  assert ds.class_names == data.CIFAR10_CLASSES
  assert (ds.num_train, ds.num_eval, ds.num_test) == (25, 5, 20)
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.summary().startswith("cifar10 from TFDS cifar10: 25 train, ")


@pytest.mark.slow
def test_imagenet_iterator_with_mock_data():
  """Runs the tf.data pipeline on tfds.testing.mock_data (imports TF)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = make_config(name="imagenet2012", image_size=64)
  with tfds.testing.mock_data(num_examples=10):
    train = data.imagenet_iterator(config, "train", 4, seed=1)
    batch = next(train)
    assert batch["image"].shape == (4, 64, 64, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    again = next(data.imagenet_iterator(config, "train", 4, seed=1))
    np.testing.assert_array_equal(again["image"], batch["image"])
    # mock_data ignores sub-splits, so each host sees all 10 examples here.
    batches = list(
        data.imagenet_iterator(
            config, "validation", 3, process_index=1, process_count=2
        )
    )
    assert [b["mask"].sum() for b in batches] == [3, 3, 3, 1]
    assert all(b["image"].shape == (3, 64, 64, 3) for b in batches)
    assert (batches[-1]["image"][1:] == 0).all()
  with pytest.raises(data.DataError, match="config.data.tfds_data_dir"):
    data.imagenet_iterator(make_config(name="imagenet2012"), "validation", 3)


# ---------------------------------------------------------------------------
# Synthetic data.
# ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable():
  config = make_config(
      name="synthetic",
      synthetic_train_size=200,
      synthetic_test_size=100,
      num_classes=5,
  )
  ds = data.load_dataset(config, seed=3)
  assert ds.train_images.shape == (200, 32, 32, 3)
  assert ds.test_images.dtype == np.uint8 and ds.test_labels.dtype == np.int32
  assert ds.num_classes == 5 and ds.class_names is None
  assert np.bincount(ds.train_labels).tolist() == [40] * 5
  same = data.load_dataset(config, seed=3)
  np.testing.assert_array_equal(same.train_images, ds.train_images)
  np.testing.assert_array_equal(same.test_labels, ds.test_labels)
  other = data.load_dataset(config, seed=4)
  assert not np.array_equal(other.train_images, ds.train_images)
  # Nearest class-mean colour classifies the test set: there is a signal.
  colour = lambda x: x.reshape(len(x), -1, 3).mean(axis=1)
  centroids = np.stack(
      [colour(ds.train_images)[ds.train_labels == k].mean(0) for k in range(5)]
  )
  distances = ((colour(ds.test_images)[:, None] - centroids) ** 2).sum(-1)
  assert (distances.argmin(1) == ds.test_labels).mean() > 0.9


def test_synthetic_with_validation_split():
  ds = data.load_dataset(make_config(name="synthetic", validation_split=16))
  assert (ds.num_train, ds.num_eval, ds.num_test) == (48, 16, 32)


# ---------------------------------------------------------------------------
# The source registry and what is known before loading.
# ---------------------------------------------------------------------------


def test_source_info_of_each_registered_source():
  expected = {
      "cifar10": (10, (32, 32, 3), False, "test", ("train", "test")),
      "cifar100": (100, (32, 32, 3), False, "test", ("train", "test")),
      "synthetic": (7, (16, 16, 3), False, "test", ("train", "test")),
      "imagenet2012": (
          1000,
          (16, 16, 3),
          True,
          "validation",
          ("train", "validation"),
      ),
  }
  assert set(expected) | {"folder"} == set(data.SOURCES.names())
  for name, (classes, shape, streams, eval_split, splits) in expected.items():
    info = data.source_info(
        make_config(name=name, num_classes=7, image_size=16)
    )
    assert (info.name, info.source) == (name, name)
    assert (
        info.num_classes,
        info.image_shape,
        info.streams,
        info.eval_split,
        info.splits,
    ) == (classes, shape, streams, eval_split, splits)
  held_out = data.source_info(make_config(name="cifar10", validation_split=5))
  assert held_out.eval_split == "validation"
  # ImageNet's side defaults to 224 when the config leaves it out.
  assert data.source_info({"name": "imagenet2012"}).image_shape == (224, 224, 3)


def test_source_info_agrees_with_synthetic_load():
  config = make_config(
      name="synthetic", num_classes=4, image_size=8, validation_split=8
  )
  info = data.source_info(config)
  ds = data.load_dataset(config)
  assert (info.name, info.num_classes, info.image_shape, info.eval_split) == (
      ds.name,
      ds.num_classes,
      ds.image_shape,
      ds.eval_split,
  )


def test_source_info_errors_name_the_key():
  with pytest.raises(data.DataError) as info:
    data.source_info(make_config(name="mnist"))
  message = str(info.value)
  assert "config.data.name" in message and "'mnist'" in message
  for name in data.SOURCES.names():
    assert name in message
  with pytest.raises(data.DataError, match="config.data.image_size"):
    data.source_info({"name": "synthetic", "image_size": "big"})


def test_summary_of_synthetic_data_is_one_line():
  ds = data.load_dataset(
      make_config(
          name="synthetic", num_classes=4, image_size=8, validation_split=4
      ),
      seed=2,
  )
  assert ds.summary() == (
      "synthetic from class-coloured noise, seed 2: "
      "60 train, 4 eval (validation), 32 test images; "
      "4 classes; 8x8x3"
  )
  assert ds.cache_path is None


# ---------------------------------------------------------------------------
# Class-balanced samples.
# ---------------------------------------------------------------------------


def test_balanced_sample_covers_classes_equally():
  labels = np.repeat(np.arange(10), 50)  # Class-ordered, as a folder is.
  sample = data.balanced_sample(labels, 30, 0)
  assert sample.shape == (30,) and len(np.unique(sample)) == 30
  assert sample.min() >= 0 and sample.max() < 500
  assert np.bincount(labels[sample], minlength=10).tolist() == [3] * 10
  # Any count: the class shares differ by at most one.
  counts = np.bincount(
      labels[data.balanced_sample(labels, 37, 1)], minlength=10
  )
  assert counts.sum() == 37 and counts.max() - counts.min() == 1
  # A class with too few examples gives all it has.
  uneven = np.array([0] * 2 + [1] * 50 + [2] * 50)
  assert np.bincount(uneven[data.balanced_sample(uneven, 30, 0)]).tolist() == [
      2,
      14,
      14,
  ]


def test_balanced_sample_is_random_in_its_seed_or_key():
  labels = np.repeat(np.arange(4), 100)
  by_seed = [data.balanced_sample(labels, 20, seed) for seed in range(3)]
  np.testing.assert_array_equal(by_seed[0], data.balanced_sample(labels, 20, 0))
  assert not np.array_equal(np.sort(by_seed[0]), np.sort(by_seed[1]))
  assert not np.array_equal(np.sort(by_seed[1]), np.sort(by_seed[2]))
  typed, raw = jax.random.key(3), jax.random.PRNGKey(3)
  from_key = data.balanced_sample(labels, 20, typed)
  np.testing.assert_array_equal(from_key, data.balanced_sample(labels, 20, raw))
  assert not np.array_equal(
      np.sort(from_key),
      np.sort(data.balanced_sample(labels, 20, jax.random.key(4))),
  )
  assert np.bincount(labels[from_key]).tolist() == [5] * 4
  # Not class-ordered: its first half already holds more than one class.
  assert len(set(labels[from_key[:10]])) > 1


def test_balanced_sample_rejects_bad_counts():
  for count in (0, 11):
    with pytest.raises(ValueError, match="count"):
      data.balanced_sample(np.arange(10), count, 0)


def test_a_path_overrides_a_smoke_configs_synthetic_name(tmp_path):
  # `:smoke --config.data.path=DIR` trains on DIR: the path is the choice.
  for split, n in (("train", 2), ("test", 1)):
    for cls in ("cat", "dog"):
      folder = tmp_path / "mini" / split / cls
      folder.mkdir(parents=True)
      for i in range(n):
        from PIL import Image  # pylint: disable=g-import-not-at-top

        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(folder / f"{i}.png")
  config = make_config(name="synthetic", path=str(tmp_path / "mini"))
  info = data.source_info(config)
  assert (info.source, info.name, info.num_classes) == ("folder", "mini", 2)
  assert data.load_dataset(config).train_images.shape == (4, 32, 32, 3)
