"""Training and evaluation: one compiled step, data-parallel over a mesh.

``train_and_evaluate(config, workdir)`` is the whole pipeline: it validates
the config, loads the data into device memory, builds (or restores) the
train state, runs the jitted step in a loop with periodic evaluation,
checkpoints and logging, and writes ``workdir/results.json``.

The train state is a plain pytree::

  {'step': i32, 'variables': {params, batch_stats, lesion},
   'opt_state': optax state, 'rng': u32 key data, 'warm': bool,
   'nonfinite_step': i32 (-1: none), 'nonfinite_value': f32,
   'skipped': i32, 'metrics': {'loss': f32, 'errors': i32, 'seen': i32}}

Everything the step needs (data order, augmentation, dropout) is a pure
function of ``rng`` and ``step``, so a resumed run continues exactly where
the interrupted one was, and no step ever syncs with the host: the loss
and a non-finite guard are accumulated in the state and read only at the
logging interval.
"""

import dataclasses
import functools
import json
import os
import platform
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resflax.training import checkpoint as checkpoint_lib
from resflax import data as data_lib
from resflax.training import metrics as metrics_lib
from resflax import models
from resflax import fileio as results_lib
from resflax.config import flatten
from resflax.errors import ConfigError, TrainingError

PyTree = Any




# --------------------------------------------------------------------------
# Config checks (before any data loading or compilation)


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: Optional[int] = None) -> models.ModelConfig:
  """Checks every key that could fail later; returns the model config.

  Raises:
    ConfigError / ValueError: one line naming the key and what is allowed.
  """
  t = config.train
  num_devices = num_devices or jax.device_count()
  if t.steps <= 0:
    raise ConfigError(f"config.train.steps={t.steps} must be > 0")
  if t.batch_size <= 0 or t.batch_size % num_devices:
    raise ConfigError(
        f"config.train.batch_size={t.batch_size} must be a positive multiple "
        f"of the device count ({num_devices})")
  if t.eval_batch_size <= 0 or t.eval_batch_size % num_devices:
    raise ConfigError(
        f"config.train.eval_batch_size={t.eval_batch_size} must be a positive "
        f"multiple of the device count ({num_devices})")
  if t.on_nonfinite not in ("stop", "skip"):
    raise ConfigError(f"config.train.on_nonfinite={t.on_nonfinite!r}; choose "
                      "'stop' or 'skip'")
  if sorted(t.lr_boundaries) != list(t.lr_boundaries):
    raise ConfigError("config.train.lr_boundaries must be increasing, got "
                      f"{tuple(t.lr_boundaries)}")
  for key in ("learning_rate", "weight_decay", "momentum"):
    if getattr(t, key) < 0:
      raise ConfigError(f"config.train.{key} must be >= 0")
  for key in ("log_every", "eval_every", "checkpoint_every", "warmup_steps",
              "gradient_modules"):
    if getattr(t, key) < 0:
      raise ConfigError(f"config.train.{key} must be >= 0")
  if t.parallel_runs < 1:
    raise ConfigError("config.train.parallel_runs must be >= 1")
  if t.parallel_runs > 1 or tuple(t.run_overrides):
    from resflax import parallel  # pylint: disable=g-import-not-at-top
    parallel.validate(config, num_devices)  # run_overrides and each run
  try:
    model_cfg = models.create_model(model_config(config, num_devices)).config
  except ValueError as e:
    raise ConfigError(str(e)) from None
  per_device = t.batch_size // num_devices
  if model_cfg.bn_group_size and per_device % model_cfg.bn_group_size:
    raise ConfigError(
        f"config.model.bn_group_size={model_cfg.bn_group_size} must divide "
        f"the per-device batch ({per_device})")
  return model_cfg


def model_config(config, num_devices: int) -> Dict[str, Any]:
  """The model keys with the trainer's BN choice applied."""
  m = config.model.to_dict()
  m["widths"] = tuple(m.get("widths") or ())
  if not config.train.bn_sync and not m.get("bn_group_size"):
    m["bn_group_size"] = config.train.batch_size // num_devices
  return m


# --------------------------------------------------------------------------
# Optimisation


