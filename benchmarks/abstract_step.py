"""The training step of the engine, for the benchmarks.

``build`` gives the step and its arguments as shapes only, for benchmarks
that lower and compile ``resflax.training.step_on_dataset`` without
initialising or running it (``compile_time.py``, ``memory.py``).
``engine_step`` gives the step and initial state that
``resflax.training.train_and_evaluate`` builds, on a dataset held on the
devices, for benchmarks that time steps (``accelerator_check.py``,
``parallel_runs.py``, ``train_throughput.py``, ``vs_pytorch.py``).
"""

import functools

import jax
import jax.numpy as jnp

from resflax import training
from resflax.training import loop, runs


def build(config, num_train: int):
  """The run spec, the jitted step and abstract (state, data) arguments.

  Args:
    config: an experiment config on 32x32x3 images.
    num_train: training images the step's on-device dataset holds.

  Returns:
    ``(spec, step, state, data)``: ``step(state, *data)`` lowers as training
    runs one run (``step_on_dataset``, state donated).
  """
  spec = training.build_run(config, config.model.num_classes,
                            num_train=num_train)
  state = jax.eval_shape(functools.partial(training.init_state, spec, 0,
                                           (32, 32, 3)))
  sds = jax.ShapeDtypeStruct
  data = (sds((num_train, 32, 32, 3), jnp.uint8), sds((num_train,), jnp.int32),
          sds((32, 32, 3), jnp.float32), sds((32, 32, 3), jnp.float32))
  # The program loop.make_step compiles for one run; it needs a feed, and
  # here there is no data, only its shapes.
  step = jax.jit(functools.partial(training.step_on_dataset, spec),
                 donate_argnums=0)
  return spec, step, state, data


def run_group(config) -> loop.Runs:
  """The engine's runs of ``config`` (``runs.run_configs``), no workdir."""
  return loop.Runs(config, runs.run_configs(config), workdir="",
                   is_main=False)


def engine_step(config, feed):
  """The engine's step and initial state of ``config`` on ``feed``'s data.

  Args:
    config: an experiment config; ``train.parallel_runs > 1`` stacks its
      runs (``resflax.training.runs.run_configs``) on a leading axis.
    feed: a ``resflax.training.feeds.InMemoryFeed`` whose dataset every run
      shares.

  Returns:
    ``(spec, step, state)``: ``step(state, *feed.step_args())`` is one step
    of every run, as ``train_and_evaluate`` compiles it (state donated);
    ``state`` is the runs' initial state. A single run's ``step`` is a
    ``jax.jit`` function (it has ``lower``).
  """
  spec = training.build_run(config, feed.num_classes,
                            num_train=feed.num_train)
  group = run_group(config)
  return (spec, loop.make_step(group, spec, feed),
          loop.initial_state(group, spec, feed.image_shape))
