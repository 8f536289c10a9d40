"""Weight gradient of one 3x3 convolution on CPU: XLA's against resflax's.

``resflax.models.cpu_conv.conv2d`` (the convolution of every resflax
network; model key ``cpu_conv_grad='auto'``, the default) computes the
weight gradient on CPU as a sum over 16-image chunks of the batch (each a
forward convolution), where XLA's own gradient is one convolution over the
whole batch. For each shape (batch, channels, image size: ResNet-20's three
stages, an ImageNet stage and WRN-28-10's first stage) both are jitted
alone, checked equal, and timed alternately; the minimum of ``--repeats``
is kept. The last line is the geometric mean over shapes of XLA's time /
resflax's time.

  python benchmarks/conv_grad.py [--repeats 5]
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from resflax.models import cpu_conv

SHAPES = (
    (128, 16, 32),
    (128, 32, 16),
    (128, 64, 8),
    (32, 64, 56),
    (128, 160, 32),
)


def weight_grads(batch: int, channels: int, size: int):
  """Jitted weight-gradient functions (XLA's, resflax's) and their inputs."""
  rng = np.random.default_rng(channels)
  x = jnp.asarray(
      rng.standard_normal((batch, size, size, channels), np.float32)
  )
  dy = jnp.asarray(
      rng.standard_normal((batch, size, size, channels), np.float32)
  )
  k = jnp.asarray(
      rng.standard_normal((3, 3, channels, channels), np.float32) * 0.1
  )
  xla = lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  ours = lambda a, b: cpu_conv.conv2d(a, b)
  grad = lambda conv: jax.jit(
      lambda x, k, dy: jax.vjp(lambda k_: conv(x, k_), k)[1](dy)[0]
  )
  return {"xla": grad(xla), "resflax": grad(ours)}, (x, k, dy)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform}; min of "
      f"{args.repeats}, alternated"
  )
  ratios = []
  for batch, channels, size in SHAPES:
    fns, inputs = weight_grads(batch, channels, size)
    want = fns["xla"](*inputs)
    got = fns["resflax"](*inputs)
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert err < 1e-4, f"gradients differ: relative error {err:.1e}"
    best = {k: math.inf for k in fns}
    for _ in range(args.repeats):
      for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*inputs))
        best[name] = min(best[name], time.perf_counter() - start)
    ratios.append(best["xla"] / best["resflax"])
    print(
        f"batch {batch:3d}, {channels:3d} channels, {size}x{size}: XLA "
        f"{best['xla'] * 1e3:8.1f} ms, resflax {best['resflax'] * 1e3:8.1f}"
        f" ms, XLA / resflax {ratios[-1]:.2f}x (max rel. diff {err:.0e})",
        flush=True,
    )
  print(
      "weight gradient, XLA / resflax (geometric mean over "
      f"{len(SHAPES)} shapes): {math.exp(np.mean(np.log(ratios))):.2f}x"
  )


if __name__ == "__main__":
  main()
