"""Lesions of a trained network: deleting and reordering residual modules.

Veit et al. 2016 ("Residual Networks Behave Like Ensembles of Relatively
Shallow Networks") delete residual modules at test time (sec. 4.1/4.2,
Fig. 3 and 5a) and reorder them (sec. 4.3, Fig. 5b). In resflax both are
*data*: the variables of a network carry a ``lesion`` collection::

  variables['lesion'] = {'stage0': {'active': f32[n], 'order': i32[n-1]}, ...}

``active[u] = 0`` deletes unit ``u`` of the stage (only its shortcut is left:
the identity, or the downsampling shortcut of unit 0); ``order`` is the
execution order of the stage's units 1..n-1 (unit 0 never moves). Every
function here only rewrites that collection, so all lesions and orders of
one network run through one compiled ``model.apply`` (and one compiled
:class:`LesionEvaluator`), and the functions are jittable and vmappable::

  keys = jax.random.split(key, 100)
  lesions = jax.vmap(lambda k: delete_modules(variables, 10, key=k)['lesion'])(keys)
  errors = LesionEvaluator(model, images, labels, mean, std)(variables, lesions)

Module numbering: modules are numbered 0..n-1 in forward order across
stages (stage 0 unit 0, stage 0 unit 1, ..., stage 1 unit 0, ...), as in
``model.modules``. A module is its *weights*: after a reordering,
``delete_modules(indices=[i])`` still deletes the unit whose weights are
module ``i``, wherever it now runs.
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resflax import data as data_lib
from resflax.models import ModuleInfo, Network

PyTree = Any

__all__ = [
    "LesionEvaluator", "delete_modules", "kendall_tau", "module_order",
    "module_table", "num_modules", "reorder_modules",
    "single_deletion_lesions", "stack_lesions", "stage_names", "stage_sizes",
    "swap_modules",
]


# --------------------------------------------------------------------------
# The module table


def _lesion_of(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  if not isinstance(variables, Mapping) or "lesion" not in variables:
    keys = (sorted(variables) if isinstance(variables, Mapping)
            else type(variables).__name__)
    raise ValueError(
        "expected the full variables pytree of a resflax network, with a "
        f"'lesion' collection (keys 'params', 'batch_stats', 'lesion'); got "
        f"{keys}")
  return variables["lesion"]


def stage_names(variables: Mapping[str, Any]) -> List[str]:
  """The lesion's stage names in forward order (``stage0``, ``stage1``, ...).

  Sorted by their number, not as strings, so ``stage10`` follows ``stage9``.
  """
  names = list(_lesion_of(variables))
  bad = [s for s in names if not re.fullmatch(r"stage\d+", s)]
  if bad:
    raise ValueError(f"variables['lesion'] has keys {bad}; only 'stageN' "
                     "keys are allowed")
  return sorted(names, key=lambda s: int(s[len("stage"):]))


def stage_sizes(variables: Mapping[str, Any]) -> Tuple[int, ...]:
  """Number of modules of each stage, read from the lesion arrays' shapes."""
  lesion = _lesion_of(variables)
  return tuple(int(np.shape(lesion[s]["active"])[0])
               for s in stage_names(variables))


def num_modules(variables: Mapping[str, Any]) -> int:
  """Number of residual modules n of the network the variables belong to."""
  return sum(stage_sizes(variables))


