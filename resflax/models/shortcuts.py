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

  hparams             model keys it adds, with their defaults. While it is
                      registered they are model keys like any other
                      (``DEFAULTS``, ``resolve``, ``base_config().model``,
                      ``--config.model.KEY``).
  initial_value_keys  keys of ``hparams`` that only set initial parameter
                      values (``models.initial_value_keys``).
  requires_selection  keys of ``hparams`` that may leave their default only
                      while a shortcut declaring them is selected.
  needs_rng           ``needs_rng(cfg)``: whether training needs a random key.
  check               ``check(cfg)``: raises ValueError for invalid values of
                      its keys (called when the shortcut is selected).

The built-in shortcuts write their keys out as typed dataclasses
(``ScaleKeys``, ``GateKeys``, ``DropoutKeys``); ``ShortcutKeys`` joins them
and is a base of ``config.ModelConfig``, so each is a typed field there.
"""

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from resflax.models import layers
from resflax.registry import Registry


@dataclasses.dataclass(frozen=True)
class DropoutKeys:
  """Model keys of the dropout shortcut."""

  shortcut_dropout: float = 0.5  # dropout rate on h(x), training only


@dataclasses.dataclass(frozen=True)
class GateKeys:
  """Model keys of the gated shortcuts (exclusive_gate, shortcut_gate)."""

  gate_bias_init: float = -6.0  # b_g: initial bias of the gate conv
  gate_kernel: int = 1  # kernel of the gate conv (1x1 in Identity Mappings)


@dataclasses.dataclass(frozen=True)
class ScaleKeys:
  """Model keys of the scale shortcut."""

  shortcut_scale: float = 0.5  # lambda, the factor on h(x)
  scale_residual: bool = False  # also multiply F by 1 - lambda


@dataclasses.dataclass(frozen=True)
class ShortcutKeys(ScaleKeys, GateKeys, DropoutKeys):
  """The keys of every built-in shortcut (dropout, gate, then scale keys)."""


def defaults_of(keys: type) -> dict[str, Any]:
  """A keys dataclass as ``hparams``: its field names and defaults."""
  return {f.name: f.default for f in dataclasses.fields(keys)}


class ShortcutRegistry(Registry):
  """The registry of shortcuts; tells listeners when its entries change.

  Model keys come from the registered shortcuts, so ``config`` listens and
  recomputes ``DEFAULTS`` once per registration instead of on each access.
  """

  def __init__(self, kind: str):
    super().__init__(kind)
    self._listeners: list[Callable[[], None]] = []

  def listen(self, listener: Callable[[], None]):
    """Calls ``listener()`` after every register and unregister."""
    self._listeners.append(listener)

  def register(self, name: str):
    add = super().register(name)

    def deco(cls):
      old = getattr(cls, "init_only", None)
      if old is not None:
        warnings.warn(
            f"model.shortcut={name!r}: Shortcut.init_only is renamed "
            "initial_value_keys; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        cls.initial_value_keys = tuple(old)
      add(cls)
      self._changed()
      return cls

    return deco

  def unregister(self, name: str):
    entry = super().unregister(name)
    self._changed()
    return entry

  def _changed(self):
    for listener in self._listeners:
      listener()


SHORTCUTS: ShortcutRegistry = ShortcutRegistry("model.shortcut")


class Shortcut(nn.Module):
  """Base: identity (or the projection where shapes change)."""

  features: int
  strides: int
  cfg: Any  # resflax.models.config.ModelConfig
  preact: bool = False

  # Model keys it adds -> their defaults (see the module docstring).
  hparams: ClassVar[Mapping[str, Any]] = {}
  # Keys of hparams that only set initial parameter values: two models
  # differing only in them compute the same function of their variables.
  initial_value_keys: ClassVar[tuple[str, ...]] = ()
  # Keys of hparams whose non-default value would do nothing silently unless
  # a shortcut declaring them is selected; config validation refuses that.
  requires_selection: ClassVar[tuple[str, ...]] = ()

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

  hparams = defaults_of(ScaleKeys)
  # scale_residual=True under another shortcut would scale nothing.
  requires_selection = ("scale_residual",)

  @nn.compact
  def __call__(self, x, fx, train):
    lam = self.cfg.shortcut_scale
    hx = lam * self.project(x, train)
    if self.cfg.scale_residual:
      fx = (1.0 - lam) * fx
    return hx, fx, hx


class Gated(Shortcut):
  """Base of the gated shortcuts: a sigmoid gate g(x) of its own conv."""

  hparams = defaults_of(GateKeys)
  # b_g only sets the bias's initial value.
  initial_value_keys = ("gate_bias_init",)

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

  hparams = defaults_of(DropoutKeys)

  @classmethod
  def needs_rng(cls, cfg) -> bool:
    return cfg.shortcut_dropout > 0

  @classmethod
  def check(cls, cfg):
    if not 0.0 <= cfg.shortcut_dropout < 1.0:
      raise ValueError(
          f"model.shortcut_dropout={cfg.shortcut_dropout} must be in [0, 1)"
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
