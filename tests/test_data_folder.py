"""Tests for image folders and archives: loading, caching, decoding, errors."""

import concurrent.futures
import json
import logging
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, assert_data_error, data_config
from PIL import Image

from resflax import data
from resflax.data import decode, folder

# Deliberately not in sorted order: labels must follow sorted names.
CLASSES = ("cat", "ant", "bee")
COLOURS = {
    "ant": (220, 20, 20),
    "bee": (20, 220, 20),
    "cat": (20, 20, 220),
    "dog": (120, 120, 120),
}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  """Every test gets its own empty cache, never the user's."""
  path = tmp_path / "cache"
  monkeypatch.setenv("RESFLAX_CACHE", str(path))
  return path


def make_config(**overrides):
  return data_config(**{"name": "folder", **overrides})


def image_id(image):
  """Recovers the id that make_tree writes into pixel (0, 0)."""
  return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def make_tree(
    root,
    train_per_class=4,
    test_per_class=2,
    classes=CLASSES,
    size=32,
    ext="png",
):
  """Writes <root>/{train,test}/<class>/<i>.<ext>; returns root.

  Images are the class colour with a unique id in pixel (0, 0) (exact for
  PNG), so tests can tell every image apart after loading.
  """
  next_id = 1
  for split, count in (("train", train_per_class), ("test", test_per_class)):
    for cls in classes:
      folder = root / split / cls
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = np.empty((size, size, 3), np.uint8)
        pixels[:] = COLOURS[cls]
        pixels[0, 0] = (next_id % 256, next_id // 256, 0)
        next_id += 1
        Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")
  return root


def files_in(path):
  return sorted(p for p in Path(path).rglob("*") if p.is_file())


def make_archive(tree_root, archive, wrap=None):
  """Tars tree_root's train/ and test/ (under `wrap`/); gzip for .gz names."""
  mode = "w:gz" if archive.name.endswith(".gz") else "w"
  with tarfile.open(archive, mode) as tar:
    for split in ("train", "test"):
      if (tree_root / split).exists():
        arcname = f"{wrap}/{split}" if wrap else split
        tar.add(tree_root / split, arcname=arcname)
  return archive


# ---------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------


def test_folder_labels_shapes_dtypes(tmp_path):
  root = make_tree(tmp_path / "mini")
  ds = data.load_dataset(make_config(path=str(root)))
  assert ds.class_names == ("ant", "bee", "cat")
  assert ds.num_classes == 3
  assert ds.name == "mini"
  assert ds.train_images.shape == (12, 32, 32, 3)
  assert ds.test_images.shape == (6, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.test_labels.dtype == np.int32
  assert ds.eval_split == "test"
  np.testing.assert_array_equal(ds.eval_images, ds.test_images)
  np.testing.assert_array_equal(ds.eval_labels, ds.test_labels)
  # Each image's colour says its class; the label must be its sorted index.
  for images, labels in (
      (ds.train_images, ds.train_labels),
      (ds.test_images, ds.test_labels),
  ):
    for image, label in zip(images, labels):
      assert tuple(image[16, 16]) == COLOURS[ds.class_names[label]]
  assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32
  # `name` other than 'folder' is kept as the label.
  assert (
      data.load_dataset(make_config(name="cifar10", path=str(root))).name
      == "cifar10"
  )


def test_folder_jpeg_and_grayscale_become_rgb(tmp_path):
  root = make_tree(tmp_path / "mini", ext="jpg")
  Image.new("L", (32, 32), 90).save(root / "train" / "ant" / "gray.png")
  ds = data.load_dataset(make_config(path=str(root)))
  assert ds.train_images.shape == (13, 32, 32, 3)
  gray = ds.train_images[ds.train_labels == 0][-1]
  assert (gray == 90).all()


def test_statistics_use_training_images_only(tmp_path):
  root = make_tree(tmp_path / "mini")
  for path in (root / "test").rglob("*.png"):  # Make test very different.
    Image.new("RGB", (32, 32), (255, 255, 255)).save(path)
  ds = data.load_dataset(make_config(path=str(root)))
  train = ds.train_images.astype(np.float64) / 255
  assert ds.mean.shape == (32, 32, 3)
  np.testing.assert_allclose(ds.mean, train.mean(axis=0), atol=1e-6)
  np.testing.assert_array_equal(ds.std, np.ones(3, np.float32))

  ds = data.load_dataset(
      make_config(path=str(root), normalization="channel_standardize")
  )
  assert ds.mean.shape == (3,) and ds.std.shape == (3,)
  np.testing.assert_allclose(ds.mean, train.mean(axis=(0, 1, 2)), atol=1e-6)
  np.testing.assert_allclose(ds.std, train.std(axis=(0, 1, 2)), atol=1e-6)
  normalized = np.asarray(data.normalize(ds.train_images, ds.mean, ds.std))
  np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_validation_split(tmp_path):
  root = make_tree(tmp_path / "mini", train_per_class=5)
  full = data.load_dataset(make_config(path=str(root)))
  ds = data.load_dataset(make_config(path=str(root), validation_split=4))
  assert ds.eval_split == "validation"
  assert ds.num_train == 11 and ds.num_eval == 4 and ds.num_test == 6
  train_ids = {image_id(x) for x in ds.train_images}
  eval_ids = {image_id(x) for x in ds.eval_images}
  assert not train_ids & eval_ids
  assert train_ids | eval_ids == {image_id(x) for x in full.train_images}
  np.testing.assert_array_equal(ds.test_images, full.test_images)
  for image, label in zip(ds.eval_images, ds.eval_labels):
    assert tuple(image[16, 16]) == COLOURS[ds.class_names[label]]
  # Statistics come from the 11 remaining training images only.
  np.testing.assert_allclose(
      ds.mean, ds.train_images.mean(axis=0, dtype=np.float64) / 255, atol=1e-6
  )
  # The held-out set is fixed (seed 0), whatever the run's seed.
  other = data.load_dataset(
      make_config(path=str(root), validation_split=4), seed=7
  )
  np.testing.assert_array_equal(other.eval_images, ds.eval_images)


def test_max_images_takes_balanced_fixed_subsets(tmp_path):
  root = make_tree(tmp_path / "mini", train_per_class=6, test_per_class=4)
  config = make_config(path=str(root), max_train_images=6, max_test_images=3)
  ds = data.load_dataset(config)
  assert np.bincount(ds.train_labels).tolist() == [2, 2, 2]
  assert np.bincount(ds.test_labels).tolist() == [1, 1, 1]
  assert np.bincount(ds.eval_labels).tolist() == [1, 1, 1]
  again = data.load_dataset(config, seed=3)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  np.testing.assert_allclose(
      ds.mean, ds.train_images.mean(axis=0, dtype=np.float64) / 255, atol=1e-6
  )


# ---------------------------------------------------------------------------
# Archives, the cache and the decoder processes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "mini"])
def test_archive_matches_folder_and_is_cached(
    tmp_path, cache_dir, monkeypatch, wrap
):
  root = make_tree(tmp_path / "mini")
  archive = make_archive(root, tmp_path / "mini-data.tar.gz", wrap=wrap)
  from_folder = data.load_dataset(
      make_config(path=str(root), cache_dir=str(tmp_path / "c"))
  )
  ds = data.load_dataset(make_config(path=str(archive)))
  assert ds.name == "mini-data"
  assert ds.class_names == from_folder.class_names
  np.testing.assert_array_equal(ds.train_images, from_folder.train_images)
  np.testing.assert_array_equal(ds.test_labels, from_folder.test_labels)
  # Nothing is unpacked: the cache holds just the decoded arrays.
  assert [p.suffix for p in files_in(cache_dir)] == [".npz"]

  def fail(*args, **kwargs):
    raise AssertionError("read the archive although the cache is valid")

  monkeypatch.setattr(folder, "gather_archive", fail)
  again = data.load_dataset(make_config(name="cifar10", path=str(archive)))
  assert again.name == "cifar10"
  np.testing.assert_array_equal(again.train_images, ds.train_images)


def test_archive_members_outside_the_tree_are_ignored(tmp_path):
  root = make_tree(tmp_path / "mini")
  archive = make_archive(root, tmp_path / "hostile.tar")
  with tarfile.open(archive, "a") as tar:
    for name in (
        "../escape.png",
        "/abs/train/ant/x.png",
        "train/ant/../../up.png",
        "train/ant/deep/er.png",
    ):
      tar.add(root / "train" / "ant" / "000.png", arcname=name)
  ds = data.load_dataset(make_config(path=str(archive)))
  assert ds.num_train == 12 and ds.num_test == 6
  assert not (tmp_path / "escape.png").exists()
  assert not (tmp_path / "up.png").exists()


def test_cache_hit_skips_decoding(tmp_path, cache_dir, monkeypatch):
  root = make_tree(tmp_path / "mini")
  first = data.load_dataset(make_config(path=str(root)))
  npz = files_in(cache_dir)
  assert len(npz) == 1 and npz[0].suffix == ".npz"  # No temp files left.
  assert (first.cache_path, first.cache_hit) == (str(npz[0]), False)

  def fail(*args, **kwargs):
    raise AssertionError("decoded although the cache is valid")

  monkeypatch.setattr(decode, "decode_image", fail)
  monkeypatch.setattr(decode, "decode_all", fail)
  second = data.load_dataset(make_config(path=str(root)))
  np.testing.assert_array_equal(second.train_images, first.train_images)
  np.testing.assert_array_equal(second.test_labels, first.test_labels)
  assert second.class_names == first.class_names
  assert (second.cache_path, second.cache_hit) == (str(npz[0]), True)

  # A changed file listing invalidates the cache.
  Image.new("RGB", (32, 32)).save(root / "train" / "ant" / "new.png")
  with pytest.raises(AssertionError, match="decoded although"):
    data.load_dataset(make_config(path=str(root)))


def test_cache_file_holds_the_arrays_in_its_documented_format(
    tmp_path, cache_dir
):
  """Caches written before the package split must keep loading."""
  root = make_tree(tmp_path / "mini")
  ds = data.load_dataset(make_config(name="folder", path=str(root)))
  (npz,) = files_in(cache_dir)
  assert npz.name.startswith("folder-mini-") and len(npz.stem) == 32
  with np.load(npz) as arrays:
    assert sorted(arrays.files) == sorted(
        [
            "name",
            "class_names",
            "train_images",
            "train_labels",
            "test_images",
            "test_labels",
        ]
    )
    assert str(arrays["name"]) == "mini"
    assert arrays["class_names"].tolist() == ["ant", "bee", "cat"]
    np.testing.assert_array_equal(arrays["train_images"], ds.train_images)
    np.testing.assert_array_equal(arrays["test_labels"], ds.test_labels)


def test_unreadable_cache_file_is_rebuilt(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  first = data.load_dataset(make_config(path=str(root)))
  (npz,) = files_in(cache_dir)
  npz.write_bytes(b"garbage")
  second = data.load_dataset(make_config(path=str(root)))
  np.testing.assert_array_equal(second.train_images, first.train_images)
  assert not second.cache_hit


def test_unwritable_cache_is_not_reported(tmp_path):
  root = make_tree(tmp_path / "mini")
  blocker = tmp_path / "file"
  blocker.write_text("a file where the cache folder should be")
  ds = data.load_dataset(
      make_config(path=str(root), cache_dir=str(blocker / "cache"))
  )
  assert ds.num_train == 12 and ds.cache_path is None


def test_cache_dir_from_config(tmp_path):
  root = make_tree(tmp_path / "mini")
  data.load_dataset(
      make_config(path=str(root), cache_dir=str(tmp_path / "elsewhere"))
  )
  assert len(files_in(tmp_path / "elsewhere")) == 1


class RecordingPool(concurrent.futures.ProcessPoolExecutor):
  """A real process pool that remembers what it was given."""

  futures = []

  def submit(self, fn, /, *args, **kwargs):
    future = super().submit(fn, *args, **kwargs)
    self.futures.append((fn, future))
    return future


def test_worker_processes_decode_like_this_process(tmp_path, monkeypatch):
  root = make_tree(tmp_path / "mini", ext="jpg")
  serial = data.load_dataset(
      make_config(path=str(root), cache_dir=str(tmp_path / "c1"))
  )
  monkeypatch.setattr(decode, "PARALLEL_MIN_FILES", 1)
  monkeypatch.setattr(decode, "num_decoders", lambda n: 3)
  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
  monkeypatch.setattr(RecordingPool, "futures", [])
  parallel = data.load_dataset(
      make_config(path=str(root), cache_dir=str(tmp_path / "c2"))
  )
  np.testing.assert_array_equal(parallel.train_images, serial.train_images)
  np.testing.assert_array_equal(parallel.test_images, serial.test_images)
  # This process decodes one chunk, two worker processes the others.
  assert [fn for fn, _ in RecordingPool.futures] == [decode.decode_chunk] * 2
  assert all(f.exception() is None for _, f in RecordingPool.futures)

  # The archive path sends bytes instead of paths to the workers.
  archive = make_archive(root, tmp_path / "mini.tar.gz")
  from_archive = data.load_dataset(
      make_config(path=str(archive), cache_dir=str(tmp_path / "c3"))
  )
  np.testing.assert_array_equal(from_archive.train_images, serial.train_images)
  assert len(RecordingPool.futures) == 4


class BrokenPool(concurrent.futures.Executor):
  """A pool whose workers all died, as when the OS kills them for memory."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def submit(self, fn, /, *args, **kwargs):
    future = concurrent.futures.Future()
    future.set_exception(concurrent.futures.BrokenExecutor("worker died"))
    return future


def test_broken_worker_pool_falls_back_to_this_process(
    tmp_path, monkeypatch, caplog
):
  root = make_tree(tmp_path / "mini")
  serial = data.load_dataset(
      make_config(path=str(root), cache_dir=str(tmp_path / "c1"))
  )
  monkeypatch.setattr(decode, "PARALLEL_MIN_FILES", 1)
  monkeypatch.setattr(decode, "num_decoders", lambda n: 3)
  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", BrokenPool)
  with caplog.at_level(logging.WARNING):
    ds = data.load_dataset(
        make_config(path=str(root), cache_dir=str(tmp_path / "c2"))
    )
  np.testing.assert_array_equal(ds.train_images, serial.train_images)
  np.testing.assert_array_equal(ds.test_images, serial.test_images)
  assert "worker died" in caplog.text


def test_decode_chunk_is_a_plain_function(tmp_path):
  root = make_tree(tmp_path / "mini", classes=("ant",), train_per_class=2)
  paths = [str(p) for p in sorted((root / "train" / "ant").iterdir())]
  images = decode.decode_chunk(paths, paths, (32, 32), paths[0])
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  assert [image_id(x) for x in images] == [1, 2]
  assert (images[:, 16, 16] == COLOURS["ant"]).all()


def test_folder_loads_without_tensorflow_or_jax(tmp_path):
  """Run apart from the other tests, whose imports would hide this."""
  root = make_tree(tmp_path / "mini")
  archive = make_archive(root, tmp_path / "mini.tar.gz")
  script = textwrap.dedent(f"""
      import json, sys
      from resflax import data
      info = data.source_info({{'name': 'folder', 'path': {str(root)!r}}})
      ds = data.load_dataset({{'name': 'folder', 'path': {str(root)!r}}})
      ds = data.load_dataset({{'name': 'folder', 'path': {str(archive)!r}}})
      print(json.dumps([info.num_classes, ds.num_train,
                        sorted(m for m in sys.modules
                               if m.split('.')[0] in
                               ('tensorflow', 'tensorflow_datasets', 'jax'))]))
      """)
  env = dict(os.environ, PYTHONPATH=REPO, RESFLAX_CACHE=str(tmp_path / "c"))
  result = subprocess.run(
      [sys.executable, "-c", script],
      env=env,
      capture_output=True,
      text=True,
      check=True,
      cwd=tmp_path,
  )
  num_classes, num_train, heavy_modules = json.loads(
      result.stdout.strip().splitlines()[-1]
  )
  assert (num_classes, num_train) == (3, 12)
  assert heavy_modules == []


# ---------------------------------------------------------------------------
# Errors a user can act on.
# ---------------------------------------------------------------------------


def test_error_missing_path(tmp_path, cache_dir):
  missing = tmp_path / "nowhere"
  assert_data_error(make_config(path=str(missing)), missing, "config.data.path")
  assert_data_error(make_config(name="folder"), "config.data.path")
  assert not cache_dir.exists()


def test_error_missing_split(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  for path in sorted((root / "test").rglob("*"), reverse=True):
    path.unlink() if path.is_file() else path.rmdir()
  (root / "test").rmdir()
  assert_data_error(make_config(path=str(root)), root / "test")
  assert not files_in(cache_dir)


def test_error_empty_class_folder(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  (root / "train" / "dog").mkdir()
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  assert_data_error(
      make_config(path=str(root)), "'dog'", root / "train" / "dog"
  )
  assert not files_in(cache_dir)


def test_error_class_lists_differ(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  make_tree(tmp_path / "other", classes=("dog",))
  (tmp_path / "other" / "test" / "dog").rename(root / "test" / "dog")
  error = assert_data_error(make_config(path=str(root)), "dog")
  assert "only in test" in str(error)
  assert not files_in(cache_dir)


@pytest.mark.parametrize("parallel", [False, True])
def test_error_corrupt_image(tmp_path, cache_dir, monkeypatch, parallel):
  if parallel:
    monkeypatch.setattr(decode, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(decode, "num_decoders", lambda n: 2)
  root = make_tree(tmp_path / "mini")
  bad = root / "test" / "cat" / "001.png"
  bad.write_bytes(b"\x89PNG not really")
  assert_data_error(make_config(path=str(root)), bad)
  assert not files_in(cache_dir)


def test_error_mismatched_image_size(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  odd = root / "train" / "bee" / "002.png"
  Image.new("RGB", (40, 36)).save(odd)
  assert_data_error(
      make_config(path=str(root)),
      odd,
      "40x36",
      "32x32",
      root / "train" / "ant" / "000.png",
  )
  assert not files_in(cache_dir)


def test_error_image_size_differs_from_config(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini", size=24)
  assert_data_error(
      make_config(path=str(root)), "config.data.image_size", "24x24"
  )
  assert not files_in(cache_dir)
  ds = data.load_dataset(make_config(path=str(root), image_size=24))
  assert ds.image_shape == (24, 24, 3)


def test_error_validation_split_too_large(tmp_path, cache_dir):
  root = make_tree(tmp_path / "mini")
  assert_data_error(
      make_config(path=str(root), validation_split=12),
      "config.data.validation_split",
  )
  assert not files_in(cache_dir)


def test_error_bad_archives(tmp_path, cache_dir):
  garbage = tmp_path / "broken.tar.gz"
  garbage.write_bytes(b"this is not gzip")
  assert_data_error(make_config(path=str(garbage)), garbage)

  root = make_tree(tmp_path / "mini")
  (root / "train" / "ant" / "001.png").write_bytes(b"junk")
  archive = make_archive(root, tmp_path / "mini.tar.gz")
  assert_data_error(
      make_config(path=str(archive)), "'train/ant/001.png'", archive
  )
  wrapped = make_archive(root, tmp_path / "wrapped.tar.gz", wrap="top")
  assert_data_error(
      make_config(path=str(wrapped)), "'top/train/ant/001.png'", wrapped
  )
  (root / "test").rename(tmp_path / "test-elsewhere")
  no_test = make_archive(root, tmp_path / "no-test.tar", wrap="top")
  assert_data_error(make_config(path=str(no_test)), "'top/test'", no_test)

  not_archive = tmp_path / "data.zip"
  not_archive.write_bytes(b"PK")
  assert_data_error(make_config(path=str(not_archive)), "config.data.path")
  assert not files_in(cache_dir)


# ---------------------------------------------------------------------------
# What is known before loading, and the run's summary line.
# ---------------------------------------------------------------------------


def test_source_info_of_a_folder_matches_the_loaded_dataset(tmp_path):
  root = make_tree(tmp_path / "mini")
  for config in (
      make_config(path=str(root)),
      make_config(name="cifar10", path=str(root), validation_split=3),
  ):
    info = data.source_info(config)
    ds = data.load_dataset(config)
    assert info.source == "folder" and not info.streams
    assert info.name == ds.name
    assert info.num_classes == ds.num_classes == 3
    assert info.image_shape == ds.image_shape
    assert info.eval_split == ds.eval_split
    assert info.splits == ("train", "test")


def test_source_info_reads_the_image_size_when_it_is_not_set(tmp_path):
  root = make_tree(tmp_path / "mini", size=24)
  (root / "train" / ".hidden").mkdir()
  info = data.source_info(make_config(path=str(root), image_size=0))
  assert info.image_shape == (24, 24, 3)
  assert (
      info.image_shape
      == data.load_dataset(
          make_config(path=str(root), image_size=0)
      ).image_shape
  )


def test_source_info_of_an_archive_leaves_classes_to_the_load(tmp_path):
  archive = make_archive(make_tree(tmp_path / "mini"), tmp_path / "mini.tar.gz")
  info = data.source_info(make_config(path=str(archive), image_size=0))
  assert (info.name, info.source, info.streams) == ("mini", "folder", False)
  assert info.num_classes is None and info.image_shape is None


def test_imagenet_with_a_path_is_an_in_memory_folder(tmp_path):
  root = make_tree(tmp_path / "mini")
  config = make_config(name="imagenet2012", path=str(root))
  info = data.source_info(config)
  assert (info.name, info.source, info.streams) == (
      "imagenet2012",
      "folder",
      False,
  )
  ds = data.load_dataset(config)
  assert ds.name == "imagenet2012" and ds.num_classes == info.num_classes


def test_source_info_refuses_what_the_load_would(tmp_path):
  with pytest.raises(data.DataError, match="config.data.path"):
    data.source_info(make_config(path=str(tmp_path / "nowhere")))
  not_archive = tmp_path / "data.zip"
  not_archive.write_bytes(b"PK")
  with pytest.raises(data.DataError, match="not a tar archive"):
    data.source_info(make_config(path=str(not_archive)))
  with pytest.raises(data.DataError, match="config.data.path"):
    data.source_info(make_config(name="folder"))
  # name='synthetic' with a path reads the path (test_data.py tests it).


def test_summary_names_counts_shape_and_cache(tmp_path, cache_dir):
  archive = make_archive(make_tree(tmp_path / "mini"), tmp_path / "m.tgz")
  config = make_config(path=str(archive), validation_split=3)
  first, second = data.load_dataset(config), data.load_dataset(config)
  (npz,) = files_in(cache_dir)
  line, cache_line = first.summary().splitlines()
  assert line == (
      f"m from archive {archive.resolve()}: 9 train, "
      "3 eval (validation), 6 test images; 3 classes; 32x32x3"
  )
  assert cache_line == f"cache: {npz} (written)"
  assert second.summary().splitlines() == [line, f"cache: {npz} (read)"]


# ---------------------------------------------------------------------------
# The real CIFAR-10 archive.
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.data
def test_real_cifar10_archive(tmp_path, capsys, cifar_archive):
  config = make_config(
      name="cifar10",
      path=str(cifar_archive),
      normalization="channel_standardize",
  )
  start = time.perf_counter()
  ds = data.load_dataset(config)
  first = time.perf_counter() - start
  start = time.perf_counter()
  cached = data.load_dataset(config)
  second = time.perf_counter() - start
  with capsys.disabled():
    print(
        f"\ncifar10-jpeg.tar.gz: first load {first:.1f} s, "
        f"cached load {second:.2f} s"
    )
  assert ds.train_images.shape == (50_000, 32, 32, 3)
  assert ds.test_images.shape == (10_000, 32, 32, 3)
  assert ds.num_classes == 10
  assert ds.class_names == data.CIFAR10_CLASSES
  assert np.bincount(ds.train_labels).tolist() == [5000] * 10
  assert np.bincount(ds.test_labels).tolist() == [1000] * 10
  np.testing.assert_allclose(ds.mean, [0.4913, 0.4821, 0.4465], atol=5e-4)
  np.testing.assert_allclose(
      ds.train_images.reshape(-1, 3).mean(axis=0) / 255,
      [0.4913, 0.4821, 0.4465],
      atol=5e-4,
  )
  np.testing.assert_array_equal(cached.train_images, ds.train_images)
  # The second load reads the cache instead of decoding (its time, printed
  # above, depends on the machine and its load).
  assert (ds.cache_hit, cached.cache_hit) == (False, True)
