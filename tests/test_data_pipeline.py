"""Tests for resflax.data.pipeline: device-side sampling, layouts, shards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax import data


def test_shard_for_process():
  images = np.arange(10 * 2).reshape(10, 2)
  labels = np.arange(10)
  shards = [data.shard_for_process(images, labels, i, 3) for i in range(3)]
  assert [len(s[1]) for s in shards] == [3, 3, 4]
  np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]), images)
  np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), labels)
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
  np.testing.assert_allclose(
      np.asarray(out[0, 0, 0], np.float32), [1.0, 3.0, 1.0]
  )


@pytest.fixture(scope="module")
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
    matches = [
        (dy, dx, flip)
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
        if np.array_equal(
            source[dy : dy + 32, dx : dx + 32][:, :: -1 if flip else 1], result
        )
    ]
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
    batches = [
        np.asarray(sample(key, jnp.int32(step), num_examples, batch_size))
        for step in range(epoch * 10, epoch * 10 + 10)
    ]
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
      epochs[1][30:40],
  )
  other = data.sample_batch_indices(
      jax.random.key(7), 0, num_examples, batch_size
  )
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


def test_augment_is_the_pad_crop_flip_of_its_key():
  """The same key gives the same windows: numpy redoes them from the draws."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  key = jax.random.key(5)
  out = np.asarray(data.augment(key, images, pad=2))
  crop_key, flip_key = jax.random.split(key)
  offsets = np.asarray(jax.random.randint(crop_key, (16, 2), 0, 5))
  flips = np.asarray(jax.random.bernoulli(flip_key, 0.5, (16,)))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
    window = padded[i, dy : dy + 8, dx : dx + 8]
    np.testing.assert_array_equal(out[i], window[:, ::-1] if flip else window)
  unflipped = np.asarray(data.augment(key, images, pad=2, flip=False))
  np.testing.assert_array_equal(unflipped[flips], out[flips][:, :, ::-1])


def test_sample_batch_indices_are_slices_of_the_epoch_permutation():
  key = jax.random.key(3)
  for step in (0, 4, 5, 11):  # 5 steps per epoch of 23 examples.
    epoch, within = divmod(step, 5)
    permutation = np.asarray(
        jax.random.permutation(jax.random.fold_in(key, epoch), 23)
    )
    np.testing.assert_array_equal(
        np.asarray(data.sample_batch_indices(key, step, 23, 4)),
        permutation[4 * within : 4 * within + 4],
    )