def learning_rate(step, warm, train_cfg) -> jax.Array:
  """The step's learning rate: warm-up, then piecewise constant decay.

  Args:
    step: int32 step (traced).
    warm: bool, True while the error-based warm-up is still on.
    train_cfg: ``config.train``.
  """
  t = train_cfg
  scale = (t.steps / t.schedule_steps) if t.scale_schedule else 1.0
  boundaries = jnp.asarray([int(round(b * scale)) for b in t.lr_boundaries]
                           or [np.iinfo(np.int32).max], jnp.int32)
  passed = jnp.sum(step >= boundaries) if t.lr_boundaries else 0
  lr = t.learning_rate * jnp.power(t.lr_decay, passed)
  warmup_steps = int(round(t.warmup_steps * scale))
  in_warmup = step < warmup_steps
  if t.warmup_until_error > 0:
    in_warmup = in_warmup | warm
  return jnp.where(in_warmup, t.warmup_learning_rate, lr).astype(jnp.float32)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """SGD direction with weight decay added to the gradient (as in Torch).

  The learning rate is applied in the step (it depends on the error-based
  warm-up state), so the same transformation serves every schedule.
  """
  return optax.chain(
      optax.add_decayed_weights(train_cfg.weight_decay),
      optax.trace(decay=train_cfg.momentum, nesterov=train_cfg.nesterov))


# --------------------------------------------------------------------------
# Steps


@dataclasses.dataclass
class Task:
  """Everything the compiled functions close over (static for jit)."""
  model: models.Network
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  num_train: int
  optimizer: optax.GradientTransformation

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())


def init_state(task: Task, seed: int, image_shape) -> PyTree:
  """A fresh train state for ``seed``."""
  rng = jax.random.key(seed)
  init_key, run_key = jax.random.split(rng)
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = task.model.init(init_key, dummy)
  return {
      "step": jnp.zeros((), jnp.int32),
      "variables": variables,
      "opt_state": task.optimizer.init(variables["params"]),
      "rng": jax.random.key_data(run_key),
      "warm": jnp.asarray(task.config.train.warmup_until_error > 0),
      "nonfinite_step": jnp.full((), -1, jnp.int32),
      "nonfinite_value": jnp.zeros((), jnp.float32),
      "skipped": jnp.zeros((), jnp.int32),
      "metrics": {"loss": jnp.zeros((), jnp.float32),
                  "errors": jnp.zeros((), jnp.int32),
                  "seen": jnp.zeros((), jnp.int32)},
  }


def _tree_all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


