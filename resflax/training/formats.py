"""The train state's format versions, and how an older one is upgraded.

A checkpoint holds the train state in the format of the resflax that wrote
it. The workdir records that version (``workdir.format_version``); restoring
builds the old format's tree as the target, restores it and upgrades it one
version at a time to today's (``UPGRADES``). Versions:

  0  resflax 0.1 (tests/fixtures/workdir_v0_1): metrics as plain sums,
     ``{'loss': sum of step losses, 'errors': wrong images, 'seen': images}``
  1  main of 2026-12-05 (tests/fixtures/workdir_2026_12_05): metrics a
     ``TrainMetrics`` collection
  2  the warm-up ends on the error over a window of batches: the state
     gains ``warm_errors``, the last ``train.warmup_window`` batch errors
  3  a post-activation stage whose unit 0 keeps the shape reorders all its
     units: its lesion ``order`` has n entries, not n - 1
  4  the optimiser is ``optax.sgd`` (the rate no longer applied by hand):
     its momentum buffers sit one tuple deeper in ``opt_state``,
     ``(EmptyState, (TraceState, EmptyState))``, not
     ``(EmptyState, TraceState)``

Versions 0 and 1 did not record their version: for a checkpoint without
one, the version is the one whose layout has the checkpoint's structure
(``infer_version``; a state saved by other code than a run, a test's say,
is today's if it has today's structure). Every run since records
``CURRENT`` when it starts.

The state was a dict until it became a ``TrainState`` (during version 3);
on disk the two are one tree (the fields are saved by name, the dict's
keys), so that is no version of its own. Older versions' layouts and
upgrades take and give dicts; ``upgrade`` gives a ``TrainState`` for a
``TrainState`` target.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resflax.training.state import TrainMetrics

PyTree = Any

CURRENT = 4


@dataclasses.dataclass(frozen=True)
class Upgrade:
  """How version ``v`` (the key in ``UPGRADES``) becomes version ``v + 1``.

  Attributes:
    layout: ``layout(target)``: version ``v``'s tree for a version ``v + 1``
      target (shapes and dtypes; the restore target).
    upgrade: ``upgrade(tree, target, batch_size)``: a restored version ``v``
      tree as version ``v + 1``, shaped like ``target``.
  """

  layout: Callable[[PyTree], PyTree]
  upgrade: Callable[[PyTree, PyTree, int], PyTree]


def _like(x, shape=None, dtype=None) -> jax.ShapeDtypeStruct:
  """An abstract leaf shaped like ``x`` (its sharding kept, if it has one)."""
  return jax.ShapeDtypeStruct(
      x.shape if shape is None else shape,
      x.dtype if dtype is None else dtype,
      sharding=getattr(x, "sharding", None),
  )


def _v0_layout(target: PyTree) -> PyTree:
  total = target["metrics"].loss.total
  return {
      **target,
      "metrics": {
          "loss": _like(total),
          "errors": _like(total, dtype=jnp.int32),
          "seen": _like(total, dtype=jnp.int32),
      },
  }


def _v0_upgrade(state: PyTree, target: PyTree, batch_size: int) -> PyTree:
  """Plain sums as ``TrainMetrics``: the loss count is the steps made."""
  del target
  m = state["metrics"]
  metrics = jax.tree.map(
      lambda x: jnp.broadcast_to(x, m["loss"].shape), TrainMetrics.empty()
  )
  return {
      **state,
      "metrics": metrics.replace(
          loss=metrics.loss.replace(
              total=m["loss"], count=m["seen"] // batch_size
          ),
          error=metrics.error.replace(
              total=m["errors"].astype(jnp.float32), count=m["seen"]
          ),
      ),
  }


def _v1_layout(target: PyTree) -> PyTree:
  return {k: v for k, v in target.items() if k != "warm_errors"}


def _v1_upgrade(state: PyTree, target: PyTree, batch_size: int) -> PyTree:
  """Adds the window of batch errors, filled to keep the warm-up as it was.

  A run already switched gets errors of 0 (it stays switched: the switch
  is one-way anyway); a run still warming gets errors of 1, as a new run
  starts, so that only batches it trains on from here can end its warm-up.
  """
  del batch_size
  buffer = target["warm_errors"]
  warm = jnp.asarray(state["warm"])
  return {
      **state,
      "warm_errors": jnp.broadcast_to(
          jnp.where(warm[..., None], 1.0, 0.0).astype(buffer.dtype),
          buffer.shape,
      ),
  }


def _field(tree: PyTree, name: str) -> PyTree:
  """A field of a state tree: a dict (older formats) or a dataclass."""
  return tree[name] if isinstance(tree, Mapping) else getattr(tree, name)


def _replace(tree: PyTree, **fields) -> PyTree:
  """``tree`` with ``fields`` replaced, of ``tree``'s own kind."""
  if isinstance(tree, Mapping):
    return {**tree, **fields}
  return tree.replace(**fields)


