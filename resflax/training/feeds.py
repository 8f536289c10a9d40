"""Where a step's data comes from: datasets on the devices, or host streams.

A feed puts a dataset where the compiled step reads it and evaluates the
runs' variables on a split. Two kinds:

- ``InMemoryFeed``: the dataset lives on the devices; the step samples its
  own batch (``step.step_on_dataset``). With several runs whose data depends
  on the seed (synthetic data), each run has its own copy on a run axis.
- ``StreamedFeed``: ImageNet, too big for memory; each host reads its shard
  through ``data.imagenet_iterator`` and hands uint8 batches to
  ``step.step_on_batch``.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resflax import data as data_lib
from resflax.errors import ConfigError
from resflax.training import step as step_lib
from resflax.training.state import RunSpec


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
      images[:n], labels[:n], jax.process_index(), jax.process_count()
  )
  return (
      jax.make_array_from_process_local_data(
          sharding, local_images, (n,) + images.shape[1:]
      ),
      jax.make_array_from_process_local_data(sharding, local_labels, (n,)),
  )


class InMemoryFeed:
  """Datasets held on the devices; batches are sampled inside the step.

  Args:
    datasets: one dataset shared by every run, or one per run (stacked on a
      leading run axis on the devices).
    mesh: the device mesh.
    eval_batch_size: evaluation batch size.
  """

  step_impl = staticmethod(step_lib.step_on_dataset)
  separate_test = True  # a held-out validation split leaves 'test' apart

  def __init__(
      self, datasets: Sequence[data_lib.Dataset], mesh, eval_batch_size: int
  ):
    self.per_run = len(datasets) > 1
    self._datasets, self._mesh = list(datasets), mesh
    self._rep = NamedSharding(mesh, P())
    first = datasets[0]
    self.images, self.labels = self._split("train")
    self.mean = self._constant(lambda d: d.mean)
    self.std = self._constant(lambda d: d.std)
    self.num_train = int(self.labels.shape[-1])
    self.num_classes = first.num_classes
    self.image_shape = first.image_shape
    self.eval_split = first.eval_split
    self.summary = first.summary() + (
        " (one copy per run)" if self.per_run else ""
    )
    # Any evaluation batch works on any device count: it is rounded up to a
    # multiple of the devices and the padding is masked out.
    self._eval_batch_size = -(-eval_batch_size // mesh.size) * mesh.size
    self._placed: dict[str, Any] = {}
    self._eval_fn = None

  @property
  def data_axis(self) -> int | None:
    """The run axis of the step's data arguments (None: shared)."""
    return 0 if self.per_run else None

  def _split(self, name):
    if not self.per_run:
      d = self._datasets[0]
      return place_examples(
          self._mesh, getattr(d, f"{name}_images"), getattr(d, f"{name}_labels")
      )
    put = lambda a: jax.device_put(a, self._rep)
    return (
        put(np.stack([getattr(d, f"{name}_images") for d in self._datasets])),
        put(np.stack([getattr(d, f"{name}_labels") for d in self._datasets])),
    )

  def _constant(self, get):
    value = (
        get(self._datasets[0])
        if not self.per_run
        else np.stack([get(d) for d in self._datasets])
    )
    return jax.device_put(value, self._rep)

  def start(self, spec: RunSpec, runs: int | None, step: int) -> None:
    """Compiles evaluation for ``runs`` stacked runs (None: one, unstacked)."""
    del step  # the batch is a function of the state's rng and step
    fn = functools.partial(step_lib.evaluate_split, spec)
    if runs is not None:
      d = self.data_axis
      fn = jax.vmap(fn, in_axes=(0, d, d, d, d, None, None))
    self._eval_fn = jax.jit(fn, **spec.jit_options)

  def step_args(self):
    return self.images, self.labels, self.mean, self.std

  def evaluate(self, variables, split: str = "eval") -> dict[str, np.ndarray]:
    """Error and loss on ``split`` ('eval' or 'test'), per run if stacked."""
    if split not in self._placed:
      images, labels = self._split(split)
      layout = data_lib.eval_batches(
          int(labels.shape[-1]), self._eval_batch_size
      )
      self._placed[split] = (
          images,
          labels,
          jax.device_put(layout.indices, self._rep),
          jax.device_put(layout.mask, self._rep),
      )
    images, labels, idx, mask = self._placed[split]
    return fetch(
        self._eval_fn(variables, images, labels, self.mean, self.std, idx, mask)
    )


