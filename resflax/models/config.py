"""Model configuration: documented defaults, validation, and depth rules."""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from resflax.models import blocks, placements, shortcuts

NAMES = ("cifar_resnet", "imagenet_resnet", "wide_resnet", "vgg", "highway")

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

# Defaults of every model key; a network's own defaults override these where
# create_model is not told otherwise.
DEFAULTS = dict(
    name="cifar_resnet",
    depth=20,
    block="basic",  # basic | bottleneck | single
    shortcut="identity",  # see shortcuts.SHORTCUTS
    unit="original",  # original | bn_after_add | relu_before_add | relu_preact | full_preact
    projection="",  # A | B | C; "" = the network's default (A CIFAR, B otherwise)
    num_classes=10,
    shortcut_scale=0.5,  # lambda of the "scale" shortcut
    scale_residual=False,  # "scale": also multiply F by 1 - lambda
    gate_bias_init=-6.0,  # b_g of the gated shortcuts
    gate_kernel=1,  # kernel of the gate conv (1x1 in Identity Mappings)
    shortcut_dropout=0.5,  # rate of the "dropout" shortcut
    width=1,  # widening factor k (wide_resnet)
    widths=(),  # stage widths; () = the network's default
    dropout=0.0,  # dropout between the convs of F (WRN)
    stochastic_depth=1.0,  # survival probability of the last unit; 1 = off
    stochastic_depth_mode="batch",  # batch | sample
    stride_on="1x1",  # bottleneck stride on its first 1x1 (paper) or its 3x3
    scan=True,  # scan over same-shape units of a stage
    scan_unroll=1,  # units per scan iteration; >= a stage's units: no loop
    remat=False,  # rematerialise each unit in the backward pass
    dtype="float32",  # compute dtype; weights and BN statistics stay float32
    bn_group_size=0,  # BN statistics per group of this many images; 0 = batch
    bn_momentum=0.9,
    bn_epsilon=1e-5,
)

