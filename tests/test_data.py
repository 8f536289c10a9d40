"""Tests for resflax.data: loading, caching, errors, device-side sampling."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from resflax import data

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(__file__).resolve().parents[1].parent / (
    'shared/data/cifar10-jpeg.tar.gz')

# Deliberately not in sorted order: labels must follow sorted names.
CLASSES = ('cat', 'ant', 'bee')
COLOURS = {'ant': (220, 20, 20), 'bee': (20, 220, 20), 'cat': (20, 20, 220),
           'dog': (120, 120, 120)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  """Every test gets its own empty cache, never the user's."""
  path = tmp_path / 'cache'
  monkeypatch.setenv('RESFLAX_CACHE', str(path))
  return path


def make_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      name='folder', path='', tfds_data_dir='', validation_split=0,
      normalization='pixel_mean', synthetic_train_size=64,
      synthetic_test_size=32, image_size=32, num_classes=10,
      max_train_images=0, max_test_images=0))
  config.update(overrides)
  return config


def image_id(image):
  """Recovers the id that make_tree writes into pixel (0, 0)."""
  return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def make_tree(root, train_per_class=4, test_per_class=2, classes=CLASSES,
              size=32, ext='png'):
  """Writes <root>/{train,test}/<class>/<i>.<ext>; returns root.

  Images are the class colour with a unique id in pixel (0, 0) (exact for
  PNG), so tests can tell every image apart after loading.
  """
  next_id = 1
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for cls in classes:
      folder = root / split / cls
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = np.empty((size, size, 3), np.uint8)
        pixels[:] = COLOURS[cls]
        pixels[0, 0] = (next_id % 256, next_id // 256, 0)
        next_id += 1
        Image.fromarray(pixels).save(folder / f'{i:03d}.{ext}')
  return root


def files_in(path):
  return sorted(p for p in Path(path).rglob('*') if p.is_file())


def make_archive(tree_root, archive, wrap=None):
  """Tars tree_root's train/ and test/ (under `wrap`/); gzip for .gz names."""
  mode = 'w:gz' if archive.name.endswith('.gz') else 'w'
  with tarfile.open(archive, mode) as tar:
    for split in ('train', 'test'):
      if (tree_root / split).exists():
        arcname = f'{wrap}/{split}' if wrap else split
        tar.add(tree_root / split, arcname=arcname)
  return archive


# ---------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------


def test_folder_labels_shapes_dtypes(tmp_path):
  root = make_tree(tmp_path / 'mini')
  ds = data.load_dataset(make_config(path=str(root)))
  assert ds.class_names == ('ant', 'bee', 'cat')
  assert ds.num_classes == 3
  assert ds.name == 'mini'
  assert ds.train_images.shape == (12, 32, 32, 3)
  assert ds.test_images.shape == (6, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.test_labels.dtype == np.int32
  assert ds.eval_split == 'test'
  np.testing.assert_array_equal(ds.eval_images, ds.test_images)
  np.testing.assert_array_equal(ds.eval_labels, ds.test_labels)
  # Each image's colour says its class; the label must be its sorted index.
  for images, labels in ((ds.train_images, ds.train_labels),
                         (ds.test_images, ds.test_labels)):
    for image, label in zip(images, labels):
      assert tuple(image[16, 16]) == COLOURS[ds.class_names[label]]
  assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32
  # `name` other than 'folder' is kept as the label.
  assert data.load_dataset(make_config(name='cifar10', path=str(root))).name \
      == 'cifar10'


def test_folder_jpeg_and_grayscale_become_rgb(tmp_path):
  root = make_tree(tmp_path / 'mini', ext='jpg')
  Image.new('L', (32, 32), 90).save(root / 'train' / 'ant' / 'gray.png')
  ds = data.load_dataset(make_config(path=str(root)))
  assert ds.train_images.shape == (13, 32, 32, 3)
  gray = ds.train_images[ds.train_labels == 0][-1]
  assert (gray == 90).all()


def test_statistics_use_training_images_only(tmp_path):
  root = make_tree(tmp_path / 'mini')
  for path in (root / 'test').rglob('*.png'):  # Make test very different.
    Image.new('RGB', (32, 32), (255, 255, 255)).save(path)
  ds = data.load_dataset(make_config(path=str(root)))
  train = ds.train_images.astype(np.float64) / 255
  assert ds.mean.shape == (32, 32, 3)
  np.testing.assert_allclose(ds.mean, train.mean(axis=0), atol=1e-6)
  np.testing.assert_array_equal(ds.std, np.ones(3, np.float32))

  ds = data.load_dataset(make_config(path=str(root),
                                     normalization='channel_standardize'))
  assert ds.mean.shape == (3,) and ds.std.shape == (3,)
  np.testing.assert_allclose(ds.mean, train.mean(axis=(0, 1, 2)), atol=1e-6)
  np.testing.assert_allclose(ds.std, train.std(axis=(0, 1, 2)), atol=1e-6)
  normalized = np.asarray(data.normalize(ds.train_images, ds.mean, ds.std))
  np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_validation_split(tmp_path):
  root = make_tree(tmp_path / 'mini', train_per_class=5)
  full = data.load_dataset(make_config(path=str(root)))
  ds = data.load_dataset(make_config(path=str(root), validation_split=4))
  assert ds.eval_split == 'validation'
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
      ds.mean, ds.train_images.mean(axis=0, dtype=np.float64) / 255,
      atol=1e-6)
  # The held-out set is fixed (seed 0), whatever the run's seed.
  other = data.load_dataset(make_config(path=str(root), validation_split=4),
                            seed=7)
  np.testing.assert_array_equal(other.eval_images, ds.eval_images)


def test_max_images_takes_balanced_fixed_subsets(tmp_path):
  root = make_tree(tmp_path / 'mini', train_per_class=6, test_per_class=4)
  config = make_config(path=str(root), max_train_images=6, max_test_images=3)
  ds = data.load_dataset(config)
  assert np.bincount(ds.train_labels).tolist() == [2, 2, 2]
  assert np.bincount(ds.test_labels).tolist() == [1, 1, 1]
  assert np.bincount(ds.eval_labels).tolist() == [1, 1, 1]
  again = data.load_dataset(config, seed=3)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  np.testing.assert_allclose(
      ds.mean, ds.train_images.mean(axis=0, dtype=np.float64) / 255,
      atol=1e-6)


def test_cache_hit_skips_decoding(tmp_path, cache_dir, monkeypatch):
  root = make_tree(tmp_path / 'mini')
  first = data.load_dataset(make_config(path=str(root)))
  npz = [p for p in files_in(cache_dir)]
  assert len(npz) == 1 and npz[0].suffix == '.npz'  # No temp files left.

  def fail(*args, **kwargs):
    raise AssertionError('decoded although the cache is valid')

  monkeypatch.setattr(data, '_decode_image', fail)
  monkeypatch.setattr(data, '_decode_all', fail)
  second = data.load_dataset(make_config(path=str(root)))
  np.testing.assert_array_equal(second.train_images, first.train_images)
  np.testing.assert_array_equal(second.test_labels, first.test_labels)
  assert second.class_names == first.class_names

  # A changed file listing invalidates the cache.
  Image.new('RGB', (32, 32)).save(root / 'train' / 'ant' / 'new.png')
  with pytest.raises(AssertionError, match='decoded although'):
    data.load_dataset(make_config(path=str(root)))


def test_unreadable_cache_file_is_rebuilt(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  first = data.load_dataset(make_config(path=str(root)))
  (npz,) = files_in(cache_dir)
  npz.write_bytes(b'garbage')
  second = data.load_dataset(make_config(path=str(root)))
  np.testing.assert_array_equal(second.train_images, first.train_images)


def test_cache_dir_from_config(tmp_path):
  root = make_tree(tmp_path / 'mini')
  data.load_dataset(make_config(path=str(root),
                                cache_dir=str(tmp_path / 'elsewhere')))
  assert len(files_in(tmp_path / 'elsewhere')) == 1


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
  root = make_tree(tmp_path / 'mini', ext='jpg')
  serial = data.load_dataset(make_config(path=str(root),
                                         cache_dir=str(tmp_path / 'c1')))
  calls = []
  original = data._decode_in_subprocess

  def spy(sources, shape):
    result = original(sources, shape)
    calls.append(result is not None)
    return result

  monkeypatch.setattr(data, '_PARALLEL_MIN_FILES', 1)
  monkeypatch.setattr(data, '_num_decoders', lambda n: 3)
  monkeypatch.setattr(data, '_decode_in_subprocess', spy)
  parallel = data.load_dataset(make_config(path=str(root),
                                           cache_dir=str(tmp_path / 'c2')))
  np.testing.assert_array_equal(parallel.train_images, serial.train_images)
  np.testing.assert_array_equal(parallel.test_images, serial.test_images)
  assert calls == [True, True]  # Two child processes, both succeeded.

  # The archive path sends bytes instead of paths to the children.
  archive = make_archive(root, tmp_path / 'mini.tar.gz')
  from_archive = data.load_dataset(make_config(
      path=str(archive), cache_dir=str(tmp_path / 'c3')))
  np.testing.assert_array_equal(from_archive.train_images, serial.train_images)
  assert calls == [True] * 4


def test_no_tensorflow_import_for_folders(tmp_path):
  root = make_tree(tmp_path / 'mini')
  archive = make_archive(root, tmp_path / 'mini.tar.gz')
  script = textwrap.dedent(f"""
      import json, sys
      from resflax import data
      ds = data.load_dataset({{'name': 'folder', 'path': {str(root)!r}}})
      ds = data.load_dataset({{'name': 'folder', 'path': {str(archive)!r}}})
      print(json.dumps([ds.num_train,
                        sorted(m for m in sys.modules
                               if m.split('.')[0] in
                               ('tensorflow', 'tensorflow_datasets'))]))
      """)
  env = dict(os.environ, PYTHONPATH=str(REPO), RESFLAX_CACHE=str(
      tmp_path / 'c'))
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True, check=True,
                          cwd=tmp_path)
  num_train, tf_modules = json.loads(result.stdout.strip().splitlines()[-1])
  assert num_train == 12
  assert tf_modules == []


# ---------------------------------------------------------------------------
# Archives.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('wrap', [None, 'mini'])
def test_archive_matches_folder_and_is_cached(tmp_path, cache_dir,
                                              monkeypatch, wrap):
  root = make_tree(tmp_path / 'mini')
  archive = make_archive(root, tmp_path / 'mini-data.tar.gz', wrap=wrap)
  folder = data.load_dataset(make_config(path=str(root),
                                         cache_dir=str(tmp_path / 'c')))
  ds = data.load_dataset(make_config(path=str(archive)))
  assert ds.name == 'mini-data'
  assert ds.class_names == folder.class_names
  np.testing.assert_array_equal(ds.train_images, folder.train_images)
  np.testing.assert_array_equal(ds.test_labels, folder.test_labels)
  # Nothing is unpacked: the cache holds just the decoded arrays.
  assert [p.suffix for p in files_in(cache_dir)] == ['.npz']

  def fail(*args, **kwargs):
    raise AssertionError('read the archive although the cache is valid')

  monkeypatch.setattr(data, '_gather_archive', fail)
  again = data.load_dataset(make_config(name='cifar10', path=str(archive)))
  assert again.name == 'cifar10'
  np.testing.assert_array_equal(again.train_images, ds.train_images)


def test_unpack_archive_is_atomic_and_once(tmp_path, monkeypatch):
  root = make_tree(tmp_path / 'mini')
  archive = make_archive(root, tmp_path / 'mini.tar.gz', wrap='top')
  unpacked = data.unpack_archive(archive, tmp_path / 'c')
  assert (unpacked / 'train' / 'ant' / '000.png').is_file()
  assert unpacked.parent.parent == tmp_path / 'c'
  assert not list((tmp_path / 'c').glob('.*'))  # No temp folder left.

  def fail(*args):
    raise AssertionError('unpacked twice')

  monkeypatch.setattr(data, '_unpack', fail)
  assert data.unpack_archive(archive, tmp_path / 'c') == unpacked


# ---------------------------------------------------------------------------
# Errors a user can act on.
# ---------------------------------------------------------------------------


def assert_data_error(config, *fragments):
  with pytest.raises(data.DataError) as info:
    data.load_dataset(config)
  for fragment in fragments:
    assert str(fragment) in str(info.value), (fragment, str(info.value))
  return info.value


def test_error_missing_path(tmp_path, cache_dir):
  missing = tmp_path / 'nowhere'
  assert_data_error(make_config(path=str(missing)), missing,
                    'config.data.path')
  assert_data_error(make_config(name='folder'), 'config.data.path')
  assert not cache_dir.exists()


def test_error_missing_split(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  for path in sorted((root / 'test').rglob('*'), reverse=True):
    path.unlink() if path.is_file() else path.rmdir()
  (root / 'test').rmdir()
  assert_data_error(make_config(path=str(root)), root / 'test')
  assert not files_in(cache_dir)


def test_error_empty_class_folder(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  (root / 'train' / 'dog').mkdir()
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  assert_data_error(make_config(path=str(root)), "'dog'",
                    root / 'train' / 'dog')
  assert not files_in(cache_dir)


def test_error_class_lists_differ(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  make_tree(tmp_path / 'other', classes=('dog',))
  (tmp_path / 'other' / 'test' / 'dog').rename(root / 'test' / 'dog')
  error = assert_data_error(make_config(path=str(root)), 'dog')
  assert 'only in test' in str(error)
  assert not files_in(cache_dir)


@pytest.mark.parametrize('parallel', [False, True])
def test_error_corrupt_image(tmp_path, cache_dir, monkeypatch, parallel):
  if parallel:
    monkeypatch.setattr(data, '_PARALLEL_MIN_FILES', 1)
    monkeypatch.setattr(data, '_num_decoders', lambda n: 2)
  root = make_tree(tmp_path / 'mini')
  bad = root / 'test' / 'cat' / '001.png'
  bad.write_bytes(b'\x89PNG not really')
  assert_data_error(make_config(path=str(root)), bad)
  assert not files_in(cache_dir)


def test_error_mismatched_image_size(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  odd = root / 'train' / 'bee' / '002.png'
  Image.new('RGB', (40, 36)).save(odd)
  assert_data_error(make_config(path=str(root)), odd, '40x36', '32x32',
                    root / 'train' / 'ant' / '000.png')
  assert not files_in(cache_dir)


def test_error_image_size_differs_from_config(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini', size=24)
  assert_data_error(make_config(path=str(root)), 'config.data.image_size',
                    '24x24')
  assert not files_in(cache_dir)
  ds = data.load_dataset(make_config(path=str(root), image_size=24))
  assert ds.image_shape == (24, 24, 3)


def test_error_validation_split_too_large(tmp_path, cache_dir):
  root = make_tree(tmp_path / 'mini')
  assert_data_error(make_config(path=str(root), validation_split=12),
                    'config.data.validation_split')
  assert not files_in(cache_dir)


def test_error_bad_archives(tmp_path, cache_dir):
  garbage = tmp_path / 'broken.tar.gz'
  garbage.write_bytes(b'this is not gzip')
  assert_data_error(make_config(path=str(garbage)), garbage)

  root = make_tree(tmp_path / 'mini')
  (root / 'train' / 'ant' / '001.png').write_bytes(b'junk')
  archive = make_archive(root, tmp_path / 'mini.tar.gz')
  assert_data_error(make_config(path=str(archive)), "'train/ant/001.png'",
                    archive)
  wrapped = make_archive(root, tmp_path / 'wrapped.tar.gz', wrap='top')
  assert_data_error(make_config(path=str(wrapped)),
                    "'top/train/ant/001.png'", wrapped)
  (root / 'test').rename(tmp_path / 'test-elsewhere')
  no_test = make_archive(root, tmp_path / 'no-test.tar', wrap='top')
  assert_data_error(make_config(path=str(no_test)), "'top/test'", no_test)

  not_archive = tmp_path / 'data.zip'
  not_archive.write_bytes(b'PK')
  assert_data_error(make_config(path=str(not_archive)), 'config.data.path')
  assert not files_in(cache_dir)


def test_error_config_values():
  assert_data_error(make_config(name='mnist'), 'mnist', 'cifar10')
  assert_data_error(make_config(name='imagenet2012'), 'imagenet_iterator')
  assert_data_error(make_config(name='synthetic', normalization='zca'),
                    'config.data.normalization')
  assert_data_error(make_config(name='synthetic', max_train_images=-1),
                    'config.data.max_train_images')


def test_error_tfds_data_dir_missing(tmp_path):
  missing = tmp_path / 'no_tfds'
  assert_data_error(make_config(name='cifar10', tfds_data_dir=str(missing)),
                    missing, 'config.data.tfds_data_dir')


def test_error_tfds_not_prepared(tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  # No download: whether one is attempted must not depend on the network.
  error = assert_data_error(
      make_config(name='cifar10', tfds_data_dir=str(empty),
                  tfds_download=False),
      empty, 'config.data.tfds_data_dir', 'cifar10')
  assert error.__cause__ is not None


def test_tfds_cifar_glue(monkeypatch):
  """The TFDS path converts dtypes and names without needing real data."""
  tfds = pytest.importorskip('tensorflow_datasets')
  rng = np.random.default_rng(0)

  def fake_load(name, split, batch_size, as_supervised, data_dir, download,
                with_info):
    assert (name, split, batch_size, as_supervised, with_info) == (
        'cifar10', ['train', 'test'], -1, True, True)
    splits = [(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
               np.arange(n, dtype=np.int64) % 10) for n in (30, 20)]
    label = type('Label', (), {'names': [str(i) for i in range(10)]})
    info = type('Info', (), {'features': {'label': label}})
    return splits, info

  monkeypatch.setattr(tfds, 'load', fake_load)
  monkeypatch.setattr(tfds, 'as_numpy', lambda x: x)
  # tfds_download=False and nothing prepared: TensorFlow is not imported.
  ds = data.load_dataset(make_config(name='cifar10', validation_split=5,
                                     tfds_download=False))
  assert ds.class_names == data.CIFAR10_CLASSES
  assert (ds.num_train, ds.num_eval, ds.num_test) == (25, 5, 20)
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32


@pytest.mark.slow
def test_imagenet_iterator_with_mock_data():
  """Runs the tf.data pipeline on tfds.testing.mock_data (imports TF)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  config = make_config(name='imagenet2012', image_size=64)
  with tfds.testing.mock_data(num_examples=10):
    train = data.imagenet_iterator(config, 'train', 4, seed=1)
    batch = next(train)
    assert batch['image'].shape == (4, 64, 64, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32
    again = next(data.imagenet_iterator(config, 'train', 4, seed=1))
    np.testing.assert_array_equal(again['image'], batch['image'])
    # mock_data ignores sub-splits, so each host sees all 10 examples here.
    batches = list(data.imagenet_iterator(config, 'validation', 3,
                                          process_index=1, process_count=2))
    assert [b['mask'].sum() for b in batches] == [3, 3, 3, 1]
    assert all(b['image'].shape == (3, 64, 64, 3) for b in batches)
    assert (batches[-1]['image'][1:] == 0).all()
  with pytest.raises(data.DataError, match='config.data.tfds_data_dir'):
    data.imagenet_iterator(make_config(name='imagenet2012'), 'validation', 3)


# ---------------------------------------------------------------------------
# Synthetic data.
# ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable():
  config = make_config(name='synthetic', synthetic_train_size=200,
                       synthetic_test_size=100, num_classes=5)
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
  centroids = np.stack([colour(ds.train_images)[ds.train_labels == k].mean(0)
                        for k in range(5)])
  distances = ((colour(ds.test_images)[:, None] - centroids) ** 2).sum(-1)
  assert (distances.argmin(1) == ds.test_labels).mean() > 0.9


def test_synthetic_with_validation_split():
  ds = data.load_dataset(make_config(name='synthetic', validation_split=16))
  assert (ds.num_train, ds.num_eval, ds.num_test) == (48, 16, 32)


# ---------------------------------------------------------------------------
# Host helpers.
# ---------------------------------------------------------------------------


def test_shard_for_process():
  images = np.arange(10 * 2).reshape(10, 2)
  labels = np.arange(10)
  shards = [data.shard_for_process(images, labels, i, 3) for i in range(3)]
  assert [len(s[1]) for s in shards] == [3, 3, 4]
  np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]),
                                images)
  np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]),
                                labels)
  with pytest.raises(ValueError):
    data.shard_for_process(images, labels, 3, 3)


def test_eval_batches_cover_each_example_once():
  layout = data.eval_batches(25, 10)
  assert layout.indices.shape == layout.mask.shape == (3, 10)
  assert layout.num_batches == 3
  assert layout.indices.dtype == np.int32 and layout.mask.dtype == np.float32
  assert layout.mask.sum() == 25
  covered = layout.indices[layout.mask > 0]
  np.testing.assert_array_equal(np.sort(covered), np.arange(25))
  assert (layout.indices < 25).all()
  exact = data.eval_batches(20, 10)
  assert exact.num_batches == 2 and exact.mask.all()


# ---------------------------------------------------------------------------
# Device-side functions.
# ---------------------------------------------------------------------------


def test_normalize_dtype_and_values():
  images = np.full((2, 4, 4, 3), 255, np.uint8)
  mean = np.array([0.5, 0.25, 0.0], np.float32)
  std = np.array([0.5, 0.25, 1.0], np.float32)
  out = data.normalize(images, mean, std, dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16 and out.shape == images.shape
  np.testing.assert_allclose(np.asarray(out[0, 0, 0], np.float32),
                             [1.0, 3.0, 1.0])


@pytest.fixture(scope='module')
def augmented():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (512, 32, 32, 3), dtype=np.uint8)
  out = jax.jit(data.augment)(jax.random.key(0), images)
  return images, np.asarray(out)


def test_augment_shape_dtype(augmented):
  images, out = augmented
  assert out.shape == images.shape and out.dtype == np.uint8
  floats = data.augment(jax.random.key(1), images[:4].astype(np.float32))
  assert floats.dtype == jnp.float32 and floats.shape == (4, 32, 32, 3)


def test_augment_crops_are_shifts_and_flips_are_half(augmented):
  images, out = augmented
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets, flips = [], []
  for source, result in zip(padded, out):
    matches = [(dy, dx, flip)
               for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(
                   source[dy:dy + 32, dx:dx + 32][:, ::-1 if flip else 1],
                   result)]
    assert len(matches) == 1  # Every output is exactly one window.
    dy, dx, flip = matches[0]
    offsets.append((dy, dx))
    flips.append(flip)
  assert 0.4 < np.mean(flips) < 0.6
  offsets = np.array(offsets)
  assert len({tuple(o) for o in offsets}) > 70  # Of 81 possible.
  np.testing.assert_allclose(offsets.mean(axis=0), 4, atol=0.5)
  assert (offsets == 0).any() and (offsets == 8).any()


def test_sample_batch_indices_epochs():
  key = jax.random.key(42)
  num_examples, batch_size = 103, 10  # 10 steps/epoch, 3 dropped each.
  sample = jax.jit(data.sample_batch_indices, static_argnums=(2, 3))
  epochs = []
  for epoch in range(3):
    batches = [np.asarray(sample(key, jnp.int32(step), num_examples,
                                 batch_size))
               for step in range(epoch * 10, epoch * 10 + 10)]
    seen = np.concatenate(batches)
    assert seen.dtype == np.int32 and seen.shape == (100,)
    assert len(np.unique(seen)) == 100  # At most once per epoch.
    assert seen.min() >= 0 and seen.max() < num_examples
    epochs.append(seen)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  # A pure function of (key, step): recomputing (resuming) gives the same.
  np.testing.assert_array_equal(
      np.asarray(data.sample_batch_indices(key, 13, num_examples, batch_size)),
      epochs[1][30:40])
  other = data.sample_batch_indices(jax.random.key(7), 0, num_examples,
                                    batch_size)
  assert not np.array_equal(np.asarray(other), epochs[0][:10])


def test_sample_batch_indices_inside_scan():
  key = jax.random.PRNGKey(0)  # Raw uint32 keys work too.

  def body(carry, step):
    return carry, data.sample_batch_indices(key, step, 20, 5)

  _, batches = jax.lax.scan(body, 0, jnp.arange(8, dtype=jnp.int32))
  batches = np.asarray(batches)
  assert batches.shape == (8, 5)
  assert len(np.unique(batches[:4])) == 20 == len(np.unique(batches[4:]))
  with pytest.raises(ValueError):
    data.sample_batch_indices(key, 0, 4, 5)


# ---------------------------------------------------------------------------
# The real CIFAR-10 archive.
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.data
def test_real_cifar10_archive(tmp_path, capsys):
  if not ARCHIVE.is_file():
    pytest.skip(f'{ARCHIVE} is absent (see ../shared/data/README.md)')
  config = make_config(name='cifar10', path=str(ARCHIVE),
                       normalization='channel_standardize')
  start = time.perf_counter()
  ds = data.load_dataset(config)
  first = time.perf_counter() - start
  start = time.perf_counter()
  cached = data.load_dataset(config)
  second = time.perf_counter() - start
  with capsys.disabled():
    print(f'\ncifar10-jpeg.tar.gz: first load {first:.1f} s, '
          f'cached load {second:.2f} s')
  assert ds.train_images.shape == (50_000, 32, 32, 3)
  assert ds.test_images.shape == (10_000, 32, 32, 3)
  assert ds.num_classes == 10
  assert ds.class_names == data.CIFAR10_CLASSES
  assert np.bincount(ds.train_labels).tolist() == [5000] * 10
  assert np.bincount(ds.test_labels).tolist() == [1000] * 10
  np.testing.assert_allclose(ds.mean, [0.4913, 0.4821, 0.4465], atol=5e-4)
  np.testing.assert_allclose(
      ds.train_images.reshape(-1, 3).mean(axis=0) / 255,
      [0.4913, 0.4821, 0.4465], atol=5e-4)
  np.testing.assert_array_equal(cached.train_images, ds.train_images)
  assert second < 3.0
