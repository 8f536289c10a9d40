"""Shortcut variants h of Identity Mappings Table 1 / Fig. 2.

Each shortcut is a flax module called as ``shortcut(x, fx, train)`` with the
unit's input ``x`` (pre-activated where the paper's edge rules say so) and
the residual branch output ``fx``. It returns ``(skip, residual, lesion)``:
the unit adds ``skip + residual``; ``lesion`` is what the unit outputs when
its module is deleted (Veit et al.: only the shortcut is left).

Shape changes (stride or channels) are handled by the projection option
(``model.projection``): "A" zero-pads (parameter free), "B" projects with a
1x1 conv where the shape changes, "C" projects on every unit.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resflax.models import layers
from resflax.registry import Registry

SHORTCUTS: Registry = Registry("model.shortcut")


class Shortcut(nn.Module):
  """Base: identity (or the projection where shapes change)."""
  features: int
  strides: int
  cfg: Any  # resflax.models.config.ModelConfig
  preact: bool = False

  def changes_shape(self, x) -> bool:
    return self.strides != 1 or x.shape[-1] != self.features

  def project(self, x, train):
    """h(x) of the identity family: identity, option A, B or C."""
    projection = self.cfg.projection
    if projection == "C" or (projection == "B" and self.changes_shape(x)):
      y = layers.conv(self.features, 1, self.strides,
                      dtype=jnp.dtype(self.cfg.dtype), name="proj")(x)
      # Pre-activation nets project the already normalised input, no BN
      # (fb.resnet.torch preresnet); post-activation nets add BN.
      if not self.preact:
        y = layers.bn_factory(self.cfg)(name="proj_bn")(y, train)
      return y
    if self.changes_shape(x):
      return layers.pad_shortcut(x, self.features, self.strides)
    return x

  def gate(self, x):
    """g(x) = sigmoid(conv(x) + b), b initialised to model.gate_bias_init."""
    k = self.cfg.gate_kernel
    g = layers.conv(self.features, k, self.strides, use_bias=True,
                    bias_init=nn.initializers.constant(self.cfg.gate_bias_init),
                    dtype=jnp.dtype(self.cfg.dtype), name="gate")(x)
    g = nn.sigmoid(g.astype(jnp.float32)).astype(g.dtype)
    self.sow("intermediates", "gate_mean", jnp.mean(g.astype(jnp.float32)))
    return g


@SHORTCUTS.register("identity")
class Identity(Shortcut):
  """y = h(x) + F(x)."""

  @nn.compact
  def __call__(self, x, fx, train):
    hx = self.project(x, train)
    return hx, fx, hx


@SHORTCUTS.register("scale")
class Scale(Shortcut):
  """y = lambda h(x) + F(x), or (1 - lambda) F(x) with model.scale_residual."""

  @nn.compact
  def __call__(self, x, fx, train):
    lam = self.cfg.shortcut_scale
    hx = lam * self.project(x, train)
    if self.cfg.scale_residual:
      fx = (1.0 - lam) * fx
    return hx, fx, hx


@SHORTCUTS.register("exclusive_gate")
class ExclusiveGate(Shortcut):
  """y = (1 - g(x)) h(x) + g(x) F(x): also the highway unit T F + (1 - T) x."""

  @nn.compact
  def __call__(self, x, fx, train):
    g = self.gate(x)
    hx = (1 - g) * self.project(x, train)
    return hx, g * fx, hx


@SHORTCUTS.register("shortcut_gate")
class ShortcutGate(Shortcut):
  """y = (1 - g(x)) h(x) + F(x)."""

  @nn.compact
  def __call__(self, x, fx, train):
    g = self.gate(x)
    hx = (1 - g) * self.project(x, train)
    return hx, fx, hx


@SHORTCUTS.register("conv1x1")
class Conv1x1(Shortcut):
  """y = BN(conv1x1(x)) + F(x) on every unit."""

  @nn.compact
  def __call__(self, x, fx, train):
    hx = layers.conv(self.features, 1, self.strides,
                     dtype=jnp.dtype(self.cfg.dtype), name="proj")(x)
    hx = layers.bn_factory(self.cfg)(name="proj_bn")(hx, train)
    return hx, fx, hx


@SHORTCUTS.register("dropout")
class Dropout(Shortcut):
  """y = dropout(h(x)) + F(x), rate model.shortcut_dropout, training only."""

  @nn.compact
  def __call__(self, x, fx, train):
    hx = self.project(x, train)
    dropped = nn.Dropout(self.cfg.shortcut_dropout)(hx, deterministic=not train)
    return dropped, fx, hx


@SHORTCUTS.register("none")
class NoShortcut(Shortcut):
  """y = F(x): the plain twin. A deleted plain layer passes x through
  (zero-padded where the channels grow), as in Veit et al.'s VGG lesions."""

  @nn.compact
  def __call__(self, x, fx, train):
    passthrough = (layers.pad_shortcut(x, self.features, self.strides)
                   if self.changes_shape(x) else x)
    return jnp.zeros_like(fx), fx, passthrough.astype(fx.dtype)
