"""Lesions of a trained network: deleting and reordering residual modules.

Veit et al. 2016 ("Residual Networks Behave Like Ensembles of Relatively
Shallow Networks") delete residual modules at test time (sec. 4.1/4.2,
Fig. 3 and 5a) and reorder them (sec. 4.3, Fig. 5b). In resflax both are
*data*: the variables of a network carry a ``lesion`` collection::

  variables['lesion'] = {'stage0': {'active': f32[n], 'order': i32[m]}, ...}

``active[u] = 0`` deletes unit ``u`` of the stage (only its shortcut is left:
the identity, or the downsampling shortcut of unit 0); ``order`` is the
execution order of the stage's last m units (``movable_counts``): units
1..n-1 when unit 0 changes the shape or is a pre-activation stage's first,
all n in a post-activation stage whose unit 0 keeps the shape. Every
function here only rewrites that collection, so all lesions and orders of
one network run through one compiled ``model.apply`` (and one compiled
``resflax.lesion.LesionEvaluator``), and the functions are jittable and
vmappable::

  keys = jax.random.split(key, 100)
  delete10 = lambda k: delete_modules(variables, 10, key=k)['lesion']
  lesions = jax.vmap(delete10)(keys)
  errors = LesionEvaluator(model, images, labels, mean, std)(variables, lesions)

Module numbering: modules are numbered 0..n-1 in forward order across
stages (stage 0 unit 0, stage 0 unit 1, ..., stage 1 unit 0, ...), as in
``model.modules``. A module is its *weights*: after a reordering,
``delete_modules(indices=[i])`` still deletes the unit whose weights are
module ``i``, wherever it now runs.
"""

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resflax.lesion.layout import (  # public here too (see __all__)
    _lesion_of,
    module_table,
    movable_counts,
    num_modules,
    stage_names,
    stage_sizes,
)
from resflax.models import masks

PyTree = Any

__all__ = [
    "delete_modules",
    "kendall_tau",
    "module_order",
    "module_table",
    "movable_counts",
    "movable_modules",
    "num_modules",
    "reorder_modules",
    "single_deletion_lesions",
    "stack_lesions",
    "stage_names",
    "stage_sizes",
    "swap_modules",
]


# --------------------------------------------------------------------------
# Helpers


