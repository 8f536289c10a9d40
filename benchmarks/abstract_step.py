"""The training step and its arguments as shapes only, for benchmarks that
lower and compile ``train.train_step`` without initialising or running it
(``compile_time.py``, ``memory.py``)."""

import functools

import jax
import jax.numpy as jnp

from resflax import models, train


def build(config, num_train: int):
  """The task, the jitted step and abstract (state, data) arguments.

  Args:
    config: an experiment config on 32x32x3 images.
    num_train: training images the step's on-device dataset holds.

  Returns:
    ``(task, step, state, data)``: ``step(state, *data)`` lowers as training
    runs it (state donated).
  """
  model = models.create_model(train.model_config(config, jax.device_count()))
  task = train.Task(model, config, train.make_mesh(), num_train,
                    train.make_optimizer(config.train))
  state = jax.eval_shape(functools.partial(train.init_state, task, 0,
                                           (32, 32, 3)))
  sds = jax.ShapeDtypeStruct
  data = (sds((num_train, 32, 32, 3), jnp.uint8), sds((num_train,), jnp.int32),
          sds((32, 32, 3), jnp.float32), sds((32, 32, 3), jnp.float32))
  step = jax.jit(functools.partial(train.train_step, task), donate_argnums=0)
  return task, step, state, data
