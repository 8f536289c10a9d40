"""Paths of a residual network and the gradient they carry (Veit sec. 5).

Unrolled, a network of n residual modules is a collection of 2^n paths; a
path of length k goes through k residual branches and n - k shortcuts, and
there are C(n, k) of them (Fig. 6a). Veit et al. measure how much gradient
the paths of each length carry (Fig. 6b): forward pass through the whole
network as usual; in the backward pass k randomly chosen modules pass
gradient only through their residual branch and the other n - k only through
their shortcut; the norm of the loss gradient at the input is recorded.
Multiplying by the path counts gives the total gradient per length
(Fig. 6c); the shortest range of lengths holding most of it are the
"effective paths" (5 to 17 of 54 modules for ResNet-110).

The masks are data (``model.apply(residual_grad=..., skip_grad=...)``) and k
is data too (the k modules are those whose random rank is < k), so every
length and every sample runs through one compiled function.
"""

import dataclasses
import fractions
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resflax.models import Network, masks, scoring

__all__ = [
    "EffectivePaths",
    "PathGradients",
    "effective_paths",
    "gradient_norm_by_path_length",
    "make_path_gradient_fn",
    "path_masks",
    "path_length_distribution",
    "sample_path_gradients",
    "surviving_path_fractions",
    "surviving_paths",
    "total_gradient_by_length",
]


def path_length_distribution(n: int) -> list[int]:
  """Exact number of paths of each length k = 0..n: C(n, k).

  Args:
    n: number of residual modules (>= 0).

  Returns:
    n + 1 Python ints summing to 2**n.

  Raises:
    ValueError: a negative or non-integer n.
  """
  if int(n) != n or n < 0:
    raise ValueError(
        f"path_length_distribution: n={n!r} must be an integer "
        ">= 0 (the number of residual modules)"
    )
  n = int(n)
  return [math.comb(n, k) for k in range(n + 1)]


def _check_deletions(fn: str, n: int, d: int) -> tuple[int, int]:
  if int(n) != n or n < 0 or int(d) != d or not 0 <= d <= n:
    raise ValueError(
        f"{fn}: n={n!r} modules and d={d!r} deleted must be integers with "
        "0 <= d <= n"
    )
  return int(n), int(d)


def surviving_paths(n: int, d: int) -> list[int]:
  """Paths of each length k = 0..n left after deleting d of n modules.

  Veit et al. Fig. 7: a path of length k goes through k residual branches
  and survives when none of them is deleted, which C(n - d, k) of the
  C(n, k) paths of that length do (none for k > n - d), whichever d
  modules are deleted. The survivors total 2^(n - d).

  Args:
    n: number of residual modules (>= 0).
    d: modules deleted, 0..n.

  Returns:
    n + 1 Python ints (exact binomials).

  Raises:
    ValueError: n or d not an integer, or d outside 0..n.
  """
  n, d = _check_deletions("surviving_paths", n, d)
  return [math.comb(n - d, k) for k in range(n + 1)]


def surviving_path_fractions(n: int, d: int) -> list[float]:
  """The fraction of the paths of each length k = 0..n that survive.

  ``C(n - d, k) / C(n, k)`` (``surviving_paths``), computed on exact
  integers and rounded once, so that n in the hundreds stays exact where
  the binomials overflow a float.

  Raises:
    ValueError: n or d not an integer, or d outside 0..n.
  """
  n, d = _check_deletions("surviving_path_fractions", n, d)
  return [
      float(fractions.Fraction(math.comb(n - d, k), math.comb(n, k)))
      for k in range(n + 1)
  ]


def path_masks(key: jax.Array, k, n: int):
  """Gradient masks of one sample of path length k.

  Args:
    key: PRNG key.
    k: path length (int or traced int), 0..n.
    n: number of modules (static).

  Returns:
    ``(residual_grad, skip_grad)``, float32[n] each: k random modules
    (``resflax.models.masks.random_module_mask``, so k can be data) get
    residual 1 / skip 0, the others residual 0 / skip 1.
  """
  residual = masks.random_module_mask(key, k, n)
  return residual, 1.0 - residual


@dataclasses.dataclass
class PathGradients:
  """Gradient magnitude per path length (Veit Fig. 6b).

  Attributes:
    lengths: int[L], the measured path lengths k.
    values: float64[L, samples], one gradient norm per sample.
    mean: float64[L], mean over samples.
    std: float64[L], standard deviation over samples (the spread).
    num_modules: n.
  """

  lengths: np.ndarray
  values: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  num_modules: int

  def to_json(self) -> dict[str, Any]:
    return {
        "lengths": self.lengths.tolist(),
        "mean": self.mean.tolist(),
        "std": self.std.tolist(),
        "num_modules": self.num_modules,
        "samples": int(self.values.shape[1]),
    }