def _renamed_params(fn):
  """Accepts the old keyword ``params=`` for ``variables=`` (one release).

  These functions take the whole variables tree, not its ``params``
  collection; the first argument was misnamed ``params`` before.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if "params" in kwargs:
      if args or "variables" in kwargs:
        raise TypeError(
            f"{fn.__name__}: the variables are given twice; pass them once, "
            "as variables=... (formerly params=...)"
        )
      warnings.warn(
          f"{fn.__name__}(params=...) is deprecated: the argument is the "
          "whole variables tree, pass variables=...",
          DeprecationWarning,
          stacklevel=2,
      )
      kwargs["variables"] = kwargs.pop("params")
    return fn(*args, **kwargs)

  return wrapper


def _concrete(x) -> np.ndarray | None:
  """``x`` as a numpy array, or None when it is a tracer (inside jit/vmap)."""
  try:
    return np.asarray(x)
  except (
      jax.errors.TracerArrayConversionError,
      jax.errors.ConcretizationTypeError,
  ):
    return None


def _flat_active(variables) -> jax.Array:
  lesion = _lesion_of(variables)
  return jnp.concatenate(
      [
          jnp.asarray(lesion[s]["active"], jnp.float32)
          for s in stage_names(variables)
      ]
  )


def _with_active(variables, flat_active) -> dict[str, Any]:
  """A shallow copy of ``variables`` with a new ``active`` per stage."""
  lesion = _lesion_of(variables)
  names = stage_names(variables)
  bounds = np.cumsum(stage_sizes(variables))[:-1]
  parts = jnp.split(flat_active, bounds)
  new_lesion = {
      s: {
          **lesion[s],
          "active": parts[i].astype(jnp.asarray(lesion[s]["active"]).dtype),
      }
      for i, s in enumerate(names)
  }
  return {**variables, "lesion": new_lesion}


# --------------------------------------------------------------------------
# Deletion


@_renamed_params
def delete_modules(
    variables: Mapping[str, Any],
    k: Any | None = None,
    *,
    key: jax.Array | None = None,
    indices: Sequence[int] | None = None,
    candidates: Any | None = None,
) -> dict[str, Any]:
  """Deletes residual modules; only their shortcuts are left (Veit sec. 4).

  Args:
    variables: the full variables pytree (``params``, ``batch_stats``,
      ``lesion``) of a network. It is not modified.
    k: how many modules to delete at random (needs ``key``). May be a traced
      integer: the choice is "the k lowest of n random scores", so one
      compiled function serves every k. With ``indices`` it may be left out
      or must equal ``len(indices)``.
    key: PRNG key for a random choice (may be traced: vmap over keys to
      build many lesions at once). The k modules are drawn uniformly from
      the modules that are still active (and in ``candidates``); if fewer
      are left, all of them are deleted.
    indices: exactly these modules (numbers in forward order, see the module
      docstring) are deleted. May be a traced integer array.
    candidates: optional bool/0-1 array of length n: random deletions only
      pick modules where it is true (e.g. to spare downsampling modules).

  Returns:
    A copy of ``variables`` with the new lesion; ``params``/``batch_stats``
    are shared, not copied (JAX arrays are immutable). Evaluate it with the
    ordinary ``model.apply``.

  Raises:
    ValueError: neither or both of ``key`` and ``indices``, a concrete ``k``
      outside 0..n or larger than the modules left, an index outside
      0..n-1 or repeated, or ``candidates`` of the wrong length.
  """
  n = num_modules(variables)
  active = _flat_active(variables)
  _check_integer("k", k)
  if (key is None) == (indices is None):
    raise ValueError(
        "delete_modules needs exactly one of key=... (k random "
        "modules) or indices=[...] (those modules)"
    )
  k_val = None if k is None else _concrete(k)
  if indices is not None:
    idx = jnp.asarray(indices, jnp.int32).reshape(-1)
    idx_val = _concrete(idx)
    if idx_val is not None:
      if idx_val.size and (idx_val.min() < 0 or idx_val.max() >= n):
        raise ValueError(
            f"delete_modules: indices {idx_val.tolist()} must "
            f"be in 0..{n - 1} (the network has {n} modules)"
        )
      if len(set(idx_val.tolist())) != idx_val.size:
        raise ValueError(
            f"delete_modules: indices {idx_val.tolist()} " "repeat a module"
        )
    if k_val is not None and int(k_val) != idx.shape[0]:
      raise ValueError(
          f"delete_modules: k={int(k_val)} but {idx.shape[0]} "
          "indices were given; pass one or make them agree"
      )
    return _with_active(variables, active.at[idx].set(0.0))

  if k is None:
    raise ValueError(
        "delete_modules(variables, k, key=...): k (how many "
        "modules to delete) is required with key"
    )
  eligible = active > 0
  if candidates is not None:
    cand = jnp.asarray(candidates).reshape(-1)
    if cand.shape[0] != n:
      raise ValueError(
          f"delete_modules: candidates has {cand.shape[0]} "
          f"entries; the network has {n} modules"
      )
    eligible = eligible & (cand > 0)
  if k_val is not None:
    k_int = int(k_val)
    if not 0 <= k_int <= n:
      raise ValueError(
          f"delete_modules: k={k_int} must be in 0..{n} (the "
          f"network has {n} modules)"
      )
    left = _concrete(eligible)
    if left is not None and k_int > int(left.sum()):
      raise ValueError(
          f"delete_modules: k={k_int} but only {int(left.sum())} modules are "
          "active (and in candidates)"
      )
  remove = masks.random_module_mask(key, k, n, eligible) > 0
  return _with_active(variables, jnp.where(remove, 0.0, active))


def _check_integer(name: str, value: Any) -> None:
  """TypeError unless ``value`` is None or an integer (Python, numpy or an
  integer array, traced or not): 2.5 or '3' must not pick a module count."""
  if (
      value is None
      or isinstance(value, (int, np.integer))
      and not isinstance(value, bool)
  ):
    return
  dtype = getattr(value, "dtype", None)
  if (
      dtype is not None
      and jnp.issubdtype(dtype, jnp.integer)
      and (jnp.ndim(value) == 0)
  ):
    return
  raise TypeError(
      f"delete_modules: {name} must be an integer (a Python "
      f"int or an integer scalar array), got {value!r} of type "
      f"{type(value).__name__}"
  )


@_renamed_params
def single_deletion_lesions(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The lesions of Veit Fig. 3: the intact network, then module i deleted.

  Returns:
    A stacked lesion pytree with n + 1 entries (leading axis): entry 0 is
    ``variables``' own lesion, entry i + 1 has module i deleted.
  """
  return _single_deletions(dict(_lesion_of(variables)))


