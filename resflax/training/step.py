"""The compiled functions of training: the SGD update and evaluation.

Three step functions, from the inside out:

- ``sgd_update(spec, state, x, y)``: loss, gradient, SGD with momentum and
  weight decay, the non-finite guard, on a batch that is already normalised.
- ``step_on_dataset(spec, state, images, labels, mean, std)``: samples the
  step's batch from a dataset held on the devices (a pure function of the
  state's rng and step), augments and normalises it, then ``sgd_update``.
- ``step_on_batch(spec, state, images, labels, mean, std)``: the same on a
  uint8 batch the host streamed in (ImageNet), already augmented.

No step syncs with the host: the loss and the non-finite guard are
accumulated in the state and read only at the reporting interval.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from resflax import data as data_lib
from resflax.models import masks, scoring
from resflax.training.state import (
    RunSpec,
    TrainMetrics,
    TrainState,
    learning_rate,
    make_optimizer,
    warmup_update,
)

PyTree = Any


def _step_keys(state):
  run_key = jax.random.wrap_key_data(state.rng)
  step_key = jax.random.fold_in(jax.random.fold_in(run_key, 1), state.step)
  return jax.random.split(step_key, 3)  # augmentation, dropout, paths


def _tree_all_finite(tree) -> jax.Array:
  leaves = [
      jnp.all(jnp.isfinite(x))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves))


def _select(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def dataset_batch(
    spec: RunSpec,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    mean: jax.Array,
    std: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The normalised, augmented batch that the state's rng and step select."""
  cfg = spec.config
  run_key = jax.random.wrap_key_data(state.rng)
  idx = data_lib.sample_batch_indices(
      jax.random.fold_in(run_key, 0),
      state.step,
      spec.num_train,
      cfg.train.batch_size,
  )
  idx = jax.lax.with_sharding_constraint(idx, spec.batch_sharding)
  x = data_lib.normalize(
      images[idx], mean, std, dtype=jnp.dtype(cfg.model.dtype)
  )
  if cfg.data.augment:
    x = data_lib.augment(_step_keys(state)[0], x)
  return x, labels[idx]


def step_on_dataset(
    spec: RunSpec,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    mean: jax.Array,
    std: jax.Array,
) -> TrainState:
  """One step on the batch that the state's rng and step select.

  Args:
    spec: static description of the run.
    state: the train state.
    images, labels: the whole training set, uint8 / int32, on the devices.
    mean, std: normalisation constants.

  Returns:
    The new state.
  """
  x, y = dataset_batch(spec, state, images, labels, mean, std)
  return sgd_update(spec, state, x, y)


def step_on_batch(
    spec: RunSpec,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    mean: jax.Array,
    std: jax.Array,
) -> TrainState:
  """One step on a uint8 batch streamed from the host, already augmented."""
  x = data_lib.normalize(
      images, mean, std, dtype=jnp.dtype(spec.config.model.dtype)
  )
  return sgd_update(spec, state, x, labels)


def _gradients(spec: RunSpec, state: TrainState, x: jax.Array, y: jax.Array):
  """Loss, logits, updated BN statistics and parameter gradients.

  ``train.gradient_modules = k`` (Veit et al. sec. 5, "only training a
  subset of the modules") is read as masking the *gradients*: only k random
  modules' residual branches receive loss gradient in a step. The unchosen
  modules still move, as they would under Torch's SGD: momentum carries
  their earlier updates, weight decay shrinks their weights, and their BN
  running statistics update in the (unchanged) forward pass.
  """
  model = spec.model
  _, drop_key, path_key = _step_keys(state)
  residual_grad = None
  if spec.config.train.gradient_modules:
    # Veit et al. sec. 5: gradients through the residual branches of only k
    # random modules per mini-batch; the forward pass is unchanged.
    residual_grad = masks.random_module_mask(
        path_key, spec.config.train.gradient_modules, model.num_modules
    )
  variables = state.variables

  def loss_fn(params):
    logits, new_vars = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        rng=drop_key,
        residual_grad=residual_grad,
    )
    return scoring.cross_entropy(logits, y).mean(), (logits, new_vars)

  (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables["params"]
  )
  return loss, logits, new_vars, grads


def _descend(spec: RunSpec, state: TrainState, grads):
  """SGD with momentum and weight decay: new parameters and optimiser state.

  The SGD is built at this step's rate (``make_optimizer``): a function of
  the step and the warm-up switch, traced, so no recompile.
  """
  params = state.variables["params"]
  rate = learning_rate(state.step, state.warm, spec.config.train)
  updates, opt_state = make_optimizer(spec.config.train, rate).update(
      grads, state.opt_state, params
  )
  # p + (-rate * d): bit for bit the p - rate * d of the hand-written SGD
  # that older checkpoints were trained with (negation is exact).
  return optax.apply_updates(params, updates), opt_state