def module_table(model_or_variables: Union[Network, Mapping[str, Any]],
                 downsampling: Optional[Sequence[bool]] = None
                 ) -> List[ModuleInfo]:
  """The numbering of the modules and which of them downsample.

  Args:
    model_or_variables: a ``Network`` (its ``modules`` are returned), or a
      variables pytree, from whose lesion arrays the stage sizes are read.
    downsampling: only with variables: one bool per module saying whether it
      downsamples. None assumes the ResNet layout (unit 0 of every stage but
      the first downsamples), which is wrong for ``vgg`` (it pools between
      stages instead): pass the model for that.

  Returns:
    One ``ModuleInfo(index, stage, unit, downsampling, changes_shape)`` per
    module in forward order. From variables alone ``changes_shape`` is taken
    equal to ``downsampling`` (channel-only changes cannot be seen there).

  Raises:
    ValueError: ``downsampling`` has the wrong length.
  """
  if isinstance(model_or_variables, Network):
    if downsampling is not None:
      raise ValueError("module_table(model, downsampling=...): the model "
                       "already knows which modules downsample; pass "
                       "downsampling only with variables")
    return list(model_or_variables.modules)
  sizes = stage_sizes(model_or_variables)
  n = sum(sizes)
  if downsampling is None:
    downsampling = [s > 0 and u == 0
                    for s, size in enumerate(sizes) for u in range(size)]
  downsampling = [bool(d) for d in downsampling]
  if len(downsampling) != n:
    raise ValueError(f"downsampling has {len(downsampling)} entries; the "
                     f"network has {n} modules (stages of {list(sizes)})")
  table, i = [], 0
  for s, size in enumerate(sizes):
    for u in range(size):
      table.append(ModuleInfo(i, s, u, downsampling[i], downsampling[i]))
      i += 1
  return table


# --------------------------------------------------------------------------
# Helpers


def _concrete(x) -> Optional[np.ndarray]:
  """``x`` as a numpy array, or None when it is a tracer (inside jit/vmap)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def _flat_active(variables) -> jax.Array:
  lesion = _lesion_of(variables)
  return jnp.concatenate([jnp.asarray(lesion[s]["active"], jnp.float32)
                          for s in stage_names(variables)])


def _with_active(variables, flat_active) -> Dict[str, Any]:
  """A shallow copy of ``variables`` with a new ``active`` per stage."""
  lesion = _lesion_of(variables)
  names = stage_names(variables)
  bounds = np.cumsum(stage_sizes(variables))[:-1]
  parts = jnp.split(flat_active, bounds)
  new_lesion = {s: {**lesion[s], "active": parts[i].astype(
      jnp.asarray(lesion[s]["active"]).dtype)} for i, s in enumerate(names)}
  return {**variables, "lesion": new_lesion}


def _random_ranks(key, n) -> jax.Array:
  """A uniformly random permutation of 0..n-1, as ranks of random scores."""
  return jnp.argsort(jnp.argsort(jax.random.uniform(key, (n,))))


# --------------------------------------------------------------------------
# Deletion


def delete_modules(params: Mapping[str, Any], k: Optional[Any] = None, *,
                   key: Optional[jax.Array] = None,
                   indices: Optional[Sequence[int]] = None,
                   candidates: Optional[Any] = None) -> Dict[str, Any]:
  """Deletes residual modules; only their shortcuts are left (Veit sec. 4).

  Args:
    params: the full variables pytree (``params``, ``batch_stats``,
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
    A copy of ``params`` with the new lesion; ``params``/``batch_stats``
    are shared, not copied (JAX arrays are immutable). Evaluate it with the
    ordinary ``model.apply``.

  Raises:
    ValueError: neither or both of ``key`` and ``indices``, a concrete ``k``
      outside 0..n or larger than the modules left, an index outside
      0..n-1 or repeated, or ``candidates`` of the wrong length.
  """
  n = num_modules(params)
  active = _flat_active(params)
  if (key is None) == (indices is None):
    raise ValueError("delete_modules needs exactly one of key=... (k random "
                     "modules) or indices=[...] (those modules)")
  k_val = None if k is None else _concrete(k)
  if indices is not None:
    idx = jnp.asarray(indices, jnp.int32).reshape(-1)
    idx_val = _concrete(idx)
    if idx_val is not None:
      if idx_val.size and (idx_val.min() < 0 or idx_val.max() >= n):
        raise ValueError(f"delete_modules: indices {idx_val.tolist()} must "
                         f"be in 0..{n - 1} (the network has {n} modules)")
      if len(set(idx_val.tolist())) != idx_val.size:
        raise ValueError(f"delete_modules: indices {idx_val.tolist()} "
                         "repeat a module")
    if k_val is not None and int(k_val) != idx.shape[0]:
      raise ValueError(f"delete_modules: k={int(k_val)} but {idx.shape[0]} "
                       "indices were given; pass one or make them agree")
    return _with_active(params, active.at[idx].set(0.0))

  if k is None:
    raise ValueError("delete_modules(params, k, key=...): k (how many "
                     "modules to delete) is required with key")
  eligible = active > 0
  if candidates is not None:
    cand = jnp.asarray(candidates).reshape(-1)
    if cand.shape[0] != n:
      raise ValueError(f"delete_modules: candidates has {cand.shape[0]} "
                       f"entries; the network has {n} modules")
    eligible = eligible & (cand > 0)
  if k_val is not None:
    k_int = int(k_val)
    if not 0 <= k_int <= n:
      raise ValueError(f"delete_modules: k={k_int} must be in 0..{n} (the "
                       f"network has {n} modules)")
    left = _concrete(eligible)
    if left is not None and k_int > int(left.sum()):
      raise ValueError(
          f"delete_modules: k={k_int} but only {int(left.sum())} modules are "
          "active (and in candidates)")
  # Ineligible modules get scores above every eligible one, so the k lowest
  # ranks are k random eligible modules.
  scores = jax.random.uniform(key, (n,)) + jnp.where(eligible, 0.0, 2.0)
  ranks = jnp.argsort(jnp.argsort(scores))
  remove = (ranks < k) & eligible
  return _with_active(params, jnp.where(remove, 0.0, active))


def single_deletion_lesions(params: Mapping[str, Any]) -> Dict[str, Any]:
  """The lesions of Veit Fig. 3: the intact network, then module i deleted.

  Returns:
    A stacked lesion pytree with n + 1 entries (leading axis): entry 0 is
    ``params``' own lesion, entry i + 1 has module i deleted.
  """
  return _single_deletions(dict(_lesion_of(params)))


@jax.jit
def _single_deletions(lesion):
  # Jitted: as eager vmapped ops this is dozens of tiny compilations.
  n = num_modules({"lesion": lesion})
  one = lambda i: delete_modules({"lesion": lesion}, indices=i[None])["lesion"]
  deleted = jax.vmap(one)(jnp.arange(n, dtype=jnp.int32))
  return jax.tree.map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]),
                      lesion, deleted)


def stack_lesions(lesions: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Stacks lesion dicts (or whole variables) along a new leading axis."""
  lesions = [_lesion_of(l) if "lesion" in l else l for l in lesions]
  if not lesions:
    raise ValueError("stack_lesions needs at least one lesion")
  return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]),
                      *lesions)


