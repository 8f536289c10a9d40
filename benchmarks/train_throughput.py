"""Images/s of the full training loop against the bare compiled step.

ResNet-20, batch 128. The full loop is
``resflax.training.train_and_evaluate`` (the CLI path: on-device sampling and
augmentation, metrics fetched and logged, TensorBoard events, checkpoints)
at the default intervals (``--log-every``, ``--checkpoint-every`` change
them). The bare step is the same compiled step
(``resflax.training.loop.make_step`` of ``step_on_dataset``) called in a
loop with nothing else.
Compilation and the final evaluation are excluded from both. Runs alternate
(bare, full, bare, full, ...) in one process; the last line is the ratio.

  python benchmarks/train_throughput.py [--steps 100] [--repeats 2]
      [--data ../shared/data/cifar10-jpeg.tar.gz]
"""

import argparse
import os
import statistics
import tempfile
import time

import abstract_step
import jax

from resflax import data as data_lib
from resflax import training
from resflax.config import load_experiment
from resflax.training import feeds

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHIVE = os.path.join(
    HERE, "..", "..", "shared", "data", "cifar10-jpeg.tar.gz"
)


def make_config(args, steps):
  config = load_experiment(
      os.path.join(HERE, "..", "experiments", "cifar_resnet.py"), "20"
  )
  if args.data and os.path.exists(args.data):
    config.data.path = args.data
  else:
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 10_000
  config.data.max_test_images = 500
  config.model.scan = not args.unrolled
  config.train.steps = steps
  config.train.log_every = args.log_every
  config.train.checkpoint_every = args.checkpoint_every
  config.train.eval_every = 0
  return config


def bare(config, steps):
  """Images/s of the compiled step alone (after one compiling call)."""
  dataset = data_lib.load_dataset(config.data)
  feed = feeds.InMemoryFeed(
      [dataset], training.make_mesh(), config.train.eval_batch_size
  )
  _, step, state = abstract_step.engine_step(config, feed)
  args = feed.step_args()
  state = step(state, *args)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state, *args)
  jax.block_until_ready(state)
  return steps * config.train.batch_size / (time.perf_counter() - start)


def full(config):
  with tempfile.TemporaryDirectory() as workdir:
    return training.train_and_evaluate(config, workdir)["images_per_second"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--data", default=ARCHIVE)
  defaults = load_experiment(
      os.path.join(HERE, "..", "experiments", "cifar_resnet.py"), "20"
  ).train
  parser.add_argument("--log-every", type=int, default=defaults.log_every)
  parser.add_argument(
      "--checkpoint-every", type=int, default=defaults.checkpoint_every
  )
  parser.add_argument(
      "--unrolled", action="store_true", help="model.scan=False"
  )
  args = parser.parse_args()
  config = make_config(args, args.steps + 1)
  b, f = [], []
  for r in range(args.repeats):
    b.append(bare(config, args.steps))
    f.append(full(config))
    print(
        f"repeat {r}: bare {b[-1]:.1f} img/s, full loop {f[-1]:.1f} img/s",
        flush=True,
    )
  print(
      f"devices: {jax.devices()}; data: "
      f"{config.data.path or 'synthetic'}; scan={config.model.scan}"
  )
  print(
      f"bare step median {statistics.median(b):.1f} img/s, full loop "
      f"median {statistics.median(f):.1f} img/s"
  )
  ratio = statistics.median(f) / statistics.median(b)
  print(f"full loop / bare step = {ratio:.3f}")


if __name__ == "__main__":
  main()