def sample_path_gradients(
    grad_norm: Callable[..., jax.Array],
    n: int,
    lengths: Sequence[int],
    samples: int,
    key: jax.Array,
    *,
    chunk: int = 1,
    args: Sequence[Any] = (),
) -> PathGradients:
  """Runs Veit's sampler for any function of the masks.

  Every (length, sample) pair becomes one row of data (k, key), and one
  jitted ``lax.map`` (vmapped in chunks of ``chunk`` rows) runs them all, so
  there is one compilation for every length and sample.

  Args:
    grad_norm: ``grad_norm(residual_grad, skip_grad, key, *args)`` -> a
      scalar gradient norm, jittable; ``key`` is for e.g. a random batch.
    n: number of modules.
    lengths: path lengths k to measure (each in 0..n).
    samples: samples per length.
    key: PRNG key.
    chunk: rows evaluated together with vmap (memory grows with it).
    args: extra (array) arguments passed to ``grad_norm``, e.g. the
      variables and images, so they are not baked into the program.

  Returns:
    A PathGradients.

  Raises:
    ValueError: a length outside 0..n, or non-positive samples/chunk.
  """
  lengths = np.asarray(list(lengths), np.int64).reshape(-1)
  if lengths.size == 0 or lengths.min() < 0 or lengths.max() > n:
    raise ValueError(
        f"path lengths {lengths.tolist()} must be non-empty and "
        f"in 0..{n} (the network has {n} modules)"
    )
  if samples <= 0 or chunk <= 0:
    raise ValueError(
        f"samples ({samples}) and chunk ({chunk}) must be " "positive"
    )
  rows = lengths.size * samples
  # Pad to a multiple of chunk: lax.map would trace a separate remainder.
  padded = -(-rows // chunk) * chunk
  ks = np.zeros(padded, np.int32)
  ks[:rows] = np.repeat(lengths, samples)
  keys = jax.random.split(key, padded)
  values = _sampler(grad_norm, n, chunk)(jnp.asarray(ks), keys, *args)
  values = np.asarray(jax.device_get(values), np.float64)[:rows].reshape(
      lengths.size, samples
  )
  return PathGradients(lengths, values, values.mean(1), values.std(1), n)


def _sampler(grad_norm, n, chunk):
  @jax.jit
  def run(ks, keys, *args):
    def one(row):
      k, key = row
      mask_key, data_key = jax.random.split(key)
      residual, skip = path_masks(mask_key, k, n)
      return grad_norm(residual, skip, data_key, *args)

    return jax.lax.map(one, (ks, keys), batch_size=chunk)

  return run


def make_path_gradient_fn(
    model: Network,
    batch_size: int | None = None,
    loss: Callable[..., jax.Array] | None = None,
) -> Callable[..., jax.Array]:
  """The per-sample measurement of Veit sec. 5 for ``model``.

  Args:
    model: the network.
    batch_size: images per sample (a random subset); None uses all.
    loss: ``loss(logits, labels)`` -> per-image losses; None is the
      softmax cross-entropy (a linear loss makes gradients exactly
      comparable across networks in tests).

  Returns:
    ``grad_norm(residual_grad, skip_grad, key, variables, images, labels)``:
    evaluation-mode forward pass on a random batch of ``batch_size`` of the
    images (all of them if None), backward pass with the masks, and the mean
    over the batch of each image's L2 norm of d loss / d image (each image's
    own cross-entropy, so the value does not depend on the batch size).
  """

  per_image = loss or scoring.cross_entropy

  def grad_norm(residual, skip, key, variables, images, labels):
    if batch_size is not None and batch_size < images.shape[0]:
      idx = jax.random.choice(
          key, images.shape[0], (batch_size,), replace=False
      )
      images, labels = images[idx], labels[idx]

    def total(x):
      logits = model.apply(variables, x, residual_grad=residual, skip_grad=skip)
      return per_image(logits, labels).sum()

    g = jax.grad(total)(images.astype(jnp.float32))
    norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))
    return jnp.mean(norms)

  return grad_norm


def gradient_norm_by_path_length(
    model: Network,
    params: Mapping[str, Any],
    images,
    labels,
    *,
    lengths: Sequence[int],
    samples: int,
    key: jax.Array,
    batch_size: int | None = None,
    chunk: int = 1,
    loss: Callable[..., jax.Array] | None = None,
) -> PathGradients:
  """Veit Fig. 6b: gradient magnitude at the input per path length.

  For each sample of each length k: the whole network runs forward (eval
  mode), k random modules pass gradient only through their residual branch
  and the other n - k only through their shortcut, and the norm of the
  loss gradient at the input images is recorded.

  Args:
    model: the network.
    params: its full variables pytree (a lesion in it applies too).
    images: normalised float NHWC images (e.g. training images through
      ``resflax.data.normalize``); each sample draws a random batch of
      ``batch_size`` of them (Veit: random training batches), or uses all.
    labels: int labels.
    lengths: path lengths k to measure.
    samples: samples per length (Veit: 1000).
    key: PRNG key (masks and batches).
    batch_size: images per sample; None uses all images every time.
    chunk: samples run together with vmap.
    loss: per-image loss of (logits, labels); None = cross-entropy.

  Returns:
    PathGradients (mean and std per length, and every sample).
  """
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  fn = make_path_gradient_fn(model, batch_size, loss)
  return sample_path_gradients(
      fn,
      model.num_modules,
      lengths,
      samples,
      key,
      chunk=chunk,
      args=(params, images, labels),
  )


