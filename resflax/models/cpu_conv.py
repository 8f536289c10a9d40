"""A convolution whose backward pass suits XLA:CPU, behind a switch.

What it works around: XLA:CPU computes a convolution's gradients slowly.
Its backward convolutions inside a while loop (the scanned stages of
``network.py``) ran much slower than its forward ones when this was first
written (not benchmarked in this repository), and its weight-gradient
convolution over a whole batch is slower than the same sum taken over
chunks of the batch (measured, below). ``conv2d``'s custom VJP writes both
gradients of a stride-1, odd-kernel convolution as forward convolutions and
sums the weight gradient over chunks of ``DK_CHUNK`` images. Other
convolutions (strided, even kernels) keep XLA's own gradients. Values and
gradients equal XLA's (tests/test_models.py).

What was measured: ``benchmarks/conv_grad.py`` times the weight gradient of
one 3x3 convolution, XLA's against the chunked one, at five shapes (ResNet-20's
three stages, an ImageNet stage, WRN-28-10's first stage); on the 2-core CPU
of benchmarks/RESULTS.md the chunked gradient was 1.02x to 2.78x faster,
1.55x in geometric mean, never slower.

The switch is the model key ``cpu_conv_grad`` (``MODES``):
  "auto"  the custom gradient on a CPU backend with one device, XLA's
          elsewhere (default). Several CPU devices (the fake devices of
          tests and compile checks) take XLA's: with the batch sharded, the
          partitioner moves every chunk between devices, and the step
          compiled 3-5x slower (benchmarks/RESULTS.md); a GPU or TPU never
          takes the custom gradient in "auto";
  "on"    the custom gradient on every backend;
  "off"   XLA's own gradient everywhere (the plain ``lax`` convolution).
"""

import functools
import operator

import jax
import jax.numpy as jnp

MODES = ("auto", "on", "off")

# Images per chunk of the weight gradient (see _conv_cpu_bwd).
DK_CHUNK = 16

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, k, strides, padding):
  return jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=_DN
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu(x, k, strides, padding):
  return _conv(x, k, strides, padding)


def _conv_cpu_fwd(x, k, strides, padding):
  return _conv(x, k, strides, padding), (x, k)


def _conv_cpu_bwd(strides, padding, res, dy):
  # Only stride 1 with odd kernels and explicit padding has both gradients
  # as forward convolutions of the same padding.
  x, k = res
  kh, kw, _, _ = k.shape
  if strides != (1, 1) or not (kh % 2 and kw % 2) or isinstance(padding, str):
    return jax.vjp(lambda a, b: _conv(a, b, strides, padding), x, k)[1](dy)
  dx = _conv(dy, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2), (1, 1), padding)
  # dk[a, b, i, o] = sum_{n,h,w} xpad[n, h+a, w+b, i] dy[n, h, w, o]: a conv
  # of x (batch <-> channels swapped) with dy as the kernel, summed over
  # chunks of the batch because XLA:CPU runs the chunks faster than one piece.
  n = x.shape[0]
  chunks = n // DK_CHUNK if n % DK_CHUNK == 0 else 1
  dk = functools.reduce(
      operator.add,
      (
          _conv(
              xc.transpose(3, 1, 2, 0),
              dyc.transpose(1, 2, 0, 3),
              (1, 1),
              padding,
          ).transpose(1, 2, 0, 3)
          for xc, dyc in zip(jnp.split(x, chunks), jnp.split(dy, chunks))
      ),
  )
  return dx, dk.astype(k.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def uses_custom_gradient(mode: str = "auto") -> bool:
  """Whether ``conv2d`` with ``mode`` takes the custom VJP on this backend.

  Raises:
    ValueError: ``mode`` is not one of ``MODES``.
  """
  if mode not in MODES:
    raise ValueError(
        f"model.cpu_conv_grad={mode!r} is not valid; choose one "
        f"of {', '.join(MODES)}"
    )
  if mode == "auto":
    return jax.default_backend() == "cpu" and jax.device_count() == 1
  return mode == "on"


def conv2d(x, kernel, strides=(1, 1), padding="SAME", mode: str = "auto"):
  """NHWC x HWIO convolution with the gradient chosen by ``mode``.

  Args:
    x: NHWC input.
    kernel: HWIO kernel.
    strides: spatial strides.
    padding: "SAME", "VALID" or ``((top, bottom), (left, right))``.
    mode: one of ``MODES`` (the model key ``cpu_conv_grad``).

  Returns:
    The convolution, equal to ``lax.conv_general_dilated``'s in value and
    gradients whatever the mode.
  """
  kh, kw = kernel.shape[:2]
  strides = tuple(strides)
  # "SAME" at stride 1 with an odd kernel is symmetric padding; spelled out,
  # the custom gradient can reuse it.
  if padding == "SAME" and strides == (1, 1) and kh % 2 and kw % 2:
    padding = (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2)
  if not isinstance(padding, str):
    padding = tuple(map(tuple, padding))
  if uses_custom_gradient(mode):
    return _conv_cpu(x, kernel, strides, padding)
  return _conv(x, kernel, strides, padding)