def _select(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def train_step(task: Task, state: PyTree, images: jax.Array,
               labels: jax.Array, mean: jax.Array, std: jax.Array) -> PyTree:
  """One SGD step on the batch the state's rng and step select.

  Args:
    task: static description of the run.
    state: the train state (see module docstring).
    images, labels: the whole training set, uint8 / int32, on device.
    mean, std: normalisation constants.

  Returns:
    The new state.
  """
  cfg = task.config
  step = state["step"]
  run_key = jax.random.wrap_key_data(state["rng"])
  data_key = jax.random.fold_in(run_key, 0)
  aug_key = _step_keys(state)[0]
  idx = data_lib.sample_batch_indices(data_key, step, task.num_train,
                                      cfg.train.batch_size)
  idx = jax.lax.with_sharding_constraint(idx, task.batch_sharding)
  x = data_lib.normalize(images[idx], mean, std,
                         dtype=jnp.dtype(cfg.model.dtype))
  if cfg.data.augment:
    x = data_lib.augment(aug_key, x)
  return sgd_step(task, state, x, labels[idx])


def batch_step(task: Task, state: PyTree, images: jax.Array,
               labels: jax.Array, mean: jax.Array, std: jax.Array) -> PyTree:
  """One SGD step on a batch streamed from the host (ImageNet).

  ``images`` are uint8, already augmented by the input pipeline.
  """
  x = data_lib.normalize(images, mean, std,
                         dtype=jnp.dtype(task.config.model.dtype))
  return sgd_step(task, state, x, labels)


def _step_keys(state):
  run_key = jax.random.wrap_key_data(state["rng"])
  step_key = jax.random.fold_in(jax.random.fold_in(run_key, 1), state["step"])
  return jax.random.split(step_key, 3)  # augmentation, dropout, paths


def sgd_step(task: Task, state: PyTree, x: jax.Array, y: jax.Array) -> PyTree:
  """The update on a normalised batch: loss, gradient, SGD, NaN guard."""
  cfg = task.config
  model = task.model
  step = state["step"]
  _, drop_key, path_key = _step_keys(state)
  residual_grad = None
  if cfg.train.gradient_modules:
    # Veit et al. sec. 5: gradients through the residual branches of only k
    # random modules per mini-batch; the forward pass is unchanged.
    scores = jax.random.uniform(path_key, (model.num_modules,))
    rank = jnp.argsort(jnp.argsort(scores))
    residual_grad = (rank < cfg.train.gradient_modules).astype(jnp.float32)

  variables = state["variables"]

  def loss_fn(params):
    logits, new_vars = model.apply({**variables, "params": params}, x,
                                   train=True, rng=drop_key,
                                   residual_grad=residual_grad)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, new_vars)

  (loss, (logits, new_vars)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(variables["params"])
  direction, opt_state = task.optimizer.update(grads, state["opt_state"],
                                               variables["params"])
  lr = learning_rate(step, state["warm"], cfg.train)
  params = jax.tree.map(lambda p, d: p - lr * d, variables["params"],
                        direction)
  errors = jnp.sum(jnp.argmax(logits, -1) != y).astype(jnp.int32)

  finite = jnp.isfinite(loss) & _tree_all_finite(params)
  first_bad = (~finite) & (state["nonfinite_step"] < 0)
  if cfg.train.on_nonfinite == "skip":
    apply = finite
  else:  # stop: freeze on the first non-finite step; the host stops there.
    apply = finite & (state["nonfinite_step"] < 0)
  new_variables = {**new_vars, "params": params}
  return {
      "step": step + 1,
      "variables": _select(apply, new_variables, variables),
      "opt_state": _select(apply, opt_state, state["opt_state"]),
      "rng": state["rng"],
      "warm": state["warm"] & ~(errors < cfg.train.warmup_until_error
                                * cfg.train.batch_size),
      "nonfinite_step": jnp.where(first_bad, step, state["nonfinite_step"]),
      "nonfinite_value": jnp.where(first_bad, loss, state["nonfinite_value"]),
      "skipped": state["skipped"] + (~finite).astype(jnp.int32),
      "metrics": {"loss": state["metrics"]["loss"]
                          + jnp.where(finite, loss, 0.0),
                  "errors": state["metrics"]["errors"] + errors,
                  "seen": state["metrics"]["seen"] + y.shape[0]},
  }


def evaluate(task: Task, variables: PyTree, images: jax.Array,
             labels: jax.Array, mean, std, indices: jax.Array,
             mask: jax.Array) -> Dict[str, jax.Array]:
  """Error and loss over a whole split in one compiled call.

  ``indices``/``mask`` come from ``data.eval_batches``: fixed-shape batches
  scanned on device, so the split is evaluated exactly once, without host
  round trips.
  """
  dtype = jnp.dtype(task.config.model.dtype)

  def body(carry, xs):
    idx, m = xs
    idx = jax.lax.with_sharding_constraint(idx, task.batch_sharding)
    logits = task.model.apply(variables, data_lib.normalize(
        images[idx], mean, std, dtype=dtype))
    y = labels[idx]
    wrong = (jnp.argmax(logits, -1) != y).astype(jnp.float32) * m
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y) * m
    return (carry[0] + wrong.sum(), carry[1] + loss.sum()), None

  (wrong, loss), _ = jax.lax.scan(body, (0.0, 0.0), (indices, mask))
  n = jnp.sum(mask)
  return {"error": wrong / n, "loss": loss / n}


# --------------------------------------------------------------------------
# The loop


class _StopSignal:
  """Turns SIGTERM (what preemption sends) into a flag the loop checks."""

  def __init__(self):
    self.received = None
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: preemption is not ours to catch
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def fetch(tree):
  """Host copy of replicated (possibly multi-process) arrays: one sync."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(a.addressable_data(0))
    return np.asarray(a)
  return jax.tree.map(get, tree)


def place_examples(mesh, images, labels):
  """Puts a split of the dataset on the devices of ``mesh``.

  One process: every device holds the whole split, so sampling a batch is a
  local gather. Several processes: each process reads and keeps only its
  contiguous shard (``data.shard_for_process``), the split is sharded over
  the mesh's data axis, and the compiled step gathers batches across hosts.
  The last ``len % device_count`` examples are dropped so shards are equal.
  """
  if jax.process_count() == 1:
    rep = NamedSharding(mesh, P())
    return jax.device_put(images, rep), jax.device_put(labels, rep)
  n = (len(labels) // mesh.size) * mesh.size
  sharding = NamedSharding(mesh, P("data"))
  local_images, local_labels = data_lib.shard_for_process(
      images[:n], labels[:n], jax.process_index(), jax.process_count())
  return (jax.make_array_from_process_local_data(
              sharding, local_images, (n,) + images.shape[1:]),
          jax.make_array_from_process_local_data(sharding, local_labels, (n,)))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over every device (all processes)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1), ("data",))


# Keys that change how often or how things happen, not what is computed
# (the model keys keep parameters and results): a resumed run may change
# them freely, e.g. unroll on a GPU a run begun scanned on a CPU.
_VOLATILE_KEYS = ("train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.max_checkpoints", "train.allow_config_change",
                  "data.path", "data.tfds_data_dir",
                  "model.scan", "model.scan_unroll", "model.remat")


def check_workdir_config(config, workdir: str) -> None:
  """Refuses a workdir that holds a run of a different config.

  Raises:
    ConfigError: listing the differing keys, unless
      ``config.train.allow_config_change`` is set.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = flatten(json.load(f))
  now = flatten(json.loads(config.to_json()))
  diff = sorted(k for k in set(saved) | set(now)
                if k not in _VOLATILE_KEYS and saved.get(k) != now.get(k))
  if diff and not config.train.allow_config_change:
    lines = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
                      for k in diff[:10])
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({lines}). "
        "Use another --workdir, or set --config.train.allow_config_change="
        "True to continue it anyway.")
  if diff:
    logging.warning("continuing %s despite config changes: %s", workdir, diff)