# --------------------------------------------------------------------------
# Effective paths


def _log_magnitudes(n, lengths, magnitudes) -> np.ndarray:
  """log gradient magnitude for every length 0..n from measured lengths.

  Between measured lengths: linear in log (the magnitude falls about
  exponentially with k, Fig. 6b). Outside: the least-squares line through
  the measured log magnitudes (a constant if only one length was measured).
  """
  lengths = np.asarray(lengths, np.float64).reshape(-1)
  mags = np.asarray(magnitudes, np.float64).reshape(-1)
  if lengths.size != mags.size or lengths.size == 0:
    raise ValueError(
        f"need one magnitude per length; got {lengths.size} "
        f"lengths and {mags.size} magnitudes"
    )
  order = np.argsort(lengths)
  lengths, mags = lengths[order], mags[order]
  tiny = np.finfo(np.float64).tiny
  logs = np.log(np.maximum(mags, tiny))
  ks = np.arange(n + 1, dtype=np.float64)
  out = np.interp(ks, lengths, logs)
  if lengths.size > 1:
    slope, intercept = np.polyfit(lengths, logs, 1)
  else:
    slope, intercept = 0.0, logs[0]
  outside = (ks < lengths[0]) | (ks > lengths[-1])
  out[outside] = intercept + slope * ks[outside]
  return out


def total_gradient_by_length(
    n: int, lengths: Sequence[int], magnitudes: Sequence[float]
) -> np.ndarray:
  """Veit Fig. 6c: path count x gradient magnitude for k = 0..n.

  Computed in log space (C(n, k) overflows float64 beyond n ~ 1000) and
  normalised to sum to 1, so it is each length's share of the total
  gradient. Lengths that were not measured are interpolated (see
  ``_log_magnitudes``).

  Returns:
    float64[n + 1], summing to 1.
  """
  logc = np.array(
      [
          math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
          for k in range(n + 1)
      ]
  )
  log_total = logc + _log_magnitudes(n, lengths, magnitudes)
  log_total -= log_total.max()
  total = np.exp(log_total)
  return total / total.sum()


@dataclasses.dataclass
class EffectivePaths:
  """The shortest range of path lengths holding a share of the gradient.

  Attributes:
    low, high: the range of lengths [low, high] (inclusive).
    share: the requested share (e.g. 0.9).
    gradient_share: the share of the total gradient the range holds.
    path_share: the fraction of all 2^n paths whose length is in the range.
    total: float64[n + 1], each length's share of the total gradient.
  """

  low: int
  high: int
  share: float
  gradient_share: float
  path_share: float
  total: np.ndarray

  def to_json(self) -> dict[str, Any]:
    return {
        "low": self.low,
        "high": self.high,
        "share": self.share,
        "gradient_share": self.gradient_share,
        "path_share": self.path_share,
        "total": self.total.tolist(),
    }


def effective_paths(
    n: int,
    lengths: Sequence[int],
    magnitudes: Sequence[float],
    share: float = 0.9,
) -> EffectivePaths:
  """The effective paths: the shortest length range with ``share`` of the
  total gradient (Veit: 5 to 17 of 54 modules, 0.45% of the paths).

  Among ranges of equal width the one holding the most gradient wins.

  Args:
    n: number of modules.
    lengths, magnitudes: measured mean gradient magnitude per path length
      (e.g. ``PathGradients.lengths`` / ``.mean``).
    share: the share of the total gradient the range must hold, in (0, 1].

  Returns:
    EffectivePaths.

  Raises:
    ValueError: ``share`` outside (0, 1].
  """
  if not 0.0 < share <= 1.0:
    raise ValueError(f"effective_paths: share={share} must be in (0, 1]")
  total = total_gradient_by_length(n, lengths, magnitudes)
  cum = np.concatenate([[0.0], np.cumsum(total)])
  best = None
  # Tolerance so share=1.0 is reachable despite rounding in the cumsum.
  need = share - 1e-12
  for width in range(n + 1):
    sums = cum[width + 1 :] - cum[: n + 1 - width]
    if sums.max() >= need:
      low = int(np.argmax(sums))
      best = (low, low + width, float(sums[low]))
      break
  low, high, got = best
  counts = path_length_distribution(n)
  path_share = sum(counts[low : high + 1]) / (2**n)
  return EffectivePaths(low, high, float(share), got, float(path_share), total)