# --------------------------------------------------------------------------
# Orders


def module_order(params: Mapping[str, Any]) -> jax.Array:
  """The network's execution order as module numbers.

  Returns:
    int32[n]: entry j is the number of the module (its weights) that runs
    at position j; ``arange(n)`` for the trained order.
  """
  lesion = _lesion_of(params)
  parts, offset = [], 0
  for name, size in zip(stage_names(params), stage_sizes(params)):
    parts.append(jnp.asarray([offset], jnp.int32))
    if size > 1:
      parts.append(offset + 1 + jnp.asarray(lesion[name]["order"], jnp.int32))
    offset += size
  return jnp.concatenate(parts)


def kendall_tau(order) -> jax.Array:
  """Kendall's tau between ``order`` and the identity order 0..n-1.

  For a permutation (no ties) tau = (concordant - discordant) / (n choose 2):
  1 for the identity, -1 for a full reversal. O(n^2) memory, jittable.

  Args:
    order: a 1-D sequence of distinct values, e.g. ``module_order(params)``.

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


def swap_modules(params: Mapping[str, Any], i, j) -> Dict[str, Any]:
  """Swaps the execution positions of modules ``i`` and ``j``.

  Swapping the same pair again restores the original order exactly.

  Args:
    params: the full variables pytree; not modified.
    i, j: module numbers (forward order of the trained network) of two
      units 1..n-1 of the same stage (same shape). May be traced.

  Returns:
    A copy of ``params`` with the new ``order`` arrays.

  Raises:
    ValueError: concrete ``i``/``j`` that are unit 0 of a stage (it changes
      the shape and never moves), in different stages, or out of range.
  """
  table = module_table(params)
  n = len(table)
  iv, jv = _concrete(i), _concrete(j)
  if iv is not None and jv is not None:
    iv, jv = int(iv), int(jv)
    for m in (iv, jv):
      if not 0 <= m < n:
        raise ValueError(f"swap_modules: module {m} is not in 0..{n - 1}")
      if table[m].unit == 0:
        raise ValueError(f"swap_modules: module {m} is unit 0 of stage "
                         f"{table[m].stage}, which never moves; choose units "
                         "1..n-1 of a stage")
    if table[iv].stage != table[jv].stage:
      raise ValueError(f"swap_modules: modules {iv} and {jv} are in stages "
                       f"{table[iv].stage} and {table[jv].stage}; only "
                       "modules of the same stage have the same shape")
  lesion = _lesion_of(params)
  names = stage_names(params)
  sizes = stage_sizes(params)
  movable = [max(s - 1, 0) for s in sizes]
  # Module number of each position of the concatenated order arrays.
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  base = jnp.asarray(np.repeat(offsets + 1, movable), jnp.int32)
  order = jnp.concatenate([jnp.asarray(lesion[s]["order"], jnp.int32)
                           for s in names])
  modules = base + order
  pa = jnp.argmax(modules == i)
  pb = jnp.argmax(modules == j)
  oa, ob = order[pa], order[pb]
  order = order.at[pa].set(ob).at[pb].set(oa)
  parts = jnp.split(order, np.cumsum(movable)[:-1])
  new_lesion = {s: {**lesion[s], "order": parts[k].astype(
      jnp.asarray(lesion[s]["order"]).dtype)} for k, s in enumerate(names)}
  return {**params, "lesion": new_lesion}


def reorder_modules(params: Mapping[str, Any], num_swaps, *,
                    key: jax.Array) -> Tuple[Dict[str, Any], jax.Array]:
  """Swaps random pairs of same-shape modules (Veit sec. 4.3, Fig. 5b).

  Each swap picks a position uniformly among all movable positions (units
  1..n-1 of stages that have at least two of them; a stage's unit 0 changes
  the shape and never moves) and a second, different position of the same
  stage uniformly; the two modules running there trade places. Later swaps
  may undo earlier ones, as random swaps do.

  Args:
    params: the full variables pytree; not modified.
    num_swaps: number of swaps (Python int or traced integer: the loop is a
      ``fori_loop``, so one compiled function serves every count).
    key: PRNG key (may be traced; vmap over keys for many draws).

  Returns:
    ``(new_params, tau)``: the variables with the new ``order`` arrays, and
    Kendall's tau between the new execution order of all n modules and the
    trained order 0..n-1 (``kendall_tau(module_order(new_params))``).

  Raises:
    ValueError: a negative concrete ``num_swaps``, or swaps requested on a
      network with no stage of at least two movable modules.
  """
  lesion = _lesion_of(params)
  sizes = stage_sizes(params)
  movable = [max(s - 1, 0) for s in sizes]
  # Positions of the concatenated ``order`` arrays whose stage has a partner.
  stage_of = np.repeat(np.arange(len(sizes)), movable)
  eligible = np.flatnonzero(np.asarray(movable)[stage_of] >= 2
                            ) if stage_of.size else np.zeros(0, np.int64)
  swaps_val = _concrete(num_swaps)
  if swaps_val is not None and int(swaps_val) < 0:
    raise ValueError(f"reorder_modules: num_swaps={int(swaps_val)} must be "
                     ">= 0")
  if eligible.size == 0:
    if swaps_val is not None and int(swaps_val) == 0:
      new = {**params, "lesion": dict(lesion)}
      return new, kendall_tau(module_order(new))
    raise ValueError(
        "reorder_modules: no stage has two units of the same shape to swap "
        f"(stage sizes {list(sizes)}; unit 0 of a stage never moves)")

  new_lesion, tau = _reorder(dict(lesion), jnp.asarray(num_swaps, jnp.int32),
                             key)
  return {**params, "lesion": new_lesion}, tau


@jax.jit
def _reorder(lesion, num_swaps, key):
  # Jitted with the swap count as data: one program for every count (eager,
  # the loop would compile once per trip count). Shapes give the structure.
  variables = {"lesion": lesion}
  names = stage_names(variables)
  sizes = stage_sizes(variables)
  movable = [max(s - 1, 0) for s in sizes]
  starts = jnp.asarray(np.concatenate([[0], np.cumsum(movable)[:-1]]),
                       jnp.int32)
  stage_of = np.repeat(np.arange(len(sizes)), movable)
  eligible = np.flatnonzero(np.asarray(movable)[stage_of] >= 2)
  stage_of = jnp.asarray(stage_of, jnp.int32)
  movable_j = jnp.asarray(movable, jnp.int32)
  order = jnp.concatenate([jnp.asarray(lesion[s]["order"], jnp.int32)
                           for s in names])

  def swap(i, order):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    a = jnp.asarray(eligible, jnp.int32)[
        jax.random.randint(k1, (), 0, eligible.size)]
    s = stage_of[a]
    m, start = movable_j[s], starts[s]
    # A different position of the same stage, uniformly.
    b = start + (a - start + 1 + jax.random.randint(k2, (), 0, m - 1)) % m
    oa, ob = order[a], order[b]
    return order.at[a].set(ob).at[b].set(oa)

  order = jax.lax.fori_loop(0, num_swaps, swap, order)
  parts = jnp.split(order, np.cumsum(movable)[:-1])
  new_lesion = {s: {**lesion[s], "order": parts[i].astype(
      lesion[s]["order"].dtype)} for i, s in enumerate(names)}
  return new_lesion, kendall_tau(module_order({"lesion": new_lesion}))


# --------------------------------------------------------------------------
# One compiled evaluator for every lesion


class LesionEvaluator:
  """Test error of many lesions of one network, through one compilation.

  The images live on the device; a call evaluates a stack of lesions in
  chunks of ``lesions_per_call``, scanning over fixed-shape image batches.
  Chunks are padded with the intact lesion, so every call has the same
  shapes and the function compiles once for all lesions, orders and even
  other checkpoints of the same architecture.

  Inside the one program two branches are chosen by data (``lax.cond``):

  * the lesions of a chunk share one order (deletions, Veit Fig. 3/5a):
    the ``active`` arrays are vmapped, the weights are not, so the lesions
    run as one larger batch and the stem is computed once;
  * the orders differ (swaps, Fig. 5b): the lesions run one after another
    (``lax.map``). Vmapping differing orders would gather a different
    weight stack per lesion, turning every convolution into a batched-kernel
    (grouped) one, many times slower on CPU.

  Example::

    ev = LesionEvaluator(model, ds.test_images, ds.test_labels, ds.mean,
                         ds.std, batch_size=500, lesions_per_call=4)
    out = ev(variables, single_deletion_lesions(variables))
    out['error']          # numpy [n + 1]
    ev.compilations       # 1
  """

  def __init__(self, model: Network, images, labels, mean, std, *,
               batch_size: int = 500, lesions_per_call: int = 1):
    """Puts the evaluation set on the device and builds the jitted function.

    Args:
      model: the network (``resflax.models.create_model``).
      images: uint8 NHWC images (e.g. ``Dataset.test_images``).
      labels: int labels.
      mean, std: normalisation constants of the training set.
      batch_size: images per scanned batch (the last batch is padded and
        masked, so every image counts once).
      lesions_per_call: lesions evaluated per call (vmapped when they share
        an order). Memory grows linearly with it.

    Raises:
      ValueError: empty images, mismatched labels, or non-positive sizes.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or len(images) == 0 or len(images) != len(labels):
      raise ValueError(f"LesionEvaluator needs NHWC images and one label "
                       f"each; got images {images.shape}, labels "
                       f"{labels.shape}")
    if batch_size <= 0 or lesions_per_call <= 0:
      raise ValueError(f"batch_size ({batch_size}) and lesions_per_call "
                       f"({lesions_per_call}) must be positive")
    self.model = model
    self.num_images = len(images)
    self.lesions_per_call = int(lesions_per_call)
    layout = data_lib.eval_batches(len(images), min(batch_size, len(images)))
    self._data = tuple(jax.device_put(a) for a in (
        images, labels.astype(np.int32), np.asarray(mean, np.float32),
        np.asarray(std, np.float32), layout.indices, layout.mask))
    self._fn = jax.jit(self._errors)
    self.calls = 0

  def _errors(self, params, batch_stats, lesions, shared_order, images,
              labels, mean, std, indices, mask):
    model = self.model
    dtype = jnp.dtype(model.config.dtype)
    num = jax.tree.leaves(lesions)[0].shape[0]

    def batch(idx, m):
      x = data_lib.normalize(images[idx], mean, std, dtype=dtype)
      return x, labels[idx], m

    def score(lesion, x, y, m):
      logits = model.apply({"params": params, "batch_stats": batch_stats,
                            "lesion": lesion}, x)
      wrong = (jnp.argmax(logits, -1) != y).astype(jnp.float32) * m
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y) * m
      return wrong.sum(), loss.sum()

    def shared(_):
      # One order for the chunk: only ``active`` is batched.
      actives = {s: l["active"] for s, l in lesions.items()}

      def body(carry, xs):
        x, y, m = batch(*xs)
        one = lambda act: score(
            {s: {"active": act[s], "order": shared_order[s]}
             for s in lesions}, x, y, m)
        w, l = jax.vmap(one)(actives)
        return (carry[0] + w, carry[1] + l), None

      zeros = jnp.zeros((num,), jnp.float32)
      out, _ = jax.lax.scan(body, (zeros, zeros), (indices, mask))
      return out

    def separate(_):
      def per_lesion(lesion):
        def body(carry, xs):
          w, l = score(lesion, *batch(*xs))
          return (carry[0] + w, carry[1] + l), None
        out, _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)),
                              (indices, mask))
        return out
      return jax.lax.map(per_lesion, lesions)

    same = jnp.all(jnp.stack([
        jnp.all(l["order"] == shared_order[s][None]) for s, l in
        lesions.items()]))
    wrong, loss = jax.lax.cond(same, shared, separate, None)
    total = jnp.sum(mask)
    return wrong / total, loss / total

  @property
  def compilations(self) -> int:
    """How many programs the evaluator has compiled (1 after any use)."""
    return self._fn._cache_size()  # pylint: disable=protected-access

  def __call__(self, variables: Mapping[str, Any],
               lesions: Optional[Any] = None) -> Dict[str, np.ndarray]:
    """Evaluates lesions of ``variables``.

    Args:
      variables: the network's full variables pytree.
      lesions: a stacked lesion pytree (leading axis L, e.g. from
        ``single_deletion_lesions`` or a vmapped ``delete_modules``), a list
        of lesion dicts or variables, or None for ``variables``' own lesion.

    Returns:
      ``{'error': float64[L], 'loss': float64[L]}`` (fractions, mean loss).
    """
    if lesions is None:
      lesions = stack_lesions([variables])
    elif isinstance(lesions, (list, tuple)):
      lesions = stack_lesions(lesions)
    lesions = jax.tree.map(np.asarray, dict(lesions))
    count = jax.tree.leaves(lesions)[0].shape[0]
    per = self.lesions_per_call
    intact = jax.tree.map(np.asarray, dict(_lesion_of(variables)))
    # Pad with the intact lesion's active flags and the last lesion's order,
    # so every call has the same shapes and padding never splits a chunk
    # that shares one order.
    pad = (-count) % per
    if pad:
      lesions = {s: {"active": np.concatenate([
          l["active"], np.broadcast_to(intact[s]["active"],
                                       (pad,) + l["active"].shape[1:])]),
                     "order": np.concatenate([
                         l["order"], np.broadcast_to(
                             l["order"][-1:], (pad,) + l["order"].shape[1:])])}
                 for s, l in lesions.items()}
    errors, losses = [], []
    for start in range(0, count + pad, per):
      chunk = jax.tree.map(lambda a: a[start:start + per], lesions)
      # The first lesion's order; the program checks whether all share it.
      shared_order = {s: l["order"][0] for s, l in chunk.items()}
      e, l = self._fn(variables["params"], variables["batch_stats"], chunk,
                      shared_order, *self._data)
      self.calls += 1
      errors.append(e)
      losses.append(l)
    errors = np.concatenate(jax.device_get(errors))[:count]
    losses = np.concatenate(jax.device_get(losses))[:count]
    return {"error": errors.astype(np.float64),
            "loss": losses.astype(np.float64)}
