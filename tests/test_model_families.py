"""Network families as a registry: layouts, defaults, smallest nets, shrink,
and the common names (``create_model("resnet110")``)."""

import os

import jax
import jax.numpy as jnp
import pytest

from resflax import models
from resflax.config import base_config
from resflax.models import families

KEY = jax.random.key(0)


def test_registry_lists_the_five_families():
  assert models.FAMILIES.names() == [
      "cifar_resnet",
      "highway",
      "imagenet_resnet",
      "vgg",
      "wide_resnet",
  ]
  with pytest.raises(
      ValueError,
      match="model.name='resnet'.*cifar_resnet, "
      "highway, imagenet_resnet, vgg, wide_resnet",
  ):
    models.create_model(name="resnet")


# (units, width, strides, pool_before) per stage, from the papers:
# He et al. 2016 sec. 4.2 (CIFAR 6n+2) and Table 1 (ImageNet), WRN-28-10
# (16k, 32k, 64k), Veit et al.'s VGG (max-pool between stride-1 stages), the
# highway net of Identity Mappings (one conv per unit, 3n+2).
@pytest.mark.parametrize(
    "kw,stem,imagenet_stem,stages",
    [
        (
            dict(name="cifar_resnet", depth=110),
            16,
            False,
            [(18, 16, 1, False), (18, 32, 2, False), (18, 64, 2, False)],
        ),
        (
            dict(name="imagenet_resnet", depth=50),
            64,
            True,
            [
                (3, 64, 1, False),
                (4, 128, 2, False),
                (6, 256, 2, False),
                (3, 512, 2, False),
            ],
        ),
        (
            dict(name="imagenet_resnet", depth=101),
            64,
            True,
            [
                (3, 64, 1, False),
                (4, 128, 2, False),
                (23, 256, 2, False),
                (3, 512, 2, False),
            ],
        ),
        (
            dict(name="wide_resnet", depth=28, width=10),
            16,
            False,
            [(4, 160, 1, False), (4, 320, 2, False), (4, 640, 2, False)],
        ),
        (
            dict(name="vgg", depth=14),
            64,
            False,
            [(4, 64, 1, False), (4, 128, 1, True), (4, 256, 1, True)],
        ),
        (
            dict(name="highway", depth=20),
            16,
            False,
            [(6, 16, 1, False), (6, 32, 2, False), (6, 64, 2, False)],
        ),
    ],
)
def test_layouts_follow_the_papers(kw, stem, imagenet_stem, stages):
  cfg = models.resolve(**kw)
  layout = models.FAMILIES.get(cfg.name).layout(cfg)
  assert layout.stem_features == stem
  assert layout.imagenet_stem == imagenet_stem
  got = [(s.units, s.width, s.strides, s.pool_before) for s in layout.stages]
  assert got == stages
  assert models.units_per_stage(cfg) == tuple(s[0] for s in stages)
  assert models.create_model(**kw).stages == layout.stages


def test_family_defaults_apply_where_the_config_is_silent():
  hw = models.resolve(name="highway")
  assert (
      hw.depth,
      hw.block,
      hw.unit,
      hw.shortcut,
      hw.gate_kernel,
      hw.gate_bias_init,
  ) == (20, "single", "relu_before_add", "exclusive_gate", 3, -2.0)
  inet = models.resolve(name="imagenet_resnet", depth=18)
  assert (inet.block, inet.projection, inet.num_classes) == ("basic", "B", 1000)
  assert (
      models.resolve(name="imagenet_resnet", depth=18, block="bottleneck").block
      == "bottleneck"
  )
  # "" means the family's projection; an explicit key wins over it.
  assert models.resolve(name="cifar_resnet", projection="").projection == "A"
  assert models.resolve(name="highway", gate_kernel=1).gate_kernel == 1
  with pytest.raises(ValueError, match="plain net"):
    models.resolve(name="vgg", shortcut="identity")
  with pytest.raises(ValueError, match="model.widths needs 4 entries"):
    models.resolve(name="imagenet_resnet", widths=(4, 8, 8))


# Smallest nets: one unit per stage (3 * convs + 2 on CIFAR, 6 + 4 for a
# WRN); ImageNet keeps basic (ResNet-18) or bottleneck (ResNet-50) units.
@pytest.mark.parametrize(
    "model,depth,extra",
    [
        (dict(name="cifar_resnet", depth=110), 8, {}),
        (
            dict(
                name="cifar_resnet",
                depth=1001,
                block="bottleneck",
                unit="full_preact",
                projection="B",
            ),
            11,
            {},
        ),
        (dict(name="cifar_resnet", depth=110, block="single"), 5, {}),
        (dict(name="highway", depth=50), 5, {}),
        (dict(name="vgg", depth=14), 5, {}),
        (dict(name="wide_resnet", depth=28, width=10), 10, {"width": 1}),
        (dict(name="imagenet_resnet", depth=18), 18, {}),
        (dict(name="imagenet_resnet", depth=34), 18, {}),
        (dict(name="imagenet_resnet", depth=50), 50, {}),
        (dict(name="imagenet_resnet", depth=200), 50, {}),
    ],
)
def test_shrink_gives_the_smallest_net_of_the_variant(model, depth, extra):
  imagenet = model["name"] == "imagenet_resnet"
  want = {
      "depth": depth,
      "widths": (4, 8, 8, 8) if imagenet else (4, 8, 8),
      "bn_group_size": 0,
      **extra,
  }
  assert models.shrink({**model, "bn_group_size": 64}) == want
  assert models.smallest_depth(model) == depth
  big = models.resolve(model)
  small = models.resolve({**model, **want})
  # He et al. Table 1 for ImageNet.
  units = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth] if imagenet else (1, 1, 1)
  assert models.units_per_stage(small) == units
  for key in ("name", "block", "shortcut", "unit", "projection"):
    assert getattr(small, key) == getattr(big, key)
  assert models.FAMILIES.get(big.name).smoke_image_size == (
      32 if imagenet else 16
  )


