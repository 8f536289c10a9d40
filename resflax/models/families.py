"""Network families: what ``model.name`` selects, as a registry.

A family declares everything that differs between the networks of the
papers: its defaults (keys a config does not set), its depth rule (units per
stage), its stage widths, its stem, its smallest valid depth and how a config
shrinks to a smoke-test network. ``create_model`` and ``resolve`` ask the
family and have no per-family branches; a new family is a subclass of
``Family`` decorated with ``@register(name)``, which puts an instance in
``FAMILIES``.

Families see a model config only through attribute access (a
``ModelConfig``), so this module depends on no other part of the config.
"""

import dataclasses
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


class Family:
  """A CIFAR-style network (He et al. 2016 sec. 4.2), the base of the others.

  Three stages of n units at widths 16, 32, 64 (stride 2 entering stages 2
  and 3) after a 3x3 stem conv; depth 3 * (convs per unit) * n + 2. The
  stage count is that of ``default_widths``.

  Attributes:
    defaults: model keys this family sets where a config does not.
    default_widths: stage widths where ``model.widths`` is empty.
    smoke_widths: stage widths of the shrunk smoke-test network.
    smoke_image_size: the image side of smoke runs of the shrunk network
      (larger for ImageNet, whose stem divides it by 4 before the stages).
  """

  defaults: Mapping[str, Any] = {}
  default_widths: tuple[int, ...] = (16, 32, 64)
  smoke_widths: tuple[int, ...] = (4, 8, 8)
  smoke_image_size: int = 16

  def fill(self, values: dict[str, Any], given: Mapping[str, Any]):
    """Completes ``values`` in place where a key depends on another.

    Args:
      values: every model key, defaults merged with ``given``.
      given: the keys the caller set.
    """
    del values, given

  def check(self, cfg):
    """Raises ValueError for a combination this family cannot build."""
    del cfg

  def depth_rule(self, cfg) -> tuple[int, int, str]:
    """``(a, b, rule)``: valid depths are a * n + b, n >= 1.

    n units per stage of the block's convs, plus the stem and the classifier.
    """
    a = len(self.default_widths) * blocks.CONVS_PER_UNIT[cfg.block]
    return a, 2, f"{a}n+2 for model.block={cfg.block!r}"

  def units(self, cfg) -> tuple[int, ...]:
    """Residual units per stage; raises ValueError on an invalid depth."""
    a, b, rule = self.depth_rule(cfg)
    d = cfg.depth
    if d < a + b or (d - b) % a:
      raise ValueError(
          f"model.depth={d} is invalid for model.name={cfg.name!r}: depth "
          f"must be {rule}; valid depths near it: "
          f"{_valid_depths_near(d, a, b)}"
      )
    n = (d - b) // a
    return (n,) * len(self.default_widths)

  def widths(self, cfg) -> tuple[int, ...]:
    return tuple(cfg.widths) or self.default_widths

  def stem_features(self, cfg, widths: tuple[int, ...]) -> int:
    del cfg
    return widths[0]

  def stage(self, index: int, units: int, width: int) -> StageSpec:
    return StageSpec(units, width, 1 if index == 0 else 2)

  def layout(self, cfg) -> Layout:
    """The stem and stages of ``cfg``'s network.

    Raises:
      ValueError: an invalid depth or a ``model.widths`` of the wrong length.
    """
    units = self.units(cfg)
    widths = self.widths(cfg)
    if len(widths) != len(units):
      raise ValueError(
          f"model.widths needs {len(units)} entries for "
          f"{cfg.name}, got {widths}"
      )
    stages = tuple(
        self.stage(s, n, w) for s, (n, w) in enumerate(zip(units, widths))
    )
    return Layout(self.stem_features(cfg, widths), stages)

  def smallest_depth(self, cfg) -> int:
    """The smallest valid depth of ``cfg``'s variant: one unit per stage."""
    a, b, _ = self.depth_rule(cfg)
    return a + b

  def shrink(self, cfg) -> dict[str, Any]:
    """Model keys turning ``cfg`` into its variant's smallest network.

    It keeps the structure (block, shortcut, unit, projection, stage count)
    while compiling and running in seconds on a CPU.
    """
    return dict(
        depth=self.smallest_depth(cfg),
        widths=self.smoke_widths,
        bn_group_size=0,
    )


@register("cifar_resnet")
class CifarResNet(Family):
  defaults = dict(depth=20, projection="A")


@register("highway")
class Highway(Family):
  """Highway-style net (Identity Mappings Table 1 "exclusive gating")."""

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

  defaults = dict(
      depth=14,
      block="single",
      shortcut="none",
      projection="A",
      widths=(64, 128, 256),
  )

  def check(self, cfg):
    if cfg.shortcut != "none":
      raise ValueError(
          "model.name='vgg' is a plain net: model.shortcut must "
          f"be 'none', got {cfg.shortcut!r}"
      )

  def stage(self, index: int, units: int, width: int) -> StageSpec:
    return StageSpec(units, width, 1, pool_before=index > 0)


@register("wide_resnet")
class WideResNet(Family):
  """WRN-d-k (Zagoruyko & Komodakis): widths 16k, 32k, 64k; a 16-wide stem."""

  defaults = dict(depth=28, width=10, unit="full_preact", projection="B")

  def check(self, cfg):
    if cfg.block != "basic":
      raise ValueError("model.name='wide_resnet' uses model.block='basic'")

  def depth_rule(self, cfg) -> tuple[int, int, str]:
    return 6, 4, "6n+4 (WRN-d-k)"

  def widths(self, cfg) -> tuple[int, ...]:
    return tuple(cfg.widths) or tuple(
        w * cfg.width for w in self.default_widths
    )

  def stem_features(self, cfg, widths: tuple[int, ...]) -> int:
    return 16

  def shrink(self, cfg) -> dict[str, Any]:
    return {**super().shrink(cfg), "width": 1}


@register("imagenet_resnet")
class ImageNetResNet(Family):
  """He et al. 2016 Table 1: four stages after a conv7x7/2 + max-pool stem."""

  defaults = dict(depth=50, projection="B", num_classes=1000)
  default_widths = (64, 128, 256, 512)
  smoke_widths = (4, 8, 8, 8)
  smoke_image_size = 32

  def fill(self, values: dict[str, Any], given: Mapping[str, Any]):
    # The depth names the block (18/34 basic, 50+ bottleneck) unless the
    # config picks one.
    if "block" not in given and values["depth"] in IMAGENET_STAGES:
      values["block"] = IMAGENET_STAGES[values["depth"]][0]

  def check(self, cfg):
    if cfg.projection == "A":
      raise ValueError(
          "model.projection='A' is not supported for ImageNet "
          "ResNets; choose 'B' or 'C'"
      )

  def units(self, cfg) -> tuple[int, ...]:
    if cfg.depth not in IMAGENET_STAGES:
      raise ValueError(
          f"model.depth={cfg.depth} is not an ImageNet ResNet; choose one of "
          f"{', '.join(map(str, sorted(IMAGENET_STAGES)))}"
      )
    return IMAGENET_STAGES[cfg.depth][1]

  def layout(self, cfg) -> Layout:
    base = super().layout(cfg)
    return Layout(64, base.stages, imagenet_stem=True)

  def smallest_depth(self, cfg) -> int:
    # ImageNet depths are a fixed list: 18 is the smallest basic net, 50 the
    # smallest bottleneck one.
    return 50 if cfg.depth >= 50 else 18
