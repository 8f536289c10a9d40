"""Shortcut variants h of Identity Mappings Table 1 / Fig. 2.

Each shortcut is a flax module called as ``shortcut(x, fx, train)`` with the
unit's input ``x`` (pre-activated where the paper's edge rules say so) and
the residual branch output ``fx``. It returns ``(skip, residual, lesion)``:
the unit adds ``skip + residual``; ``lesion`` replaces that sum when the
module is deleted (Veit et al.: only the shortcut is left; the operations
after the addition still apply, as when stochastic depth drops the branch).

Shape changes (stride or channels) are handled by the projection option
(``model.projection``): "A" zero-pads (parameter free), "B" projects with a
1x1 conv where the shape changes, "C" projects on every unit.

A shortcut declares what it needs from the rest of the framework on its
class, so a new one touches only its own definition and its registration:

  hparams    model keys it adds, with their defaults. While it is
             registered they are model keys like any other (``DEFAULTS``,
             ``resolve``, ``base_config().model``, ``--config.model.KEY``).
  init_only  model keys that only set initial values; runs differing only
             in them share one compiled program (``resflax.training.runs``).
  needs_rng  ``needs_rng(cfg)``: whether training needs a random key.
  check      ``check(cfg)``: raises ValueError for invalid values of its keys.
"""

from collections.abc import Mapping
from typing import Any, ClassVar

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

  hparams: ClassVar[Mapping[str, Any]] = {}
  init_only: ClassVar[tuple[str, ...]] = ()

  @classmethod
  def needs_rng(cls, cfg) -> bool:
    """Whether training with this shortcut needs a random key."""
    del cfg
    return False

  @classmethod
  def check(cls, cfg):
    """Raises ValueError naming a key of ``hparams`` with an invalid value."""
    del cfg

  def changes_shape(self, x) -> bool:
    return self.strides != 1 or x.shape[-1] != self.features

  def project(self, x, train):
    """h(x) of the identity family: identity, option A, B or C."""
    projection = self.cfg.projection
    if projection == "C" or (projection == "B" and self.changes_shape(x)):
      y = layers.conv_factory(self.cfg)(
          self.features, 1, self.strides, name="proj"
      )(x)
      # Pre-activation nets project the already normalised input, no BN
      # (fb.resnet.torch preresnet); post-activation nets add BN.
      if not self.preact:
        y = layers.bn_factory(self.cfg)(name="proj_bn")(y, train)
      return y
    if self.changes_shape(x):
      return layers.pad_shortcut(x, self.features, self.strides)
    return x


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

  hparams = dict(
      shortcut_scale=0.5,  # lambda
      scale_residual=False,  # also multiply F by 1 - lambda
  )

  @nn.compact
  def __call__(self, x, fx, train):
    lam = self.cfg.shortcut_scale
    hx = lam * self.project(x, train)
    if self.cfg.scale_residual:
      fx = (1.0 - lam) * fx
    return hx, fx, hx


class Gated(Shortcut):
  """Base of the gated shortcuts: a sigmoid gate g(x) of its own conv."""

  hparams = dict(
      gate_bias_init=-6.0,  # b_g of the gated shortcuts
      gate_kernel=1,  # kernel of the gate conv (1x1 in Identity Mappings)
  )
  # b_g only sets the bias's initial value.
  init_only = ("gate_bias_init",)

  @classmethod
  def check(cls, cfg):
    if cfg.gate_kernel < 1:
      raise ValueError(f"model.gate_kernel={cfg.gate_kernel} must be positive")

  def gate(self, x):
    """g(x) = sigmoid(conv(x) + b), b initialised to model.gate_bias_init."""
    k = self.cfg.gate_kernel
    g = layers.conv_factory(self.cfg)(
        self.features,
        k,
        self.strides,
        use_bias=True,
        bias_init=nn.initializers.constant(self.cfg.gate_bias_init),
        name="gate",
    )(x)
    g = nn.sigmoid(g.astype(jnp.float32)).astype(g.dtype)
    self.sow("intermediates", "gate_mean", jnp.mean(g.astype(jnp.float32)))
    return g


@SHORTCUTS.register("exclusive_gate")
class ExclusiveGate(Gated):
  """y = (1 - g(x)) h(x) + g(x) F(x): also the highway unit T F + (1 - T) x."""

  @nn.compact
  def __call__(self, x, fx, train):
    g = self.gate(x)
    hx = (1 - g) * self.project(x, train)
    return hx, g * fx, hx


@SHORTCUTS.register("shortcut_gate")
class ShortcutGate(Gated):
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
    hx = layers.conv_factory(self.cfg)(
        self.features, 1, self.strides, name="proj"
    )(x)
    hx = layers.bn_factory(self.cfg)(name="proj_bn")(hx, train)
    return hx, fx, hx


@SHORTCUTS.register("dropout")
class Dropout(Shortcut):
  """y = dropout(h(x)) + F(x), rate model.shortcut_dropout, training only."""

  hparams = dict(shortcut_dropout=0.5)  # the rate

  @classmethod
  def needs_rng(cls, cfg) -> bool:
    return cfg.shortcut_dropout > 0

  @classmethod
  def check(cls, cfg):
    if not 0.0 <= cfg.shortcut_dropout < 1.0:
      raise ValueError(
          f"model.shortcut_dropout={cfg.shortcut_dropout} must " "be in [0, 1)"
      )

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
    passthrough = (
        layers.pad_shortcut(x, self.features, self.strides)
        if self.changes_shape(x)
        else x
    )
    return jnp.zeros_like(fx), fx, passthrough.astype(fx.dtype)
