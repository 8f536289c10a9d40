"""Leaf layers shared by every network: convolution and batch normalisation."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resflax.models.cpu_conv import conv2d  # re-exported: benchmarks use it

# He et al. initialise as in fb.resnet.torch: N(0, 2 / (k * k * out_channels)).
he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
  """Square convolution, symmetric padding, float32 weights, He init.

  ``grad_mode`` picks the backward pass (``cpu_conv.MODES``, the model key
  ``cpu_conv_grad``).
  """

  features: int
  kernel: int
  strides: int = 1
  use_bias: bool = False
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  grad_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = self.param(
        "kernel",
        he_init,
        (self.kernel, self.kernel, x.shape[-1], self.features),
        jnp.float32,
    )
    pad = (self.kernel - 1) // 2
    y = conv2d(
        x.astype(self.dtype),
        k.astype(self.dtype),
        (self.strides, self.strides),
        ((pad, pad), (pad, pad)),
        self.grad_mode,
    )
    if self.use_bias:
      b = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + b.astype(self.dtype)
    return y


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    dtype=jnp.float32,
    name: str | None = None,
    use_bias: bool = False,
    bias_init=nn.initializers.zeros,
    grad_mode: str = "auto",
) -> Conv:
  """A square convolution with 'same'-style padding, float32 weights."""
  return Conv(
      features,
      kernel,
      strides,
      use_bias,
      bias_init,
      dtype,
      grad_mode,
      name=name,
  )


def conv_factory(cfg) -> functools.partial:
  """``conv`` bound to the model config's compute dtype and gradient mode."""
  return functools.partial(
      conv, dtype=jnp.dtype(cfg.dtype), grad_mode=cfg.cpu_conv_grad
  )


class BatchNorm(nn.Module):
  """Batch normalisation whose batch statistics can be taken per group.

  ``group_size`` > 0 normalises every group of that many consecutive examples
  with its own statistics: the papers trained with 64 images per GPU, and
  this reproduces it on any number of devices (the batch axis is sharded in
  contiguous blocks, so a group never straddles devices when the per-device
  batch is a multiple of it). ``group_size`` = 0 uses the whole batch.

  Training normalises with the biased batch variance; the running variance
  is updated with the unbiased one (n / (n - 1) times it, n the values per
  channel of a group), as Torch7, Caffe and PyTorch do, so evaluation uses the
  statistics the papers' frameworks would have stored.

  Statistics are computed in float32 whatever the compute dtype.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: int = 0
  dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    if train:
      b = x.shape[0]
      g = self.group_size if 0 < self.group_size < b else b
      if b % g:
        raise ValueError(f"model.bn_group_size={g} must divide the batch {b}")
      xg = xf.reshape((b // g, g) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axes, keepdims=True)
      var = jnp.mean(jnp.square(xg - mean), axes, keepdims=True)
      y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        m = self.momentum
        # Bessel's correction as in the papers' frameworks (class docstring);
        # one value per channel has no spread to correct.
        n = math.prod(xg.shape[1:-1])
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(
            mean.reshape(-1, c), 0
        )
        ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(
            unbiased.reshape(-1, c), 0
        )
    else:
      y = (xf - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


def pad_shortcut(x, features: int, strides: int):
  """Option A shortcut: subsample by ``strides`` and zero-pad the channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(
        f"option A cannot shrink channels ({x.shape[-1]} -> {features})"
    )
  if extra:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
  return x


def bn_factory(cfg) -> functools.partial:
  """BatchNorm constructor bound to the model config's BN settings."""
  return functools.partial(
      BatchNorm,
      momentum=cfg.bn_momentum,
      epsilon=cfg.bn_epsilon,
      group_size=cfg.bn_group_size,
      dtype=jnp.dtype(cfg.dtype),
  )
