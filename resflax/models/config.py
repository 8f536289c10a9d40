"""Model configuration: documented defaults, validation, and depth rules.

Every model key has a default in ``DEFAULTS``: the keys below, plus the
hyper-parameters each registered shortcut declares (``shortcuts.Shortcut``).
A network family (``families.FAMILIES``, ``model.name``) overrides some of
them where a config does not set them. ``resolve`` merges defaults, the
family's defaults and a config into a validated ``ModelConfig``.
"""

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from resflax.models import (
    blocks,
    cpu_conv,
    families,
    names,
    placements,
    shortcuts,
)

# The keys every network reads; shortcut hyper-parameters join them.
_BASE_DEFAULTS = dict(
    name="cifar_resnet",  # a network family, see families.FAMILIES
    depth=20,
    block="basic",  # basic | bottleneck | single
    shortcut="identity",  # see shortcuts.SHORTCUTS
    # original | bn_after_add | relu_before_add | relu_preact | full_preact
    unit="original",
    # A | B | C; "" = the network's default (A for CIFAR, B otherwise)
    projection="",
    num_classes=10,
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
    cpu_conv_grad="auto",  # auto | on | off: conv gradient, see cpu_conv.py
)


def _shortcut_defaults() -> dict[str, Any]:
  """The hyper-parameters of every registered shortcut, with their defaults.

  Raises:
    ValueError: a shortcut declares a key that is already a model key, or
      one another shortcut declares with a different default.
  """
  out: dict[str, Any] = {}
  owner: dict[str, str] = {}
  for name in shortcuts.SHORTCUTS.names():
    for key, value in shortcuts.SHORTCUTS.get(name).hparams.items():
      if key in _BASE_DEFAULTS:
        raise ValueError(
            f"model.shortcut={name!r} declares model.{key}, "
            "which is already a model key; rename it"
        )
      if key in out and out[key] != value:
        raise ValueError(
            f"model.shortcut={name!r} declares model.{key}={value!r}, but "
            f"model.shortcut={owner[key]!r} declares it ={out[key]!r}; "
            "rename one"
        )
      out[key], owner[key] = value, name
  return out


def _defaults() -> dict[str, Any]:
  return {**_BASE_DEFAULTS, **_shortcut_defaults()}


class _Defaults(Mapping[str, Any]):
  """The live defaults: base keys plus the registered shortcuts' keys."""

  def __getitem__(self, key: str) -> Any:
    return _defaults()[key]

  def __iter__(self) -> Iterator[str]:
    return iter(_defaults())

  def __len__(self) -> int:
    return len(_defaults())

  def __repr__(self) -> str:
    return f"DEFAULTS({_defaults()})"


# Defaults of every model key; a network's own defaults override these where
# create_model is not told otherwise.
DEFAULTS: Mapping[str, Any] = _Defaults()


class ModelConfig:
  """Every model key, resolved and validated, as frozen attributes.

  Instances come from ``resolve``. Each is a frozen dataclass whose fields
  are the keys of ``DEFAULTS`` when it was resolved (a shortcut registered
  later adds fields), so ``dataclasses.asdict`` and attribute access work.
  """

  def replace(self, **kw) -> "ModelConfig":
    """A copy with ``kw`` changed, resolved and validated again."""
    return resolve({**dataclasses.asdict(self), **kw})

  def __reduce__(self):
    # The concrete class is made at run time; pickles rebuild through resolve.
    return resolve, (dataclasses.asdict(self),)


@functools.cache
def _config_class(keys: tuple[str, ...]) -> type:
  cls = dataclasses.make_dataclass(
      "ModelConfig", keys, bases=(ModelConfig,), frozen=True
  )
  cls.__doc__ = ModelConfig.__doc__
  cls.__module__ = __name__
  return cls


def units_per_stage(cfg: ModelConfig) -> tuple[int, ...]:
  """Number of residual units in each stage; raises on an invalid depth."""
  return families.FAMILIES.get(cfg.name).units(cfg)


ConfigLike = None | str | Mapping[str, Any]


def resolve(config: ConfigLike = None, **overrides) -> ModelConfig:
  """Merges defaults, the network's defaults, ``config`` and ``overrides``.

  Args:
    config: a mapping or ConfigDict of model keys, a common name such as
      ``"resnet110"`` (``names.expand``), a ``ModelConfig``, or None.
    **overrides: model keys applied on top of ``config``.

  Raises:
    ValueError: naming the key and what is allowed, for an unknown key,
      name, variant, depth or combination.
  """
  given: dict[str, Any] = {}
  if isinstance(config, str):
    given.update(names.expand(config))
  elif dataclasses.is_dataclass(config):
    given.update(dataclasses.asdict(config))
  elif config is not None:
    given.update(
        config.to_dict() if hasattr(config, "to_dict") else dict(config)
    )
  given.update(overrides)
  defaults = _defaults()
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(
        f"unknown model key(s) {unknown}; valid keys: "
        f"{', '.join(sorted(defaults))}"
    )
  family = families.FAMILIES.get(given.get("name", defaults["name"]))
  if set(family.defaults) - set(defaults):
    raise ValueError(
        f"model.name={given.get('name')!r} sets unknown model "
        f"key(s) {sorted(set(family.defaults) - set(defaults))}"
    )
  values = {**defaults, **family.defaults}
  values.update(
      {k: v for k, v in given.items() if not (k == "projection" and v == "")}
  )
  family.fill(values, given)
  values["widths"] = tuple(values["widths"] or ())
  cfg = _config_class(tuple(values))(**values)
  _validate(cfg)
  return cfg


