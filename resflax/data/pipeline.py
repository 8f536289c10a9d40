"""Device-side data functions and batch layouts for the compiled steps.

:func:`normalize`, :func:`augment` and :func:`sample_batch_indices` are pure,
jittable JAX functions, so a whole (small) dataset can live on the
accelerator and no host round trip happens per step. :func:`eval_batches`
lays out an evaluation split as fixed-shape batches and
:func:`shard_for_process` gives each host its part of an array.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def normalize(
    images: jax.Array, mean: Any, std: Any, dtype: Any = jnp.float32
) -> jax.Array:
  """Maps uint8 pixels to `(x / 255 - mean) / std` in `dtype`.

  Args:
    images: uint8 (or any numeric) images (..., H, W, C) in [0, 255].
    mean: Mean as a fraction of 255, broadcastable to (H, W, C).
    std: Standard deviation as a fraction of 255, broadcastable to (H, W, C).
    dtype: Output dtype, e.g. jnp.bfloat16 for mixed precision.

  Returns:
    Normalized images of `dtype`.
  """
  # Arithmetic in float32 even for a bfloat16 output: bfloat16 has 8 bits of
  # mantissa, too few to subtract a mean of ~120 from pixel values exactly.
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  scale = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
  return ((images.astype(jnp.float32) - mean) * scale).astype(dtype)


def augment(
    key: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True
) -> jax.Array:
  """The CIFAR augmentation of He et al. 2016: pad, random crop, random flip.

  Each image is zero-padded by `pad` pixels on each side, cropped back to its
  size at an independent uniform offset, and mirrored horizontally with
  probability 1/2. Zeros are padded in whatever space `images` is in: black
  pixels for uint8 input; the mean pixel for normalized input (as in
  fb.resnet.torch, which crops after normalizing).

  Args:
    key: PRNG key.
    images: Batch (N, H, W, C), any dtype.
    pad: Padding on each side, in pixels.
    flip: Whether to apply the random horizontal flip.

  Returns:
    Augmented batch with the shape and dtype of `images`.
  """
  n, height, width, channels = images.shape
  crop_key, flip_key = jax.random.split(key)
  # Pad the whole batch once; each crop is then a plain window of it.
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, channels)
    )

  out = jax.vmap(crop)(padded, offsets)
  if flip:
    # A select between the batch and its mirror is cheaper on accelerators
    # than a per-image conditional, and keeps shapes static.
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def sample_batch_indices(
    key: jax.Array, step: Any, num_examples: int, batch_size: int
) -> jax.Array:
  """Indices of the global training batch for `step`.

  Epoch `e = step // steps_per_epoch` with `steps_per_epoch = num_examples //
  batch_size` visits a fresh permutation drawn from `fold_in(key, e)`; the
  `num_examples % batch_size` examples at its end are skipped that epoch.
  Being a pure function of (key, step), resuming from a checkpoint at step s
  reproduces the batches of an uninterrupted run without saving any data
  iterator state.

  The permutation is recomputed every call (O(N log N) on the device, tiny
  next to a ResNet step for CIFAR-sized N) rather than carried in the train
  state, so nothing but the step counter needs checkpointing.

  Args:
    key: PRNG key, the same for the whole run.
    step: Training step, a Python int or a traced integer scalar.
    num_examples: Training set size (static).
    batch_size: Global batch size (static), at most `num_examples`.

  Returns:
    int32 array (batch_size,) of indices into the training set.
  """
  if batch_size <= 0 or num_examples < batch_size:
    raise ValueError(
        f"need 0 < batch_size ({batch_size}) <= num_examples "
        f"({num_examples})"
    )
  steps_per_epoch = num_examples // batch_size
  step = jnp.asarray(step)
  epoch = step // steps_per_epoch
  start = (step % steps_per_epoch) * batch_size
  permutation = jax.random.permutation(
      jax.random.fold_in(key, epoch), num_examples
  )
  return jax.lax.dynamic_slice(permutation, (start,), (batch_size,))


class EvalLayout(NamedTuple):
  """Fixed-shape batches covering an evaluation split exactly once.

  Attributes:
    indices: int32 (num_batches, batch_size) example indices. Padding slots
      of the last batch point at example 0 so gathers stay in bounds.
    mask: float32 (num_batches, batch_size): 1 for real examples, 0 for
      padding. Weight per-example metrics with it.
  """

  indices: np.ndarray
  mask: np.ndarray

  @property
  def num_batches(self) -> int:
    return self.indices.shape[0]


def eval_batches(num_examples: int, batch_size: int) -> EvalLayout:
  """Lays out `num_examples` as equally shaped batches plus a padding mask.

  Every batch has `batch_size` slots, so the eval step compiles once; the
  last batch is padded and masked, so each example is counted exactly once.

  Args:
    num_examples: Size of the evaluation split (> 0).
    batch_size: Global eval batch size (> 0).

  Returns:
    An EvalLayout; `sum(mask) == num_examples`.
  """
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(
        f"need num_examples ({num_examples}) > 0 and "
        f"batch_size ({batch_size}) > 0"
    )
  num_batches = -(-num_examples // batch_size)
  slots = np.arange(num_batches * batch_size, dtype=np.int64)
  valid = slots < num_examples
  indices = np.where(valid, slots, 0).astype(np.int32)
  mask = valid.astype(np.float32)
  return EvalLayout(
      indices.reshape(num_batches, batch_size),
      mask.reshape(num_batches, batch_size),
  )


def shard_for_process(
    images: np.ndarray,
    labels: np.ndarray,
    process_index: int,
    process_count: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns this host's contiguous shard of `images` and `labels`.

  On a multi-host run each host keeps only its shard, so host memory and
  host-to-device traffic do not grow with the number of hosts. Shard sizes
  differ by at most one; no example is dropped or duplicated. The returned
  arrays are views.

  Args:
    images: Array whose first axis indexes examples.
    labels: Array with the same first-axis length.
    process_index: This host's index, `jax.process_index()`.
    process_count: Number of hosts, `jax.process_count()`.

  Returns:
    (images_shard, labels_shard).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index ({process_index}) < "
        f"process_count ({process_count})"
    )
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  n = len(images)
  start = n * process_index // process_count
  stop = n * (process_index + 1) // process_count
  return images[start:stop], labels[start:stop]