def test_shrink_reads_an_experiment_config():
  config = base_config()
  config.model.depth = 110
  config.model.bn_group_size = 64
  assert models.shrink(config.model) == {
      "depth": 8,
      "widths": (4, 8, 8),
      "bn_group_size": 0,
  }
  assert models.shrink("preact_resnet1001")["depth"] == 11
  with pytest.raises(ValueError, match="model.depth=21"):
    models.shrink(dict(depth=21))


@pytest.fixture
def two_stage_family():
  @families.register("two_stage")
  class TwoStage(families.Family):  # pylint: disable=unused-variable
    defaults = dict(depth=6, projection="A")
    default_widths = (8, 16)

  yield
  models.FAMILIES.unregister("two_stage")


def test_a_registered_family_builds_without_touching_create_model(
    two_stage_family,
):
  del two_stage_family
  m = models.create_model(name="two_stage")
  assert [(s.units, s.width, s.strides) for s in m.stages] == [
      (1, 8, 1),
      (1, 16, 2),
  ]
  v = jax.eval_shape(m.init, KEY, jnp.zeros((1, 16, 16, 3)))
  stem = 3 * 3 * 3 * 8 + 2 * 8  # conv, BN
  unit0 = 2 * 3 * 3 * 8 * 8 + 2 * 2 * 8  # two convs, two BNs
  unit1 = 3 * 3 * 8 * 16 + 3 * 3 * 16 * 16 + 2 * 2 * 16  # option A: no proj
  head = 16 * 10 + 10
  assert models.num_params(v) == stem + unit0 + unit1 + head
  # Its depth rule follows its two stages: 2 * 2n + 2.
  with pytest.raises(ValueError, match="4n\\+2.*6, 10"):
    models.create_model(name="two_stage", depth=8)
  assert models.shrink(dict(name="two_stage", depth=10))["depth"] == 6


def test_a_family_overriding_a_former_hook_still_works_with_a_warning():
  with pytest.warns(DeprecationWarning, match="depth_rule"):

    class OldStyle(families.Family):
      defaults = dict(depth=10, projection="A")

      def depth_rule(self, cfg):
        return 6, 4, "6n+4 (old hook)"

  families.register("old_style")(OldStyle)
  try:
    assert models.resolve(name="old_style", depth=10).depth == 10
    with pytest.raises(ValueError, match="6n\\+4 \\(old hook\\)"):
      models.resolve(name="old_style", depth=8)
  finally:
    models.FAMILIES.unregister("old_style")


def test_common_names_expand_to_the_keyword_forms():
  same = {
      "resnet110": dict(name="cifar_resnet", depth=110),
      "resnet1202": dict(name="cifar_resnet", depth=1202),
      "plain56": dict(name="cifar_resnet", depth=56, shortcut="none"),
      "resnet34": dict(name="imagenet_resnet", depth=34),
      "resnet200": dict(name="imagenet_resnet", depth=200),
      "preact_resnet164": dict(
          name="cifar_resnet",
          depth=164,
          block="bottleneck",
          unit="full_preact",
          projection="B",
      ),
      "preact_resnet1001": dict(
          name="cifar_resnet",
          depth=1001,
          block="bottleneck",
          unit="full_preact",
          projection="B",
      ),
      "wrn28_10": dict(name="wide_resnet", depth=28, width=10),
      "vgg": dict(name="vgg"),
  }
  for name, kw in same.items():
    assert models.resolve(name) == models.resolve(**kw), name
  # ResNet-50/101/152 are bottleneck ImageNet nets, although their depths
  # are also 6n+2.
  for depth in (50, 101, 152):
    cfg = models.create_model(f"resnet{depth}").config
    assert (cfg.name, cfg.block, cfg.num_classes) == (
        "imagenet_resnet",
        "bottleneck",
        1000,
    )
  # Keywords apply on top of a name.
  cfg = models.create_model(
      "resnet110", unit="full_preact", num_classes=100
  ).config
  assert (cfg.depth, cfg.unit, cfg.num_classes) == (110, "full_preact", 100)
  assert models.create_model("wrn16_8", dropout=0.3).config.dropout == 0.3


def test_bad_common_names_list_valid_forms():
  for bad in ("resnet", "foo", "wrn28", "resnet-110"):
    with pytest.raises(
        ValueError, match="resnetD.*plainD.*preact_resnetD.*" "wrnD_K"
    ):
      models.create_model(bad)
  with pytest.raises(ValueError, match="6n\\+2.*104, 110"):
    models.create_model("resnet111")
  with pytest.raises(ValueError, match="9n\\+2"):
    models.create_model("preact_resnet100")


def test_imagenet_presets_build_the_papers_bottleneck_networks():
  """He et al. Table 1: ResNet-50/101/152/200 use bottleneck units. A full
  experiment config (base_config sets every model key) must not pin
  ImageNet ResNets to basic blocks."""
  from helpers import REPO

  from resflax.config import load_experiment

  path = os.path.join(REPO, "experiments", "imagenet_resnet.py")
  config = load_experiment(path, "resnet152_original")
  cfg = models.resolve(config.model)
  assert (cfg.block, models.units_per_stage(cfg)) == (
      "bottleneck",
      (3, 8, 36, 3),
  )
  assert models.resolve(dict(name="imagenet_resnet", depth=18)).block == "basic"