NETWORK_DEFAULTS = {
    "cifar_resnet": dict(depth=20, projection="A"),
    "imagenet_resnet": dict(depth=50, projection="B", num_classes=1000),
    "wide_resnet": dict(depth=28, width=10, unit="full_preact",
                        projection="B"),
    "vgg": dict(depth=14, block="single", shortcut="none", projection="A",
                widths=(64, 128, 256)),
    "highway": dict(depth=20, block="single", unit="relu_before_add",
                    shortcut="exclusive_gate", gate_kernel=3,
                    gate_bias_init=-2.0, projection="A"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every model key, resolved and validated. Fields as in DEFAULTS."""
  name: str
  depth: int
  block: str
  shortcut: str
  unit: str
  projection: str
  num_classes: int
  shortcut_scale: float
  scale_residual: bool
  gate_bias_init: float
  gate_kernel: int
  shortcut_dropout: float
  width: int
  widths: Tuple[int, ...]
  dropout: float
  stochastic_depth: float
  stochastic_depth_mode: str
  stride_on: str
  scan: bool
  scan_unroll: int
  remat: bool
  dtype: str
  bn_group_size: int
  bn_momentum: float
  bn_epsilon: float

  def replace(self, **kw) -> "ModelConfig":
    return resolve({**dataclasses.asdict(self), **kw})


def _valid_depths_near(depth: int, a: int, b: int, lo: int) -> str:
  valid = [a * n + b for n in range(1, 400) if a * n + b >= lo]
  near = sorted(valid, key=lambda d: abs(d - depth))[:4]
  return ", ".join(str(d) for d in sorted(near))


def units_per_stage(cfg: ModelConfig) -> Tuple[int, ...]:
  """Number of residual units in each stage; raises on an invalid depth."""
  d = cfg.depth
  if cfg.name == "imagenet_resnet":
    if d not in IMAGENET_STAGES:
      raise ValueError(
          f"model.depth={d} is not an ImageNet ResNet; choose one of "
          f"{', '.join(map(str, sorted(IMAGENET_STAGES)))}")
    return IMAGENET_STAGES[d][1]
  if cfg.name == "wide_resnet":
    a, b, rule = 6, 4, "6n+4 (WRN-d-k)"
  else:
    layers = blocks.CONVS_PER_UNIT[cfg.block]
    a, b = 3 * layers, 2
    rule = f"{a}n+2 for model.block={cfg.block!r}"
  if d < a + b or (d - b) % a:
    raise ValueError(
        f"model.depth={d} is invalid for model.name={cfg.name!r}: depth must "
        f"be {rule}; valid depths near it: {_valid_depths_near(d, a, b, a + b)}")
  n = (d - b) // a
  return (n, n, n)


def resolve(config: Optional[Mapping[str, Any]] = None, **overrides) -> ModelConfig:
  """Merges defaults, the network's defaults, ``config`` and ``overrides``.

  Raises:
    ValueError: naming the key and what is allowed, for an unknown key,
      name, variant, depth or combination.
  """
  given = {}
  if config is not None:
    given.update(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  given.update(overrides)
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown model key(s) {unknown}; valid keys: "
                     f"{', '.join(sorted(DEFAULTS))}")
  name = given.get("name", DEFAULTS["name"])
  if name not in NETWORK_DEFAULTS:
    raise ValueError(f"model.name={name!r} is not valid; choose one of "
                     f"{', '.join(NAMES)}")
  values = {**DEFAULTS, **NETWORK_DEFAULTS[name]}
  values.update({k: v for k, v in given.items()
                 if not (k == "projection" and v == "")})
  if name == "imagenet_resnet" and "block" not in given:
    depth = values["depth"]
    if depth in IMAGENET_STAGES:
      values["block"] = IMAGENET_STAGES[depth][0]
  values["widths"] = tuple(values["widths"] or ())
  cfg = ModelConfig(**values)
  _validate(cfg)
  return cfg


def _validate(cfg: ModelConfig):
  blocks.BLOCKS.get(cfg.block)
  shortcuts.SHORTCUTS.get(cfg.shortcut)
  placements.PLACEMENTS.get(cfg.unit)
  choices = dict(projection=("A", "B", "C"), stride_on=("1x1", "3x3"),
                 stochastic_depth_mode=("batch", "sample"),
                 dtype=("float32", "bfloat16", "float16"))
  for key, allowed in choices.items():
    if getattr(cfg, key) not in allowed:
      raise ValueError(f"model.{key}={getattr(cfg, key)!r} is not valid; "
                       f"choose one of {', '.join(allowed)}")
  if cfg.name == "vgg" and cfg.shortcut != "none":
    raise ValueError("model.name='vgg' is a plain net: model.shortcut must "
                     f"be 'none', got {cfg.shortcut!r}")
  if cfg.name == "wide_resnet" and cfg.block != "basic":
    raise ValueError("model.name='wide_resnet' uses model.block='basic'")
  if cfg.name == "imagenet_resnet" and cfg.projection == "A":
    raise ValueError("model.projection='A' is not supported for ImageNet "
                     "ResNets; choose 'B' or 'C'")
  if cfg.scale_residual and cfg.shortcut != "scale":
    raise ValueError("model.scale_residual=True needs model.shortcut='scale'")
  for key in ("shortcut_dropout", "dropout"):
    if not 0.0 <= getattr(cfg, key) < 1.0:
      raise ValueError(f"model.{key}={getattr(cfg, key)} must be in [0, 1)")
  if not 0.0 < cfg.stochastic_depth <= 1.0:
    raise ValueError(f"model.stochastic_depth={cfg.stochastic_depth} must be "
                     "in (0, 1] (survival probability of the last unit)")
  if cfg.num_classes < 1 or cfg.width < 1 or cfg.gate_kernel < 1:
    raise ValueError("model.num_classes, model.width and model.gate_kernel "
                     "must be positive")
  if (isinstance(cfg.scan_unroll, bool) or not isinstance(cfg.scan_unroll, int)
      or cfg.scan_unroll < 1):
    raise ValueError(f"model.scan_unroll={cfg.scan_unroll!r} must be an int "
                     ">= 1 (units per scan iteration; a value >= a stage's "
                     "units unrolls the stage completely)")
  if cfg.bn_group_size < 0:
    raise ValueError("model.bn_group_size must be >= 0 (0 = whole batch)")
  units_per_stage(cfg)