class StreamedFeed:
  """ImageNet through ``data.imagenet_iterator``: each host reads its shard,
  augments on the host, and hands uint8 batches to the compiled step.

  A resumed run restarts the stream seeded by (seed, step): deterministic,
  but not the batches the interrupted run would have seen next.
  """

  step_impl = staticmethod(step_lib.step_on_batch)
  separate_test = False  # ImageNet's validation split is its test set
  per_run = False
  data_axis = None

  def __init__(self, config, mesh, info):
    self._config, self._mesh = config, mesh
    self.image_shape = tuple(info.image_shape)
    self.num_classes = info.num_classes
    self.num_train = 0
    self.eval_split = info.eval_split
    self.summary = (
        f"{info.name} streamed from tensorflow-datasets, "
        f"{info.num_classes} classes, images "
        f"{'x'.join(map(str, self.image_shape))}"
    )
    rep = NamedSharding(mesh, P())
    self.mean = jax.device_put(data_lib.IMAGENET_MEAN, rep)
    self.std = jax.device_put(data_lib.IMAGENET_STD, rep)
    self._sharding = NamedSharding(mesh, P("data"))
    self._per_host = config.train.batch_size // jax.process_count()
    # Fail now, before compiling, if the data is not there.
    self._probe = self._iterator("train", self._per_host, seed=config.seed)
    self._train = None
    self._eval_fn = None

  def _iterator(self, split, batch_size, **kw):
    return data_lib.imagenet_iterator(
        self._config.data,
        split,
        batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **kw,
    )

  def _global(self, local, extra_dims):
    n = local.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(
        self._sharding, local, (n,) + extra_dims
    )

  def start(self, spec: RunSpec, runs: int | None, step: int) -> None:
    if runs is not None:
      raise ValueError("a streamed dataset trains one run at a time")
    seed = self._config.seed
    self._train = (
        self._probe
        if step == 0
        else self._iterator("train", self._per_host, seed=seed * 7919 + step)
    )
    self._eval_fn = jax.jit(
        functools.partial(step_lib.evaluate_batch, spec), **spec.jit_options
    )

  def step_args(self):
    batch = next(self._train)
    return (
        self._global(batch["image"], self.image_shape),
        self._global(batch["label"], ()),
        self.mean,
        self.std,
    )

  def evaluate(self, variables, split: str = "eval") -> dict[str, np.ndarray]:
    del split  # ImageNet's validation split is its test set, as in the papers
    devices = self._mesh.size
    per_host = (
        -(-self._config.train.eval_batch_size // devices)
        * devices
        // jax.process_count()
    )
    totals = np.zeros(3)
    for batch in self._iterator("validation", per_host):
      out = fetch(
          self._eval_fn(
              variables,
              self._global(batch["image"], self.image_shape),
              self._global(batch["label"], ()),
              self._global(batch["mask"], ()),
              self.mean,
              self.std,
          )
      )
      totals += np.array(
          [float(out["wrong"]), float(out["loss"]), float(out["count"])]
      )
    return {
        "error": np.asarray(totals[0] / totals[2]),
        "loss": np.asarray(totals[1] / totals[2]),
    }


def _datasets(config, configs) -> list[data_lib.Dataset]:
  """One dataset, or one per run when the data depends on the seed."""
  first = data_lib.load_dataset(config.data, seed=config.seed)
  if len(configs) == 1 or config.data.name != "synthetic" or config.data.path:
    return [first]
  return [
      first
      if c.seed == config.seed
      else data_lib.load_dataset(c.data, seed=c.seed)
      for c in configs
  ]


def make_feed(config, configs, mesh):
  """The feed of ``config``'s data: streamed, or on the devices."""
  info = data_lib.source_info(config.data)
  if info.streams:
    return StreamedFeed(config, mesh, info)
  datasets = _datasets(config, configs)
  if datasets[0].num_train < config.train.batch_size:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} exceeds the "
        f"{datasets[0].num_train} training images"
    )
  return InMemoryFeed(datasets, mesh, config.train.eval_batch_size)