@jax.jit
def _single_deletions(lesion):
  # Jitted: as eager vmapped ops this is dozens of tiny compilations.
  n = num_modules({"lesion": lesion})
  one = lambda i: delete_modules({"lesion": lesion}, indices=i[None])["lesion"]
  deleted = jax.vmap(one)(jnp.arange(n, dtype=jnp.int32))
  return jax.tree.map(
      lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]), lesion, deleted
  )


def stack_lesions(lesions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Stacks lesion dicts (or whole variables) along a new leading axis."""
  lesions = [_lesion_of(l) if "lesion" in l else l for l in lesions]
  if not lesions:
    raise ValueError("stack_lesions needs at least one lesion")
  return jax.tree.map(
      lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *lesions
  )


# --------------------------------------------------------------------------
# Orders


@_renamed_params
def module_order(variables: Mapping[str, Any]) -> jax.Array:
  """The network's execution order as module numbers.

  Returns:
    int32[n]: entry j is the number of the module (its weights) that runs
    at position j; ``arange(n)`` for the trained order.
  """
  lesion = _lesion_of(variables)
  parts, offset = [], 0
  for name, size, movable in zip(
      stage_names(variables), stage_sizes(variables), movable_counts(variables)
  ):
    fixed = size - movable
    parts.append(jnp.arange(offset, offset + fixed, dtype=jnp.int32))
    if movable:
      parts.append(
          offset + fixed + jnp.asarray(lesion[name]["order"], jnp.int32)
      )
    offset += size
  return jnp.concatenate(parts)


def kendall_tau(order) -> jax.Array:
  """Kendall's tau between ``order`` and the identity order 0..n-1.

  For a permutation (no ties) tau = (concordant - discordant) / (n choose 2):
  1 for the identity, -1 for a full reversal. O(n^2) memory, jittable.

  Args:
    order: a 1-D sequence of distinct values, e.g. ``module_order(variables)``.

  Returns:
    A float32 scalar; 1.0 when n < 2.
  """
  # Host arrays are counted with numpy: eager jnp ops would compile once
  # per length for a handful of arithmetic.
  xp = jnp if isinstance(order, jax.core.Tracer) else np
  order = xp.asarray(order).reshape(-1)
  n = order.shape[0]
  if n < 2:
    return jnp.asarray(1.0, jnp.float32)
  i, j = np.triu_indices(n, 1)
  agree = xp.sign(order[j].astype(xp.float32) - order[i].astype(xp.float32))
  return jnp.asarray(xp.sum(agree) / (n * (n - 1) / 2), jnp.float32)


def _order_layout(variables: Mapping[str, Any]):
  """Static layout of a network's concatenated ``order`` arrays.

  Returns:
    ``(movable, stage_of, first, swappable)``: the units each stage's
    ``order`` permutes (``movable_counts``); the stage of each order
    position; the module number of its stage's first movable unit (so
    ``first + order`` are the modules running there); the positions a
    random swap may pick (stages with at least two movable units).
  """
  sizes = np.asarray(stage_sizes(variables), np.int64)
  movable = np.asarray(movable_counts(variables), np.int64)
  stage_of = np.repeat(np.arange(len(sizes)), movable)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  first = (offsets + sizes - movable)[stage_of]
  swappable = np.flatnonzero(movable[stage_of] >= 2)
  return movable, stage_of, first, swappable


def _concat_order(lesion, names) -> jax.Array:
  return jnp.concatenate(
      [jnp.asarray(lesion[s]["order"], jnp.int32) for s in names]
  )


def _split_order(lesion, names, movable, order) -> dict[str, Any]:
  """``lesion`` with the concatenated ``order`` split back per stage."""
  parts = jnp.split(order, np.cumsum(movable)[:-1])
  return {
      s: {
          **lesion[s],
          "order": parts[i].astype(jnp.asarray(lesion[s]["order"]).dtype),
      }
      for i, s in enumerate(names)
  }


def movable_modules(variables: Mapping[str, Any]) -> np.ndarray:
  """The modules a reordering can move, in forward order.

  The units each stage's ``order`` permutes, in stages where that is at
  least two: units 1..n-1, or all n in a post-activation stage whose unit 0
  keeps the shape (``Network.movable_units``). A unit 0 that changes the
  shape, or whose pre-activation feeds the shortcut too, never moves; a
  lone movable unit has no partner to trade places with.

  Returns:
    int64 module numbers (possibly empty).
  """
  sizes, movable = stage_sizes(variables), movable_counts(variables)
  return np.asarray(
      [
          m.index
          for m in module_table(variables)
          if movable[m.stage] >= 2
          and m.unit >= sizes[m.stage] - movable[m.stage]
      ],
      np.int64,
  )


def _movable_tau(variables) -> jax.Array:
  # Fixed modules always sit where they were trained; counting them would
  # pull tau towards 1 for every reordering.
  return kendall_tau(module_order(variables)[movable_modules(variables)])


@_renamed_params
def swap_modules(variables: Mapping[str, Any], i, j) -> dict[str, Any]:
  """Swaps the execution positions of modules ``i`` and ``j``.

  Swapping the same pair again restores the original order exactly.

  Args:
    variables: the full variables pytree; not modified.
    i, j: module numbers (forward order of the trained network) of two
      movable units of the same stage (``movable_modules``). May be
      traced.

  Returns:
    A copy of ``variables`` with the new ``order`` arrays.

  Raises:
    ValueError: concrete ``i``/``j`` that never move (a unit 0 that changes
      the shape or starts a pre-activation stage), in different stages, or
      out of range.
  """
  table = module_table(variables)
  fixed = np.subtract(stage_sizes(variables), movable_counts(variables))
  n = len(table)
  iv, jv = _concrete(i), _concrete(j)
  if iv is not None and jv is not None:
    iv, jv = int(iv), int(jv)
    for m in (iv, jv):
      if not 0 <= m < n:
        raise ValueError(f"swap_modules: module {m} is not in 0..{n - 1}")
      if table[m].unit < fixed[table[m].stage]:
        raise ValueError(
            f"swap_modules: module {m} is unit 0 of stage "
            f"{table[m].stage}, which never moves; choose among "
            "movable_modules(variables)"
        )
    if table[iv].stage != table[jv].stage:
      raise ValueError(
          f"swap_modules: modules {iv} and {jv} are in stages "
          f"{table[iv].stage} and {table[jv].stage}; only "
          "modules of the same stage have the same shape"
      )
  lesion = _lesion_of(variables)
  names = stage_names(variables)
  movable, _, first, _ = _order_layout(variables)
  order = _concat_order(lesion, names)
  running = jnp.asarray(first, jnp.int32) + order
  pa = jnp.argmax(running == i)
  pb = jnp.argmax(running == j)
  order = order.at[pa].set(order[pb]).at[pb].set(order[pa])
  return {**variables, "lesion": _split_order(lesion, names, movable, order)}


@_renamed_params
def reorder_modules(
    variables: Mapping[str, Any], num_swaps, *, key: jax.Array
) -> tuple[dict[str, Any], jax.Array]:
  """Swaps random pairs of same-shape modules (Veit sec. 4.3, Fig. 5b).

  Each swap picks a position uniformly among all movable positions
  (``movable_modules``: the units each stage's ``order`` permutes, in stages
  with at least two) and a second, different position of the same
  stage uniformly; the two modules running there trade places. Later swaps
  may undo earlier ones, as random swaps do.

  Args:
    variables: the full variables pytree; not modified.
    num_swaps: number of swaps (Python int or traced integer: the loop is a
      ``fori_loop``, so one compiled function serves every count).
    key: PRNG key (may be traced; vmap over keys for many draws).

  Returns:
    ``(new_variables, tau)``: the variables with the new ``order`` arrays, and
    Kendall's tau between the new and the trained execution order of the
    modules that can move (``movable_modules``); the modules that never
    move are left out, as they would only pull tau towards 1. Pairs from
    different stages still count (always concordant: modules never leave
    their stage). 1.0 when nothing can move.

  Raises:
    ValueError: a negative concrete ``num_swaps``, or swaps requested on a
      network with no stage of at least two movable modules.
  """
  lesion = _lesion_of(variables)
  sizes = stage_sizes(variables)
  swaps_val = _concrete(num_swaps)
  if swaps_val is not None and int(swaps_val) < 0:
    raise ValueError(
        f"reorder_modules: num_swaps={int(swaps_val)} must be " ">= 0"
    )
  if _order_layout(variables)[3].size == 0:
    if swaps_val is not None and int(swaps_val) == 0:
      new = {**variables, "lesion": dict(lesion)}
      return new, _movable_tau(new)
    raise ValueError(
        "reorder_modules: no stage has two units of the same shape to swap "
        f"(stage sizes {list(sizes)}, movable units "
        f"{list(movable_counts(variables))})"
    )

  new_lesion, tau = _reorder(
      dict(lesion), jnp.asarray(num_swaps, jnp.int32), key
  )
  return {**variables, "lesion": new_lesion}, tau


@jax.jit
def _reorder(lesion, num_swaps, key):
  # Jitted with the swap count as data: one program for every count (eager,
  # the loop would compile once per trip count). Shapes give the structure.
  names = stage_names({"lesion": lesion})
  movable, stage_of, _, swappable = _order_layout({"lesion": lesion})
  starts = jnp.asarray(
      np.concatenate([[0], np.cumsum(movable)[:-1]]), jnp.int32
  )
  stage_of = jnp.asarray(stage_of, jnp.int32)
  movable_j = jnp.asarray(movable, jnp.int32)

  def swap(i, order):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    a = jnp.asarray(swappable, jnp.int32)[
        jax.random.randint(k1, (), 0, swappable.size)
    ]
    s = stage_of[a]
    m, start = movable_j[s], starts[s]
    # A different position of the same stage, uniformly.
    b = start + (a - start + 1 + jax.random.randint(k2, (), 0, m - 1)) % m
    return order.at[a].set(order[b]).at[b].set(order[a])

  order = jax.lax.fori_loop(0, num_swaps, swap, _concat_order(lesion, names))
  new_lesion = _split_order(lesion, names, movable, order)
  return new_lesion, _movable_tau({"lesion": new_lesion})
