"""The residual unit x_{l+1} = f(h(x_l) + F(x_l)) as a composition of pieces.

F comes from ``blocks.BLOCKS`` (``model.block``), h from
``shortcuts.SHORTCUTS`` (``model.shortcut``), and the BN/ReLU placement from
``placements.PLACEMENTS`` (``model.unit``). Per-module controls arrive as
arrays so lesions, orders and gradient routing never change the program.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resflax.models import blocks, layers, placements, shortcuts

# How a unit treats the paper's pre-activation edge rules.
PREACT = "preact"  # shortcut takes raw x; F starts with the pre-ops
BOTH_PREACT = (
    "both_preact"  # pre-ops before the split: first unit, shape change
)
NO_PREACT = "no_preact"  # input already activated by the stem (ImageNet)


def _route_gradient(a, m):
  """Value a, gradient scaled by m (0 blocks it, 1 passes it)."""
  return m * a + (1 - m) * jax.lax.stop_gradient(a)


def _stochastic_depth(res, survival, rng, per_sample: bool):
  """Huang et al. 2016: in training (``rng`` given) the branch is kept with
  probability ``survival``, for the whole batch or each image
  (``per_sample``); in evaluation it is scaled by ``survival``."""
  if rng is None:
    return res * jnp.asarray(survival, res.dtype)
  shape = (res.shape[0],) + (1,) * (res.ndim - 1) if per_sample else ()
  keep = jax.random.bernoulli(rng, survival, shape)
  return res * keep.astype(res.dtype)


class ResidualUnit(nn.Module):
  """One residual module.

  Attributes:
    cfg: the model's ModelConfig.
    width: bottleneck/basic width of the stage.
    strides: spatial stride of the unit.
    mode: PREACT, BOTH_PREACT or NO_PREACT (only matters for pre-activation
      placements).
  """

  cfg: Any
  width: int
  strides: int
  mode: str = PREACT

  @nn.compact
  def __call__(
      self,
      x,
      train: bool = False,
      active=None,
      survival=None,
      residual_grad=None,
      skip_grad=None,
  ):
    """Applies the unit.

    Args:
      x: NHWC input.
      train: batch statistics, dropout and stochastic depth on.
      active: scalar; 0 deletes the module: F contributes zero, so the
        output is f(h(x)) (f: the operations after the addition).
      survival: scalar stochastic-depth survival probability, or None.
      residual_grad, skip_grad: scalars scaling the gradient through F and
        through h (Veit et al. sec. 5); None leaves gradients alone.

    Returns:
      The unit output.
    """
    cfg = self.cfg
    pl = placements.PLACEMENTS.get(cfg.unit)
    spec = blocks.BLOCKS.get(cfg.block)(self.width, self.strides, cfg.stride_on)
    bn = layers.bn_factory(cfg)
    conv = layers.conv_factory(cfg)
    x = x.astype(jnp.dtype(cfg.dtype))

    def ops(names, h, tag):
      for op in names:
        if op == "bn":
          h = bn(name=f"bn_{tag}")(h, train)
        else:
          h = nn.relu(h)
      return h

    mode = self.mode if pl.preact else PREACT
    x_short = x
    if mode == BOTH_PREACT:
      x_short = ops(pl.pre, x, "pre0")
    h = x_short
    last = len(spec.convs) - 1
    for i, c in enumerate(spec.convs):
      if i > 0 or mode == PREACT:
        h = ops(pl.pre, h, f"pre{i}")
      if i > 0 and cfg.dropout > 0:
        h = nn.Dropout(cfg.dropout)(h, deterministic=not train)
      h = conv(c.features, c.kernel, c.strides, name=f"conv{i}")(h)
      post = pl.post if i < last else pl.last
      if post and post[0] == "bn":
        h = ops(post[:1], h, f"post{i}")
        post = post[1:]
      # He et al. Fig. 7: the response of each conv after BN, before ReLU/add.
      self.sow(
          "intermediates", f"response_std{i}", jnp.std(h.astype(jnp.float32))
      )
      h = ops(post, h, f"post{i}")

    shortcut_cls = shortcuts.SHORTCUTS.get(cfg.shortcut)
    skip, res, lesion_out = shortcut_cls(
        spec.out_features, self.strides, cfg, preact=pl.preact, name="shortcut"
    )(x_short, h, train)

    if survival is not None:
      res = _stochastic_depth(
          res,
          survival,
          self.make_rng("dropout") if train else None,
          per_sample=cfg.stochastic_depth_mode == "sample",
      )
    if skip_grad is not None:
      skip = _route_gradient(skip, skip_grad.astype(skip.dtype))
    if residual_grad is not None:
      res = _route_gradient(res, residual_grad.astype(res.dtype))
    added = skip + res
    if active is not None:
      # A deleted module's branch contributes zero and f still applies:
      # y = f(h(x)), the rule stochastic depth trains with (Torch's ReLU
      # after the addition is a module of its own that stays).
      added = jnp.where(active > 0, added, lesion_out.astype(added.dtype))
    y = ops(pl.after_add, added, "add")
    if y.shape == x.shape:
      self.sow(
          "intermediates",
          "stream_delta",
          jnp.max(jnp.abs(y.astype(jnp.float32) - x.astype(jnp.float32))),
      )
    return y
