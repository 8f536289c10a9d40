"""Training learns: the step cuts the loss, and a broken step does not.

Every other fast test would pass with the SGD update's sign flipped; this
one fails then (``pytest -k learns`` selects it).
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from resflax import data as data_lib
from resflax import training
from resflax.config import base_config
from resflax.training import runs


def separable_config():
  """Four well-separated colour classes; a 5-layer net without augmentation."""
  c = base_config()
  c.model.depth = 5
  c.model.block = "single"
  c.model.widths = (8, 8, 8)
  c.data.name = "synthetic"
  c.data.num_classes = 4
  c.data.image_size = 8
  c.data.synthetic_train_size = 256
  c.data.synthetic_test_size = 64
  c.data.augment = False
  c.train.batch_size = 32
  c.train.lr_boundaries = ()
  c.train.warmup_steps = 0
  c.train.learning_rate = 0.05
  return c


@functools.cache
def _setup():
  config = separable_config()
  dataset = data_lib.load_dataset(config.data, seed=0)
  spec = training.build_run(
      config,
      dataset.num_classes,
      dataset.num_train,
      training.make_mesh(jax.devices()[:1]),
  )
  data = tuple(
      jax.device_put(a, spec.replicated)
      for a in (
          dataset.train_images,
          dataset.train_labels,
          dataset.mean,
          dataset.std,
      )
  )
  return config, dataset, spec, data


@functools.cache
def _step():
  """The real step with the learning rate as data: one compilation serves
  the working step and the broken ones."""
  _, _, spec, _ = _setup()

  def step(state, lr, *data):
    view = runs.ConfigView(spec.config, {"train.learning_rate": lr})
    return training.step_on_dataset(
        dataclasses.replace(spec, config=view), state, *data
    )

  return jax.jit(step)


def learned(lr, steps=30) -> bool:
  """The assertion every variant faces: the mean training loss of the last
  5 of ``steps`` steps is at most half that of the first 5."""
  _, _, spec, data = _setup()
  state = training.init_state(spec, 0, (8, 8, 3))
  losses = []
  for _ in range(steps):
    before = float(state.metrics.loss.total)
    state = _step()(state, np.float32(lr), *data)
    losses.append(float(state.metrics.loss.total) - before)
  return bool(np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]))


def test_training_learns_a_separable_task():
  assert learned(separable_config().train.learning_rate)


@pytest.mark.parametrize("lr", [-0.05, 0.0], ids=["sign_flipped", "zero_lr"])
def test_training_learns_fails_for_a_broken_step(lr):
  # A negative learning rate flips the sign of the whole update.
  assert not learned(lr)


def test_error_based_warmup_switches_once_the_windowed_error_is_under_80():
  """He et al. 2016: lr 0.01 until the training error is below 80%, then
  0.1. The switch follows the first step after which the error over the
  last ``warmup_window`` batches (unseen ones all wrong) is < 80%."""
  config = separable_config()
  config.data.num_classes = 10
  config.train.warmup_until_error = 0.8
  config.train.warmup_window = 4
  config.train.warmup_learning_rate = 0.03
  config.train.learning_rate = 0.1
  dataset = data_lib.load_dataset(config.data, seed=0)
  spec = training.build_run(
      config, 10, dataset.num_train, training.make_mesh(jax.devices()[:1])
  )
  data = tuple(
      jax.device_put(a, spec.replicated)
      for a in (
          dataset.train_images,
          dataset.train_labels,
          dataset.mean,
          dataset.std,
      )
  )
  state = training.init_state(spec, 0, (8, 8, 3))
  step = jax.jit(functools.partial(training.step_on_dataset, spec))
  batch_errors, rates = [], []
  for s in range(40):
    rates.append(float(training.learning_rate(s, state.warm, config.train)))
    before = float(state.metrics.error.total)
    state = step(state, *data)
    batch_errors.append((float(state.metrics.error.total) - before) / 32)
  padded = [1.0] * 3 + batch_errors  # the window before 4 batches were seen
  windowed = [np.mean(padded[s : s + 4]) for s in range(40)]
  first = next(s for s, e in enumerate(windowed) if e < 0.8)
  assert first > 0, batch_errors  # the warm-up really ran
  # It waited for the window: one batch under 80% did not end it.
  assert first > next(s for s, e in enumerate(batch_errors) if e < 0.8)
  assert rates[: first + 1] == [pytest.approx(0.03)] * (first + 1)
  assert rates[first + 1 :] == [pytest.approx(0.1)] * (39 - first)