def sgd_update(
    spec: RunSpec, state: TrainState, x: jax.Array, y: jax.Array
) -> TrainState:
  """The update on a normalised batch: loss, gradient, SGD, non-finite guard."""
  t = spec.config.train
  step, variables = state.step, state.variables
  loss, logits, new_vars, grads = _gradients(spec, state, x, y)
  params, opt_state = _descend(spec, state, grads)
  wrong = (jnp.argmax(logits, -1) != y).astype(jnp.float32)

  finite = jnp.isfinite(loss) & _tree_all_finite(params)
  first_bad = (~finite) & (state.nonfinite_step < 0)
  if t.on_nonfinite == "skip":
    apply = finite
  else:  # stop: freeze on the first non-finite step; the host stops there.
    apply = finite & (state.nonfinite_step < 0)
  warm, warm_errors = warmup_update(
      state.warm, state.warm_errors, step, wrong.mean(), t.warmup_until_error
  )
  return state.replace(
      step=step + 1,
      variables=_select(apply, {**new_vars, "params": params}, variables),
      opt_state=_select(apply, opt_state, state.opt_state),
      warm=warm,
      warm_errors=warm_errors,
      nonfinite_step=jnp.where(first_bad, step, state.nonfinite_step),
      nonfinite_value=jnp.where(first_bad, loss, state.nonfinite_value),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      metrics=_accumulate(state.metrics, loss, finite, wrong),
  )


def _accumulate(metrics: TrainMetrics, loss, finite, wrong) -> TrainMetrics:
  """Adds a step to the running metrics: its loss if finite, every image."""
  return metrics.replace(
      loss=metrics.loss.merge(
          type(metrics.loss).from_model_output(
              loss=loss[None], mask=finite[None]
          )
      ),
      error=metrics.error.merge(
          type(metrics.error).from_model_output(error=wrong)
      ),
  )


def finiteness(
    spec: RunSpec,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    mean: jax.Array,
    std: jax.Array,
) -> dict[str, PyTree]:
  """Replays a dataset step and says what in it is finite.

  ``state`` is a frozen state whose ``step`` is set back to the step that
  went non-finite; the replay is exact because the batch, augmentation and
  dropout are functions of the rng and step.

  Returns:
    ``{'loss': bool, 'gradients': tree of bool, 'parameters': tree of
    bool}``, one bool per leaf.
  """
  x, y = dataset_batch(spec, state, images, labels, mean, std)
  loss, _, _, grads = _gradients(spec, state, x, y)
  params, _ = _descend(spec, state, grads)
  leaf_finite = lambda t: jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), t)
  return {
      "loss": jnp.isfinite(loss),
      "gradients": leaf_finite(grads),
      "parameters": leaf_finite(params),
  }


def evaluate_split(
    spec: RunSpec,
    variables: PyTree,
    images: jax.Array,
    labels: jax.Array,
    mean,
    std,
    indices: jax.Array,
    mask: jax.Array,
) -> dict[str, jax.Array]:
  """Error and loss over a whole split in one compiled call.

  ``indices``/``mask`` come from ``data.eval_batches``: fixed-shape batches
  scanned on the devices, so the split is evaluated exactly once, without
  host round trips.
  """
  dtype = jnp.dtype(spec.config.model.dtype)

  def body(carry, xs):
    idx, m = xs
    idx = jax.lax.with_sharding_constraint(idx, spec.batch_sharding)
    logits = spec.model.apply(
        variables, data_lib.normalize(images[idx], mean, std, dtype=dtype)
    )
    wrong, loss = scoring.score_batch(logits, labels[idx], m)
    return (carry[0] + wrong, carry[1] + loss), None

  (wrong, loss), _ = jax.lax.scan(body, (0.0, 0.0), (indices, mask))
  n = jnp.sum(mask)
  return {"error": wrong / n, "loss": loss / n}


def evaluate_batch(
    spec: RunSpec,
    variables: PyTree,
    images: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    mean,
    std,
) -> dict[str, jax.Array]:
  """Summed errors, loss and count of one streamed evaluation batch."""
  logits = spec.model.apply(
      variables,
      data_lib.normalize(
          images, mean, std, dtype=jnp.dtype(spec.config.model.dtype)
      ),
  )
  wrong, loss = scoring.score_batch(logits, labels, mask)
  return {"wrong": wrong, "loss": loss, "count": mask.sum()}
