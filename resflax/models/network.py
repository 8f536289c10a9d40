"""A residual network: stem, stages of units (scanned), head.

The variables of a network are one pytree::

  {'params':      {'stem', 'stage0': {'unit0', 'units'}, ..., 'head'},
   'batch_stats': same layout (BN running statistics),
   'lesion':      {'stage0': {'active': f32[n], 'order': i32[m]}, ...}}

(``order`` is absent for a stage of a single unit.)

``units`` holds the stage's units 1..n-1 stacked on a leading axis; they
share shapes and run under ``jax.lax.scan``. ``order`` (a permutation of
0..m-1) says which of the stage's last m units runs at each of their
positions: m = n - 1 when unit 0 changes the shape or its role is tied to
its position (pre-activation), and m = n when unit 0 is like the others
(post-activation, same width, stride 1), which then runs in the scan too
(``Network.movable_units``). ``active`` switches a module off (0) so only
its shortcut is left. Both are data: another lesion or order of the same
network re-uses the compiled function.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resflax.models import blocks, layers, placements
from resflax.models import unit as unit_lib
from resflax.models.config import ModelConfig, needs_rng
from resflax.models.families import StageSpec


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
  """One residual module, numbered in forward order across stages."""

  index: int
  stage: int
  unit: int
  downsampling: bool  # spatial stride > 1 on this module
  changes_shape: bool  # output shape differs from input shape


class Stem(nn.Module):
  cfg: Any
  features: int
  imagenet: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    pl = placements.PLACEMENTS.get(self.cfg.unit)
    conv = layers.conv_factory(self.cfg)
    x = x.astype(jnp.dtype(self.cfg.dtype))
    if self.imagenet:
      # fb.resnet.torch: conv7x7/2-BN-ReLU-maxpool for both unit types.
      x = conv(self.features, 7, 2, name="conv")(x)
      x = layers.bn_factory(self.cfg)(name="bn")(x, train)
      x = nn.relu(x)
      return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = conv(self.features, 3, 1, name="conv")(x)
    for op in pl.stem:
      x = (
          layers.bn_factory(self.cfg)(name="bn")(x, train)
          if op == "bn"
          else nn.relu(x)
      )
    return x


class Head(nn.Module):
  cfg: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    pl = placements.PLACEMENTS.get(self.cfg.unit)
    for op in pl.final:  # Identity Mappings: extra BN-ReLU before pooling
      x = (
          layers.bn_factory(self.cfg)(name="bn")(x, train)
          if op == "bn"
          else nn.relu(x)
      )
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(
        self.cfg.num_classes,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name="fc",
    )(x)


def _prepend(first, rest):
  """``rest`` (stacked on axis 0) with ``first`` stacked in front of it."""
  return jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), first, rest)


class Network:
  """A network of the zoo with pure ``init`` and ``apply``.

  Build one with ``resflax.models.create_model``.
  """

  def __init__(
      self,
      cfg: ModelConfig,
      stem_features: int,
      stages: Sequence[StageSpec],
      imagenet_stem: bool = False,
  ):
    self.config = cfg
    self.stages = tuple(stages)
    self._stem = Stem(cfg, stem_features, imagenet_stem)
    self._head = Head(cfg)
    self._first_units = []
    self._rest_units = []
    self._first_moves = []
    expansion = blocks.EXPANSION[cfg.block]
    preact = placements.PLACEMENTS.get(cfg.unit).preact
    in_features = stem_features
    self.modules: list[ModuleInfo] = []
    for s, st in enumerate(self.stages):
      out = st.width * expansion
      # Veit et al. reorder modules of compatible dimensions. A stage's unit
      # 0 qualifies when it keeps the shape and is built like the others:
      # not under pre-activation, whose first unit feeds its pre-activation
      # to the shortcut too (BOTH_PREACT), a role tied to the position.
      self._first_moves.append(
          st.units > 1 and st.strides == 1 and in_features == out and not preact
      )
      mode = (
          unit_lib.NO_PREACT
          if (imagenet_stem and s == 0)
          else unit_lib.BOTH_PREACT
      )
      self._first_units.append(
          unit_lib.ResidualUnit(cfg, st.width, st.strides, mode)
      )
      self._rest_units.append(unit_lib.ResidualUnit(cfg, st.width, 1))
      for u in range(st.units):
        changes = u == 0 and (st.strides > 1 or in_features != out)
        self.modules.append(
            ModuleInfo(
                len(self.modules), s, u, u == 0 and st.strides > 1, changes
            )
        )
      in_features = out
    self.num_modules = len(self.modules)
    self.needs_rng = needs_rng(cfg)

  def __repr__(self):
    return f"Network({self.config})"

  # --------------------------------------------------------------- lesions
  def movable_units(self, stage: int) -> int:
    """How many of ``stage``'s units a reordering may move (its last ones).

    All of them when unit 0 keeps the shape and is built like the rest
    (post-activation stages of unchanged width and stride 1); else units
    1..n-1; 0 for a stage of one unit.
    """
    units = self.stages[stage].units
    if units < 2:
      return 0
    return units if self._first_moves[stage] else units - 1

  def default_lesion(self) -> dict[str, dict[str, jax.Array]]:
    """All modules on, identity order."""
    lesion = {}
    for s, st in enumerate(self.stages):
      lesion[f"stage{s}"] = {"active": jnp.ones((st.units,), jnp.float32)}
      if st.units > 1:  # a stage of one unit has nothing to reorder
        lesion[f"stage{s}"]["order"] = jnp.arange(
            self.movable_units(s), dtype=jnp.int32
        )
    return lesion

  def split_by_stage(self, flat) -> list[jax.Array]:
    """Splits a per-module array (forward order) into per-stage arrays."""
    flat = jnp.asarray(flat)
    if flat.shape[0] != self.num_modules:
      raise ValueError(
          f"expected {self.num_modules} per-module values, got "
          f"{flat.shape[0]}"
      )
    bounds = np.cumsum([st.units for st in self.stages])[:-1]
    return jnp.split(flat, bounds)

  def survival_probabilities(self) -> np.ndarray | None:
    """Stochastic depth p_l = 1 - l/L (1 - p_L) per module, or None."""
    p_last = self.config.stochastic_depth
    if p_last >= 1.0:
      return None
    n = self.num_modules
    return 1.0 - np.arange(1, n + 1) / n * (1.0 - p_last)

  # ------------------------------------------------------------------ init
  def init(self, key: jax.Array, images: jax.Array) -> dict[str, Any]:
    """Initialises every variable of the network (He init, BN at 1/0)."""
    return jax.jit(self._init)(key, images)

  def _init(self, key, images):
    keys = jax.random.split(key, 2 + len(self.stages))
    params, stats = {}, {}

    def take(name, module, k, x):
      v = module.init(k, x, train=False)
      params[name] = v["params"]
      stats[name] = v.get("batch_stats", {})
      return module.apply(
          {"params": v["params"], "batch_stats": stats[name]}, x, train=False
      )

    x = take("stem", self._stem, keys[0], images)
    for s, st in enumerate(self.stages):
      if st.pool_before:
        x = nn.max_pool(x, (2, 2), (2, 2))
      k0, k1 = jax.random.split(keys[2 + s])
      v0 = self._first_units[s].init(k0, x, train=False)
      x = self._first_units[s].apply(
          {"params": v0["params"], "batch_stats": v0.get("batch_stats", {})},
          x,
          train=False,
      )
      p = {"unit0": v0["params"]}
      b = {"unit0": v0.get("batch_stats", {})}
      if st.units > 1:
        rest = self._rest_units[s]
        vr = jax.vmap(lambda k: rest.init(k, x, train=False))(
            jax.random.split(k1, st.units - 1)
        )
        p["units"] = vr["params"]
        b["units"] = vr.get("batch_stats", {})
      params[f"stage{s}"], stats[f"stage{s}"] = p, b
    take("head", self._head, keys[1], x)
    return {
        "params": params,
        "batch_stats": stats,
        "lesion": self.default_lesion(),
    }

  # ----------------------------------------------------------------- apply
  def _scan_units(self, run, stage: int, x, xs):
    """Runs the stacked same-shape units ``xs`` of ``stage`` in turn.

    Returns:
      ``(x, batch_stats, intermediates)``, both stacked in the order run.
    """
    rest, cfg = self._rest_units[stage], self.config
    count = jax.tree.leaves(xs[0])[0].shape[0]

    def body(h, xs_i):
      pi, bi, ci, ki = xs_i
      h, bn_i, it_i = run(rest, pi, bi, h, ki, **ci)
      return h, (bn_i, it_i)

    if cfg.scan:
      # Each loop iteration costs a fixed overhead on GPUs; unrolling
      # trades it for compile time. A factor covering the whole stage
      # emits no loop at all.
      x, (bn, it) = jax.lax.scan(
          body, x, xs, unroll=min(cfg.scan_unroll, count)
      )
      return x, bn, it
    outs = []
    for i in range(count):
      x, out = body(x, jax.tree.map(lambda a, i=i: a[i], xs))
      outs.append(out)
    bn, it = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return x, bn, it

  def _run_stage(self, run, s: int, x, p, b, lesion, ctrl, keys):
    """Stage ``s``: its fixed unit 0 (if any), then its movable units in
    the order of its ``lesion`` entry.

    Returns:
      ``(x, batch_stats, intermediates)`` of the stage, the last two keyed
      ``unit0``/``units`` like its parameters.
    """
    st = self.stages[s]
    fixed = st.units - self.movable_units(s) if st.units > 1 else 1
    if fixed:  # unit 0 runs where it was trained
      first = {k: (None if v is None else v[0]) for k, v in ctrl.items()}
      x, b0, i0 = run(
          self._first_units[s],
          p["unit0"],
          b["unit0"],
          x,
          None if keys is None else keys[0],
          **first,
      )
      if st.units == 1:
        return x, {"unit0": b0}, {"unit0": i0}
      stacked = (p["units"], b["units"])
    else:  # unit 0 is one of the scanned units, in lesion order
      stacked = (_prepend(p["unit0"], p["units"]),)
      stacked += (_prepend(b["unit0"], b["units"]),)
    order = lesion["order"]
    take = lambda t: jax.tree.map(lambda a: a[order], t)
    xs = (
        take(stacked[0]),
        take(stacked[1]),
        {k: (None if v is None else v[fixed:][order]) for k, v in ctrl.items()},
        None if keys is None else keys[fixed:],
    )
    x, bn_new, it_new = self._scan_units(run, s, x, xs)
    # Running statistics go back to their modules; intermediates stay in
    # execution order.
    bn_new = jax.tree.map(lambda a: a[jnp.argsort(order)], bn_new)
    if fixed:
      return x, {"unit0": b0, "units": bn_new}, {"unit0": i0, "units": it_new}
    head = lambda t: jax.tree.map(lambda a: a[0], t)
    tail = lambda t: jax.tree.map(lambda a: a[1:], t)
    return (
        x,
        {"unit0": head(bn_new), "units": tail(bn_new)},
        {"unit0": head(it_new), "units": tail(it_new)},
    )

  def apply(
      self,
      variables: dict[str, Any],
      images: jax.Array,
      *,
      train: bool = False,
      rng: jax.Array | None = None,
      residual_grad=None,
      skip_grad=None,
      capture: bool = False,
  ):
    """Runs the network.

    Args:
      variables: the pytree from ``init`` (or a checkpoint).
      images: NHWC float images, already normalised.
      train: use batch statistics (and return updated running statistics),
        dropout and stochastic depth. Needs ``rng`` when the model has
        dropout or stochastic depth.
      rng: PRNG key for dropout / stochastic depth in training.
      residual_grad, skip_grad: optional float arrays of length
        ``num_modules`` scaling the gradient that flows through each
        module's residual branch / shortcut (the forward pass is
        unchanged); used by ``resflax.lesion.paths`` and effective-path
        training.
      capture: also return per-unit statistics sown by the units
        (``response_std{i}``, ``stream_delta``, ``gate_mean``), in execution
        order within each stage.

    Returns:
      ``logits`` in evaluation mode; ``(logits, new_variables)`` in training
      mode (``new_variables`` has updated ``batch_stats``); with
      ``capture=True`` the intermediates are appended as a last element.
    """
    if train and self.needs_rng and rng is None:
      raise ValueError(
          "this model has dropout or stochastic depth: pass "
          "rng=... to apply(train=True)"
      )
    cfg = self.config
    mutable = (["batch_stats"] if train else []) + (
        ["intermediates"] if capture else []
    )
    params, stats = variables["params"], variables["batch_stats"]
    lesion = variables.get("lesion") or self.default_lesion()
    survival = self.survival_probabilities()
    per_stage = lambda a: (None if a is None else self.split_by_stage(a))
    surv_s = per_stage(survival)
    rg_s, sg_s = per_stage(residual_grad), per_stage(skip_grad)
    rngs = None if rng is None else jax.random.split(rng, len(self.stages))

    def run(module, p, s, x, key, **kw):
      out = module.apply(
          {"params": p, "batch_stats": s},
          x,
          train=train,
          rngs=None if key is None else {"dropout": key},
          mutable=mutable or False,
          **kw,
      )
      y, upd = out if mutable else (out, {})
      return y, upd.get("batch_stats", s), upd.get("intermediates", {})

    if cfg.remat:
      run = jax.checkpoint(run, static_argnums=(0,))

    new_stats, inter = {}, {}
    x, new_stats["stem"], inter["stem"] = run(
        self._stem, params["stem"], stats["stem"], images, None
    )
    for s, st in enumerate(self.stages):
      if st.pool_before:
        x = nn.max_pool(x, (2, 2), (2, 2))
      name = f"stage{s}"
      ctrl = dict(
          active=lesion[name]["active"],
          survival=None if surv_s is None else surv_s[s],
          residual_grad=None if rg_s is None else rg_s[s],
          skip_grad=None if sg_s is None else sg_s[s],
      )
      keys = None if rngs is None else jax.random.split(rngs[s], st.units)
      x, new_stats[name], inter[name] = self._run_stage(
          run,
          s,
          x,
          params[name],
          stats[name],
          lesion[name],
          ctrl,
          keys,
      )
    logits, new_stats["head"], inter["head"] = run(
        self._head, params["head"], stats["head"], x, None
    )
    result = [logits]
    if train:
      result.append({**variables, "batch_stats": new_stats})
    if capture:
      result.append(inter)
    return result[0] if len(result) == 1 else tuple(result)
