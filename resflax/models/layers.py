"""Leaf layers shared by every network: convolution and batch normalisation."""

import functools
import operator
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. initialise as in fb.resnet.torch: N(0, 2 / (k * k * out_channels)).
he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, k, strides, padding):
  return jax.lax.conv_general_dilated(x, k, strides, padding,
                                      dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu(x, k, strides, padding):
  return _conv(x, k, strides, padding)


def _conv_cpu_fwd(x, k, strides, padding):
  return _conv(x, k, strides, padding), (x, k)


def _conv_cpu_bwd(strides, padding, res, dy):
  # XLA:CPU runs the backward convolutions of a conv inside a while loop (our
  # scanned stages) up to 50x slower than outside one, but forward
  # convolutions at full speed. For stride 1 and odd kernels both gradients
  # are written as forward convolutions.
  x, k = res
  kh, kw, _, _ = k.shape
  if strides != (1, 1) or not (kh % 2 and kw % 2) or isinstance(padding, str):
    return jax.vjp(lambda a, b: _conv(a, b, strides, padding), x, k)[1](dy)
  dx = _conv(dy, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2), (1, 1), padding)
  # dk[a, b, i, o] = sum_{n,h,w} xpad[n, h+a, w+b, i] dy[n, h, w, o]: a conv
  # of x (batch <-> channels swapped) with dy as the kernel. XLA:CPU runs it
  # up to 2.8x faster as a sum over chunks of the batch than in one piece
  # (benchmarks/conv_grad.py).
  n = x.shape[0]
  chunks = n // _DK_CHUNK if n % _DK_CHUNK == 0 else 1
  dk = functools.reduce(operator.add, (
      _conv(xc.transpose(3, 1, 2, 0), dyc.transpose(1, 2, 0, 3), (1, 1),
            padding).transpose(1, 2, 0, 3)
      for xc, dyc in zip(jnp.split(x, chunks), jnp.split(dy, chunks))))
  return dx, dk.astype(k.dtype)


# Images per chunk of the weight gradient on CPU (see _conv_cpu_bwd).
_DK_CHUNK = 16


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def conv2d(x, kernel, strides=(1, 1), padding="SAME"):
  """NHWC x HWIO convolution; on CPU with a loop-friendly backward pass."""
  kh, kw = kernel.shape[:2]
  if padding == "SAME" and tuple(strides) == (1, 1) and kh % 2 and kw % 2:
    padding = (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)
  padding = tuple(map(tuple, padding)) if not isinstance(padding, str) else padding
  if jax.default_backend() == "cpu":
    return _conv_cpu(x, kernel, tuple(strides), padding)
  return _conv(x, kernel, tuple(strides), padding)


class Conv(nn.Module):
  """Square convolution, symmetric padding, float32 weights, He init."""
  features: int
  kernel: int
  strides: int = 1
  use_bias: bool = False
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.param("kernel", he_init,
                   (self.kernel, self.kernel, x.shape[-1], self.features),
                   jnp.float32)
    pad = (self.kernel - 1) // 2
    y = conv2d(x.astype(self.dtype), k.astype(self.dtype),
               (self.strides, self.strides), ((pad, pad), (pad, pad)))
    if self.use_bias:
      b = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + b.astype(self.dtype)
    return y


def conv(features: int, kernel: int, strides: int = 1, *, dtype=jnp.float32,
         name: Optional[str] = None, use_bias: bool = False,
         bias_init=nn.initializers.zeros) -> Conv:
  """A square convolution with 'same'-style padding, float32 weights."""
  return Conv(features, kernel, strides, use_bias, bias_init, dtype,
              name=name)


class BatchNorm(nn.Module):
  """Batch normalisation whose batch statistics can be taken per group.

  ``group_size`` > 0 normalises every group of that many consecutive examples
  with its own statistics: the papers trained with 64 images per GPU, and
  this reproduces it on any number of devices (the batch axis is sharded in
  contiguous blocks, so a group never straddles devices when the per-device
  batch is a multiple of it). ``group_size`` = 0 uses the whole batch.

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
        ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(
            mean.reshape(-1, c), 0)
        ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(
            var.reshape(-1, c), 0)
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
        f"option A cannot shrink channels ({x.shape[-1]} -> {features})")
  if extra:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
  return x


def bn_factory(cfg) -> functools.partial:
  """BatchNorm constructor bound to the model config's BN settings."""
  return functools.partial(BatchNorm, momentum=cfg.bn_momentum,
                           epsilon=cfg.bn_epsilon, group_size=cfg.bn_group_size,
                           dtype=jnp.dtype(cfg.dtype))