def _versions() -> Dict[str, str]:
  import flax
  import orbax.checkpoint
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", ""),
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": orbax.checkpoint.__version__}


def is_streamed(config) -> bool:
  """ImageNet does not fit in memory: it is streamed from the host."""
  return str(config.data.name).startswith("imagenet") and not config.data.path


class InMemoryData:
  """A dataset held on the devices; batches are sampled inside the step."""
  step_impl = staticmethod(train_step)

  def __init__(self, dataset, mesh, eval_batch_size: int):
    self._rep = NamedSharding(mesh, P())
    put = lambda a: jax.device_put(a, self._rep)
    self.images, self.labels = place_examples(mesh, dataset.train_images,
                                              dataset.train_labels)
    self.mean, self.std = put(dataset.mean), put(dataset.std)
    self.num_train = int(self.labels.shape[0])
    self.num_classes = dataset.num_classes
    self.image_shape = dataset.image_shape
    self.eval_split = dataset.eval_split
    self._splits = {"eval": (dataset.eval_images, dataset.eval_labels),
                    "test": (dataset.test_images, dataset.test_labels)}
    self._placed = {}
    self._mesh, self._eval_batch_size = mesh, eval_batch_size
    self._eval_fn = None

  def start(self, task, seed, step):
    del seed, step  # the batch is a function of the state's rng and step
    self._eval_fn = jax.jit(functools.partial(evaluate, task))

  def step_args(self):
    return self.images, self.labels, self.mean, self.std

  def evaluate(self, variables, split="eval"):
    if split not in self._placed:
      images, labels = place_examples(self._mesh, *self._splits[split])
      layout = data_lib.eval_batches(int(labels.shape[0]),
                                     self._eval_batch_size)
      self._placed[split] = (images, labels,
                             jax.device_put(layout.indices, self._rep),
                             jax.device_put(layout.mask, self._rep))
    images, labels, idx, mask = self._placed[split]
    return fetch(self._eval_fn(variables, images, labels, self.mean,
                               self.std, idx, mask))