def _as_config(model_config: ConfigLike) -> ModelConfig:
  if isinstance(model_config, ModelConfig):
    return model_config
  return resolve(model_config)


def needs_rng(model_config: ConfigLike) -> bool:
  """Whether training the model needs a random key.

  Dropout in F, stochastic depth, and a shortcut that says so (e.g. the
  "dropout" shortcut at a positive rate) need one.

  Args:
    model_config: as ``resolve``'s ``config``.
  """
  cfg = _as_config(model_config)
  return (
      cfg.dropout > 0
      or cfg.stochastic_depth < 1.0
      or shortcuts.SHORTCUTS.get(cfg.shortcut).needs_rng(cfg)
  )


def init_only_keys(model_config: ConfigLike) -> tuple[str, ...]:
  """Model keys of this network that only set initial parameter values.

  Runs differing only in these keys compute the same function of their
  variables, so they can share one compiled program once initialised.

  Args:
    model_config: as ``resolve``'s ``config``.

  Returns:
    Key names without the ``model.`` prefix (e.g. ``("gate_bias_init",)``
    for the gated shortcuts), declared by the network's shortcut.
  """
  cfg = _as_config(model_config)
  return tuple(shortcuts.SHORTCUTS.get(cfg.shortcut).init_only)


def smallest_depth(model_config: ConfigLike) -> int:
  """The smallest valid depth of the network's family and variant.

  Args:
    model_config: as ``resolve``'s ``config``.
  """
  cfg = _as_config(model_config)
  return families.FAMILIES.get(cfg.name).smallest_depth(cfg)


def shrink(model_config: ConfigLike) -> dict[str, Any]:
  """Model keys for the smallest network of the same family and variant.

  For smoke runs: one unit per stage, narrow stages (and a widening factor
  of 1), BN over the whole batch; block, shortcut, unit, projection and the
  stage count stay. Update a config's model keys with the result.

  Args:
    model_config: as ``resolve``'s ``config``.

  Returns:
    The model keys to change (``depth``, ``widths``, ``bn_group_size`` and
    what the family adds), a network ``resolve`` accepts.
  """
  cfg = _as_config(model_config)
  return families.FAMILIES.get(cfg.name).shrink(cfg)


def _validate(cfg: ModelConfig):
  blocks.BLOCKS.get(cfg.block)
  shortcut = shortcuts.SHORTCUTS.get(cfg.shortcut)
  placements.PLACEMENTS.get(cfg.unit)
  choices = dict(
      projection=("A", "B", "C"),
      stride_on=("1x1", "3x3"),
      stochastic_depth_mode=("batch", "sample"),
      dtype=("float32", "bfloat16", "float16"),
      cpu_conv_grad=cpu_conv.MODES,
  )
  for key, allowed in choices.items():
    if getattr(cfg, key) not in allowed:
      raise ValueError(
          f"model.{key}={getattr(cfg, key)!r} is not valid; "
          f"choose one of {', '.join(allowed)}"
      )
  if cfg.scale_residual and cfg.shortcut != "scale":
    raise ValueError("model.scale_residual=True needs model.shortcut='scale'")
  if not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f"model.dropout={cfg.dropout} must be in [0, 1)")
  if not 0.0 < cfg.stochastic_depth <= 1.0:
    raise ValueError(
        f"model.stochastic_depth={cfg.stochastic_depth} must be "
        "in (0, 1] (survival probability of the last unit)"
    )
  if cfg.num_classes < 1 or cfg.width < 1:
    raise ValueError("model.num_classes and model.width must be positive")
  if (
      isinstance(cfg.scan_unroll, bool)
      or not isinstance(cfg.scan_unroll, int)
      or cfg.scan_unroll < 1
  ):
    raise ValueError(
        f"model.scan_unroll={cfg.scan_unroll!r} must be an int "
        ">= 1 (units per scan iteration; a value >= a stage's "
        "units unrolls the stage completely)"
    )
  if cfg.bn_group_size < 0:
    raise ValueError("model.bn_group_size must be >= 0 (0 = whole batch)")
  shortcut.check(cfg)
  family = families.FAMILIES.get(cfg.name)
  family.check(cfg)
  family.layout(cfg)
