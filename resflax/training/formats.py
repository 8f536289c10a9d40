"""The train state's format versions, and how an older one is upgraded.

A checkpoint holds the train state in the format of the resflax that wrote
it. The workdir records that version (``workdir.format_version``); restoring
builds the old format's tree as the target, restores it and upgrades it one
version at a time to today's (``UPGRADES``). Versions:

  0  resflax 0.1 (tests/fixtures/workdir_v0_1): metrics as plain sums,
     ``{'loss': sum of step losses, 'errors': wrong images, 'seen': images}``
  1  main of 2026-12-05 (tests/fixtures/workdir_2026_12_05): metrics a
     ``TrainMetrics`` collection

Neither recorded its version: a checkpoint without one is ``UNRECORDED``,
and its version is the one whose layout has the checkpoint's structure
(``infer_version``). Every run since records ``CURRENT`` when it starts.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from resflax.training.state import TrainMetrics

PyTree = Any

CURRENT = 1
# Versions written before workdirs recorded one, oldest first.
UNRECORDED = (0, 1)


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


UPGRADES: dict[int, Upgrade] = {0: Upgrade(_v0_layout, _v0_upgrade)}


def layout(target: PyTree, version: int) -> PyTree:
  """The tree a checkpoint of ``version`` holds, for today's ``target``."""
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
  """The unrecorded version whose layout has the ``stored`` structure.

  Args:
    stored: ``structure`` of a checkpoint (``Checkpointer.structure``).
    target: today's state.

  Returns:
    The newest matching version of ``UNRECORDED``, or None: the
    checkpoint holds another network or a state resflax never wrote.
  """
  for version in reversed(UNRECORDED):
    if structure(layout(target, version)) == stored:
      return version
  return None
