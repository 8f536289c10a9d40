"""Throughput of R runs in one program against the same R runs one by one.

ResNet-20 (experiments/cifar_resnet.py:20, batch 128) on synthetic 32x32
images, on whatever devices JAX finds. "Sequential" trains R runs one after
another with the single-run step of the engine
(``resflax.training.loop.make_step`` of a one-run config: one compiled
program, each run's state in turn); "parallel" trains them together with the
engine's step of ``train.parallel_runs=R`` (the state vmapped over runs).
Both share one on-device dataset (``resflax.training.feeds.InMemoryFeed``).
Compilation and warm-up steps are not timed.

  python benchmarks/parallel_runs.py                  # R=2, 3 timed steps
  python benchmarks/parallel_runs.py --runs 8 --steps 20

The last line printed is the speed-up (parallel images/s over sequential).
"""

import argparse
import os
import platform
import time

import abstract_step
import jax

from resflax import data as data_lib
from resflax import training
from resflax.config import load_experiment
from resflax.training import feeds, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(args):
  config = load_experiment(
      os.path.join(REPO, "experiments", "cifar_resnet.py"), str(args.depth)
  )
  config.data.name = "synthetic"
  config.data.synthetic_train_size = args.train_images
  config.data.synthetic_test_size = 64
  config.train.batch_size = args.batch_size
  config.train.parallel_runs = args.runs
  if (args.batch_size // jax.device_count()) % config.model.bn_group_size:
    config.model.bn_group_size = 0  # BN over each device's whole batch
  return config


def _timed(step, state, n, *data):
  """Runs ``n`` steps after the first call; returns (state, seconds)."""
  state = step(state, *data)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(n):
    state = step(state, *data)
  jax.block_until_ready(state)
  return state, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=2, help="R")
  parser.add_argument(
      "--steps",
      type=int,
      default=3,
      help="timed steps per run (after one untimed step)",
  )
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--train_images", type=int, default=1024)
  args = parser.parse_args()

  config = _config(args)
  training.validate_config(config)
  dataset = data_lib.load_dataset(config.data, seed=config.seed)
  feed = feeds.InMemoryFeed(
      [dataset], training.make_mesh(), config.train.eval_batch_size
  )
  data = feed.step_args()
  configs = runs.run_configs(config)
  r, b = args.runs, args.batch_size
  print(
      f"ResNet-{args.depth}, batch {b}, R={r} runs, {args.steps} timed "
      f"steps per run; {jax.device_count()} x {jax.devices()[0].device_kind}"
      f" ({platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPUs), jax {jax.__version__}"
  )

  # One compiled single-run program; each run starts from its own initial
  # state (its seed), as it would trained alone.
  solo_spec, solo_step, first = abstract_step.engine_step(configs[0], feed)
  tick = time.perf_counter()
  jax.block_until_ready(solo_step(first, *data))
  solo_compile = time.perf_counter() - tick
  seconds = 0.0
  for c in configs:
    state = runs.initial_state(
        abstract_step.run_group(c), solo_spec, feed.image_shape
    )
    _, dt = _timed(solo_step, state, args.steps, *data)
    seconds += dt
  sequential = r * args.steps * b / seconds
  print(
      f"sequential: {sequential:8.1f} images/s ({seconds:.1f} s; "
      f"compile {solo_compile:.1f} s)"
  )

  _, step, state = abstract_step.engine_step(config, feed)
  tick = time.perf_counter()
  state = step(state, *data)
  jax.block_until_ready(state)
  par_compile = time.perf_counter() - tick
  _, seconds = _timed(step, state, args.steps, *data)
  together = r * args.steps * b / seconds
  print(
      f"parallel:   {together:8.1f} images/s ({seconds:.1f} s; "
      f"compile {par_compile:.1f} s)"
  )
  print(f"speed-up: {together / sequential:.2f}x")


if __name__ == "__main__":
  main()