def _grown_orders(lesion: PyTree):
  """The stages whose ``order`` covers every unit (version 3 and later)."""
  return [
      s
      for s, l in lesion.items()
      if "order" in l and l["order"].shape[-1] == l["active"].shape[-1]
  ]


def _with_lesion(tree: PyTree, lesion: PyTree) -> PyTree:
  variables = _field(tree, "variables")
  return _replace(tree, variables={**variables, "lesion": lesion})


def _v2_layout(target: PyTree) -> PyTree:
  lesion = dict(_field(target, "variables")["lesion"])
  for s in _grown_orders(lesion):
    order = lesion[s]["order"]
    lesion[s] = {
        **lesion[s],
        "order": _like(order, order.shape[:-1] + (order.shape[-1] - 1,)),
    }
  return _with_lesion(target, lesion)


def _v2_upgrade(state: PyTree, target: PyTree, batch_size: int) -> PyTree:
  """Unit 0 joins the order at the front, where it always ran."""
  del batch_size
  lesion = dict(_field(state, "variables")["lesion"])
  for s in _grown_orders(_field(target, "variables")["lesion"]):
    old = jnp.asarray(lesion[s]["order"])
    first = jnp.zeros(old.shape[:-1] + (1,), old.dtype)
    lesion[s] = {**lesion[s], "order": jnp.concatenate([first, old + 1], -1)}
  return _with_lesion(state, lesion)


def _v3_layout(target: PyTree) -> PyTree:
  trace = optax.tree_utils.tree_get(target["opt_state"], "trace")
  return {
      **target,
      "opt_state": (optax.EmptyState(), optax.TraceState(trace=trace)),
  }


def _v3_upgrade(state: PyTree, target: PyTree, batch_size: int) -> PyTree:
  """The same momentum buffers, where ``optax.sgd``'s state keeps them.

  Version 3 chained ``optax.trace`` alone and applied the rate by hand;
  ``optax.sgd`` nests the trace beside its (stateless) scaling by the rate.
  """
  del batch_size
  trace = optax.tree_utils.tree_get(state["opt_state"], "trace")
  opt_state = optax.tree_utils.tree_set(
      _field(target, "opt_state"), trace=trace
  )
  return {**state, "opt_state": opt_state}


UPGRADES: dict[int, Upgrade] = {
    0: Upgrade(_v0_layout, _v0_upgrade),
    1: Upgrade(_v1_layout, _v1_upgrade),
    2: Upgrade(_v2_layout, _v2_upgrade),
    3: Upgrade(_v3_layout, _v3_upgrade),
}


def _as_dict(state: PyTree) -> dict[str, PyTree]:
  """A ``TrainState``'s fields as a dict, as the state of older versions was."""
  if isinstance(state, Mapping):
    return dict(state)
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def layout(target: PyTree, version: int) -> PyTree:
  """The tree a checkpoint of ``version`` holds, for today's ``target``."""
  if version < CURRENT:
    target = _as_dict(target)
  for v in range(CURRENT - 1, version - 1, -1):
    target = UPGRADES[v].layout(target)
  return target


def upgrade(
    tree: PyTree, version: int, target: PyTree, batch_size: int
) -> PyTree:
  """A restored tree of ``version`` in today's format (``target``'s).

  Args:
    tree: the tree restored into ``layout(target, version)``.
    version: its format version.
    target: today's state (structure, shapes; shardings if concrete).
    batch_size: the run's batch size (version 0 counted images, not steps).
  """
  for v in range(version, CURRENT):
    tree = UPGRADES[v].upgrade(tree, layout(target, v + 1), batch_size)
  if isinstance(tree, Mapping) and not isinstance(target, Mapping):
    tree = type(target)(**tree)  # a dict of an older version: a TrainState
  if version < CURRENT and all(
      isinstance(x, jax.Array) for x in jax.tree.leaves(target)
  ):
    tree = jax.device_put(tree, jax.tree.map(lambda a: a.sharding, target))
  return tree


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def structure(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """``'a/b/c' -> shape`` of every leaf: what a checkpoint must match."""
  return {
      "/".join(_key_name(k) for k in path): tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def infer_version(
    stored: dict[str, tuple[int, ...]], target: PyTree
) -> int | None:
  """The version whose layout has the ``stored`` structure.

  Args:
    stored: ``structure`` of a checkpoint (``Checkpointer.stored_tree``).
    target: today's state.

  Returns:
    The newest matching version, or None: the checkpoint holds another
    network or a state resflax never wrote.
  """
  for version in range(CURRENT, -1, -1):
    if structure(layout(target, version)) == stored:
      return version
  return None