class StreamedData:
  """ImageNet through ``data.imagenet_iterator``: each host reads its shard,
  augments on the host, and hands uint8 batches to the compiled step.

  A resumed run restarts the stream seeded by (seed, step): deterministic,
  but not the batches the interrupted run would have seen next.
  """
  step_impl = staticmethod(batch_step)

  def __init__(self, config, mesh):
    self._config, self._mesh = config, mesh
    size = int(config.data.image_size)
    self.image_shape = (size, size, 3)
    self.num_classes = 1000
    self.num_train = 0
    self.eval_split = "validation"
    rep = NamedSharding(mesh, P())
    self.mean = jax.device_put(data_lib.IMAGENET_MEAN, rep)
    self.std = jax.device_put(data_lib.IMAGENET_STD, rep)
    self._sharding = NamedSharding(mesh, P("data"))
    self._per_host = config.train.batch_size // jax.process_count()
    # Fail now, before compiling, if the data is not there.
    self._train = None
    self._probe = data_lib.imagenet_iterator(
        config.data, "train", self._per_host, seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    self._eval_fn = None

  def _global(self, local, extra_dims):
    n = local.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(
        self._sharding, local, (n,) + extra_dims)

  def start(self, task, seed, step):
    self._train = (self._probe if step == 0 else data_lib.imagenet_iterator(
        self._config.data, "train", self._per_host, seed=seed * 7919 + step,
        process_index=jax.process_index(),
        process_count=jax.process_count()))

    def eval_batch(variables, images, labels, mask, mean, std):
      logits = task.model.apply(variables, data_lib.normalize(
          images, mean, std, dtype=jnp.dtype(task.config.model.dtype)))
      wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32) * mask
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels) * mask
      return wrong.sum(), loss.sum(), mask.sum()

    self._eval_fn = jax.jit(eval_batch)

  def step_args(self):
    batch = next(self._train)
    return (self._global(batch["image"], self.image_shape),
            self._global(batch["label"], ()), self.mean, self.std)

  def evaluate(self, variables, split="eval"):
    del split
    per_host = self._config.train.eval_batch_size // jax.process_count()
    totals = np.zeros(3)
    for batch in data_lib.imagenet_iterator(
        self._config.data, "validation", per_host,
        process_index=jax.process_index(),
        process_count=jax.process_count()):
      out = self._eval_fn(variables,
                          self._global(batch["image"], self.image_shape),
                          self._global(batch["label"], ()),
                          self._global(batch["mask"], ()), self.mean, self.std)
      totals += np.array([float(x) for x in fetch(out)])
    return {"error": totals[0] / totals[2], "loss": totals[1] / totals[2]}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if possible) and evaluates.

  Args:
    config: an experiment config (see ``resflax.config.base_config``).
    workdir: run directory: checkpoints, TensorBoard events, results.json.

  Returns:
    The final metrics (the content of ``results.json``).

  Raises:
    ConfigError: invalid config or a workdir holding another config.
    resflax.data.DataError: data that cannot be found or read.
    TrainingError: a non-finite loss or parameters (``on_nonfinite=stop``).
    resflax.checkpoint.CheckpointError: checkpoints that cannot be written
      or restored.
  """
  num_devices = jax.device_count()
  logging.info("process %d of %d; %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), num_devices,
               jax.devices()[0].platform)
  validate_config(config, num_devices)
  check_workdir_config(config, workdir)
  is_main = jax.process_index() == 0
  mesh = make_mesh()
  if is_streamed(config):
    source = StreamedData(config, mesh)
  else:
    dataset = data_lib.load_dataset(config.data, seed=config.seed)
    if dataset.num_train < config.train.batch_size:
      raise ConfigError(
          f"config.train.batch_size={config.train.batch_size} exceeds the "
          f"{dataset.num_train} training images")
    if config.train.parallel_runs > 1:
      from resflax import parallel  # pylint: disable=g-import-not-at-top
      return parallel.train_and_evaluate_parallel(config, workdir, dataset)
    source = InMemoryData(dataset, mesh, config.train.eval_batch_size)

  if is_main:
    os.makedirs(workdir, exist_ok=True)
    results_lib.write_atomic(os.path.join(workdir, "config.json"),
                             config.to_json(indent=2, sort_keys=True))

  replicated = NamedSharding(mesh, P())
  mcfg = config.model.to_dict()
  mcfg.update(model_config(config, num_devices))
  mcfg["num_classes"] = source.num_classes
  model = models.create_model(mcfg)
  task = Task(model, config, mesh, source.num_train,
              make_optimizer(config.train))

  # The seed is an argument, not a constant: every seed of a sweep shares
  # one compiled initialiser (and the persistent compilation cache).
  state = jax.jit(lambda seed: init_state(task, seed, source.image_shape),
                  out_shardings=replicated)(config.seed)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=config.train.max_checkpoints)
  restored = ckpt.restore_latest_good(state)
  if restored is not None:
    start_step, state = restored
    logging.info("resumed %s from step %d", workdir, start_step)
  start_step = int(fetch(state["step"]))

  step_fn = jax.jit(functools.partial(source.step_impl, task),
                    donate_argnums=0)
  source.start(task, config.seed, start_step)
  writer = metrics_lib.create_writer(workdir)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  t = config.train
  progress = metrics_lib.ProgressLogger(
      t.steps, every_steps=t.log_every or None,
      every_secs=None if t.log_every else 60.0, start_step=start_step)

  m0 = fetch(state["metrics"])
  last = {"loss": float(m0["loss"]), "errors": int(m0["errors"]),
          "seen": int(m0["seen"])}
  history = []
  eval_error = train_error = None
  # Throughput excludes the first step (compilation) and evaluations, and
  # includes everything else the loop does: logging, metrics, checkpoints.
  timing = {"start": None, "from_step": start_step, "eval_seconds": 0.0}
  wall_start = time.perf_counter()
  step = start_step

  def check_finite(state):
    bad = int(fetch(state["nonfinite_step"]))
    if bad >= 0 and t.on_nonfinite == "stop":
      raise TrainingError(
          f"non-finite loss or parameters at step {bad + 1} (loss = "
          f"{float(fetch(state['nonfinite_value']))}); {workdir} keeps the last "
          "good checkpoint. Lower config.train.learning_rate, add warm-up, "
          "or set config.train.on_nonfinite='skip'.")

  def save(state, step, wait=True):
    check_finite(state)  # never write a checkpoint after a non-finite step
    ckpt.save(step, state, wait=wait)

  try:
    with _StopSignal() as stop:
      while step < t.steps:
        state = step_fn(state, *source.step_args())
        step += 1
        if timing["start"] is None:
          jax.block_until_ready(state["step"])
          timing["start"], timing["from_step"] = time.perf_counter(), step
        if stop.received is not None:
          save(state, step)
          logging.warning("received signal %d: saved step %d to %s and "
                          "stopped; run the same command to resume",
                          stop.received, step, ckpt.directory)
          writer.flush()
          return {"interrupted": True, "step": step}
        report = progress.should_report(step)
        do_eval = (t.eval_every and step % t.eval_every == 0) or step == t.steps
        do_ckpt = (t.checkpoint_every and step % t.checkpoint_every == 0)
        if report or do_eval or do_ckpt:
          m = fetch(state["metrics"])
          check_finite(state)
          seen = int(m["seen"]) - last["seen"]
          if seen:
            scalars = {"train_loss": (float(m["loss"]) - last["loss"])
                                     / (seen / t.batch_size),
                       "train_error": (int(m["errors"]) - last["errors"]) / seen,
                       "learning_rate": float(learning_rate(
                           step - 1, bool(fetch(state["warm"])), t))}
            train_error = scalars["train_error"]
            last = {"loss": float(m["loss"]), "errors": int(m["errors"]),
                    "seen": int(m["seen"])}
            if report:
              rates = progress.report(step, t.batch_size, scalars)
              scalars["images_per_second"] = rates.get("images_per_sec", 0.0)
            writer.write_scalars(step, scalars)
          if do_eval:
            eval_start = time.perf_counter()
            ev = source.evaluate(state["variables"])
            eval_error = float(ev["error"])
            name = source.eval_split
            writer.write_scalars(step, {f"{name}_error": eval_error,
                                        f"{name}_loss": float(ev["loss"])})
            history.append({"step": step, f"{name}_error": eval_error})
            logging.info("step %d: %s error %.4f", step, name, eval_error)
            timing["eval_seconds"] += time.perf_counter() - eval_start
          if do_ckpt or step == t.steps:
            # Interval saves copy the state off the device and write in the
            # background while training goes on; the last one is waited for.
            save(state, step, wait=step == t.steps)
          writer.flush()
          if do_eval:
            progress.reset_timer(step)
      if ckpt.latest_step() != step:
        save(state, step)
      jax.block_until_ready(state["step"])
      loop_end = time.perf_counter()
  finally:
    ckpt.close()
    writer.close()

  train_seconds = (loop_end - timing["start"] - timing["eval_seconds"]
                   if timing["start"] is not None else 0.0)
  if eval_error is None:  # resumed at the end: evaluate once more
    ev = source.evaluate(state["variables"])
    eval_error = float(ev["error"])
  result = {
      "test_error" if source.eval_split == "test" else "validation_error":
          eval_error,
      "eval_split": source.eval_split,
      "steps": step,
      "skipped_steps": int(fetch(state["skipped"])),
      "wall_seconds": time.perf_counter() - wall_start,
      "train_seconds": train_seconds,
      "images_per_second": ((step - timing["from_step"]) * t.batch_size
                            / train_seconds if train_seconds else None),
      "final_train_error": train_error,
      "num_params": models.num_params(state["variables"]),
      "history": history,
      "config": json.loads(config.to_json()),
      "versions": _versions(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
  }
  if is_streamed(config):
    # ImageNet's validation split is its test set, as in the papers.
    result["test_error"] = eval_error
  elif source.eval_split == "validation":
    result["test_error"] = float(
        source.evaluate(state["variables"], split="test")["error"])
  if is_main:
    results_lib.write_json(os.path.join(workdir, "results.json"), result)
  return result
