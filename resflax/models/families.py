"""Network families: what ``model.name`` selects, as a registry.

A family declares, as data, everything that differs between the networks
of the papers: its defaults (keys a config does not set), the values it
allows, its stage widths, its stem, how stages downsample, its depth rule
or table and its smoke-test size. ``Family``'s methods apply the same
rules to every family, so ``create_model`` and ``resolve`` have no
per-family branches; a new family is a subclass of ``Family`` setting class
attributes, decorated with ``@register(name)``, which puts an instance in
``FAMILIES``.

Families see a model config only through attribute access (a
``ModelConfig``), so this module depends on no other part of the config.
"""

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from resflax.models import blocks
from resflax.registry import Registry

FAMILIES: Registry["Family"] = Registry("model.name")

# ImageNet units per stage (He et al. 2016 Table 1; ResNet-200 from
# Identity Mappings / fb.resnet.torch).
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class StageSpec:
  units: int
  width: int
  strides: int
  pool_before: bool = False  # VGG: 2x2 max-pool before the stage


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a family builds for one config: the stem and the stages."""

  stem_features: int
  stages: tuple[StageSpec, ...]
  imagenet_stem: bool = False  # conv7x7/2-BN-ReLU-maxpool instead of conv3x3


def register(name: str):
  """Class decorator registering an instance of a ``Family`` subclass."""

  def deco(cls):
    FAMILIES.register(name)(cls())
    return cls

  return deco


def _valid_depths_near(depth: int, a: int, b: int) -> str:
  valid = [a * n + b for n in range(1, 400)]
  near = sorted(valid, key=lambda d: abs(d - depth))[:4]
  return ", ".join(str(d) for d in sorted(near))


# Former Family hooks, now data attributes, and the private rule that took
# each one's place: a family still overriding one keeps working, warned.
_OLD_HOOKS = {
    "depth_rule": "_depth_rule",
    "widths": "_widths",
    "stem_features": "_stem_features",
    "stage": "_stage",
}


class Family:
  """A network family as data; the methods are the rules every family shares.

  A family is a subclass setting some of the class attributes below,
  registered with ``@register(name)``. The base values describe a CIFAR
  ResNet (He et al. 2016 sec. 4.2): three stages of n units at widths 16,
  32, 64 (stride 2 entering stages 2 and 3) after a 3x3 stem conv; depth
  (stages * convs per unit) * n + 2.
  """

  # What the family builds, for error messages.
  title: str = "a CIFAR ResNet"
  # Model keys this family sets where a config does not.
  defaults: Mapping[str, Any] = {}
  # Model key -> the only values this family builds.
  allowed: Mapping[str, tuple[Any, ...]] = {}
  # Stage widths where model.widths is empty; their count is the stage count.
  default_widths: tuple[int, ...] = (16, 32, 64)
  # default_widths are multiplied by model.width (WRN's widening factor k).
  widen: bool = False
  # Features of the stem conv; 0 = the first stage's width.
  stem_width: int = 0
  # conv7x7/2-BN-ReLU-maxpool stem instead of a conv3x3 (ImageNet).
  imagenet_stem: bool = False
  # A 2x2 max-pool before each stage but the first, every stage at stride 1
  # (Veit et al.'s VGG), instead of stride 2 entering stages 2, 3, ...
  pool_between_stages: bool = False
  # Layers outside the units: depth = stages * convs per unit * n + this.
  depth_offset: int = 2
  # depth -> (block, units per stage): the only valid depths, instead of the
  # rule above; the depth names the block unless a config sets it.
  depth_table: Mapping[int, tuple[str, tuple[int, ...]]] = {}
  # Stage widths of the shrunk smoke-test network.
  smoke_widths: tuple[int, ...] = (4, 8, 8)
  # Image side of smoke runs of the shrunk network (larger for ImageNet,
  # whose stem divides it by 4 before the stages).
  smoke_image_size: int = 16

  def __init_subclass__(cls, **kw):
    super().__init_subclass__(**kw)
    for old, new in _OLD_HOOKS.items():
      if old in vars(cls):
        warnings.warn(
            f"{cls.__name__}.{old}: Family.{old} is no longer a hook (the "
            "family's data attributes replace it) and goes in the next "
            "release",
            DeprecationWarning,
            stacklevel=2,
        )
        setattr(cls, new, vars(cls)[old])

  def fill(self, values: dict[str, Any], given: Mapping[str, Any]):
    """Completes ``values`` in place where a key depends on another.

    Args:
      values: every model key, defaults merged with ``given``.
      given: the keys the caller set.
    """
    if "block" not in given and values["depth"] in self.depth_table:
      values["block"] = self.depth_table[values["depth"]][0]

  def check(self, cfg):
    """Raises ValueError for a value this family does not build."""
    for key, allowed in self.allowed.items():
      if getattr(cfg, key) not in allowed:
        raise ValueError(
            f"model.{key}={getattr(cfg, key)!r} is not valid for "
            f"model.name={cfg.name!r} ({self.title}); choose "
            f"{', '.join(map(str, allowed))}"
        )

  def units(self, cfg) -> tuple[int, ...]:
    """Residual units per stage; raises ValueError on an invalid depth."""
    d = cfg.depth
    if self.depth_table:
      if d not in self.depth_table:
        raise ValueError(
            f"model.depth={d} is invalid for model.name={cfg.name!r} "
            f"({self.title}); choose one of "
            f"{', '.join(map(str, sorted(self.depth_table)))}"
        )
      return self.depth_table[d][1]
    a, b, rule = self._depth_rule(cfg)
    if d < a + b or (d - b) % a:
      raise ValueError(
          f"model.depth={d} is invalid for model.name={cfg.name!r}: depth "
          f"must be {rule}; valid depths near it: "
          f"{_valid_depths_near(d, a, b)}"
      )
    return ((d - b) // a,) * len(self.default_widths)

  def layout(self, cfg) -> Layout:
    """The stem and stages of ``cfg``'s network.

    Raises:
      ValueError: an invalid depth or a ``model.widths`` of the wrong length.
    """
    units = self.units(cfg)
    widths = self._widths(cfg)
    if len(widths) != len(units):
      raise ValueError(
          f"model.widths needs {len(units)} entries for "
          f"{cfg.name}, got {widths}"
      )
    stages = tuple(
        self._stage(s, n, w) for s, (n, w) in enumerate(zip(units, widths))
    )
    return Layout(self._stem_features(cfg, widths), stages, self.imagenet_stem)

  def smallest_depth(self, cfg) -> int:
    """The smallest valid depth of ``cfg``'s variant.

    One unit per stage, or the table's smallest depth of the same block
    (ImageNet: 18 for basic nets, 50 for bottleneck ones).
    """
    if self.depth_table:
      block = self.depth_table[cfg.depth][0]
      return min(d for d, (b, _) in self.depth_table.items() if b == block)
    a, b, _ = self._depth_rule(cfg)
    return a + b

  def shrink(self, cfg) -> dict[str, Any]:
    """Model keys turning ``cfg`` into its variant's smallest network.

    It keeps the structure (block, shortcut, unit, projection, stage count)
    while compiling and running in seconds on a CPU.
    """
    small = dict(
        depth=self.smallest_depth(cfg),
        widths=self.smoke_widths,
        bn_group_size=0,
    )
    return {**small, "width": 1} if self.widen else small

  def _depth_rule(self, cfg) -> tuple[int, int, str]:
    """``(a, b, rule)``: valid depths are a * n + b, n >= 1."""
    a = len(self.default_widths) * blocks.CONVS_PER_UNIT[cfg.block]
    b = self.depth_offset
    return a, b, f"{a}n+{b} for model.block={cfg.block!r}"

  def _widths(self, cfg) -> tuple[int, ...]:
    k = cfg.width if self.widen else 1
    return tuple(cfg.widths) or tuple(w * k for w in self.default_widths)

  def _stem_features(self, cfg, widths: tuple[int, ...]) -> int:
    del cfg
    return self.stem_width or widths[0]

  def _stage(self, index: int, units: int, width: int) -> StageSpec:
    if self.pool_between_stages:
      return StageSpec(units, width, 1, pool_before=index > 0)
    return StageSpec(units, width, 1 if index == 0 else 2)


@register("cifar_resnet")
class CifarResNet(Family):
  defaults = dict(depth=20, projection="A")


@register("highway")
class Highway(Family):
  """Highway-style net (Identity Mappings Table 1 "exclusive gating")."""

  title = "a highway net"
  defaults = dict(
      depth=20,
      block="single",
      unit="relu_before_add",
      shortcut="exclusive_gate",
      gate_kernel=3,
      gate_bias_init=-2.0,
      projection="A",
  )


@register("vgg")
class Vgg(Family):
  """The plain VGG-like net of Veit et al.: stride-1 stages after max-pools."""

  title = "a plain net"
  defaults = dict(
      depth=14,
      block="single",
      shortcut="none",
      projection="A",
      widths=(64, 128, 256),
  )
  allowed = dict(shortcut=("none",))
  pool_between_stages = True


@register("wide_resnet")
class WideResNet(Family):
  """WRN-d-k (Zagoruyko & Komodakis): widths 16k, 32k, 64k; a 16-wide stem."""

  title = "a wide ResNet, WRN-d-k"
  defaults = dict(depth=28, width=10, unit="full_preact", projection="B")
  allowed = dict(block=("basic",))
  widen = True
  stem_width = 16
  depth_offset = 4


@register("imagenet_resnet")
class ImageNetResNet(Family):
  """He et al. 2016 Table 1: four stages after a conv7x7/2 + max-pool stem."""

  title = "an ImageNet ResNet"
  defaults = dict(depth=50, projection="B", num_classes=1000)
  allowed = dict(projection=("B", "C"))
  depth_table = IMAGENET_STAGES
  default_widths = (64, 128, 256, 512)
  stem_width = 64
  imagenet_stem = True
  smoke_widths = (4, 8, 8, 8)
  smoke_image_size = 32
