"""Model configuration: documented defaults, validation, and depth rules.

``ModelConfig`` holds every model key as a typed field: the keys every
network reads (``NetworkKeys`` below) and the built-in shortcuts' keys
(``shortcuts.ShortcutKeys``, written out next to their shortcuts).
``DEFAULTS`` maps each key to its default. A network family
(``families.FAMILIES``, ``model.name``) overrides some of them where a
config does not set them. ``resolve`` merges defaults, the family's
defaults and a config into a validated ``ModelConfig``.
"""

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from resflax.models import (
    blocks,
    cpu_conv,
    families,
    names,
    placements,
    shortcuts,
)


@dataclasses.dataclass(frozen=True)
class NetworkKeys:
  """The model keys every network reads, with their defaults."""

  name: str = "cifar_resnet"  # a network family, see families.FAMILIES
  depth: int = 20  # layers with weights; the family's rule says which
  block: str = "basic"  # basic | bottleneck | single
  shortcut: str = "identity"  # see shortcuts.SHORTCUTS
  # original | bn_after_add | relu_before_add | relu_preact | full_preact
  unit: str = "original"
  # A | B | C; "" = the network's default (A for CIFAR, B otherwise)
  projection: str = ""
  num_classes: int = 10  # outputs of the classifier
  width: int = 1  # widening factor k (wide_resnet)
  widths: tuple[int, ...] = ()  # stage widths; () = the network's default
  dropout: float = 0.0  # dropout between the convs of F (WRN)
  stochastic_depth: float = 1.0  # survival prob. of the last unit; 1 = off
  stochastic_depth_mode: str = "batch"  # batch | sample
  stride_on: str = "1x1"  # bottleneck stride on its first 1x1 or its 3x3
  scan: bool = True  # scan over same-shape units of a stage
  scan_unroll: int = 1  # units per scan iteration; >= a stage's: no loop
  remat: bool = False  # rematerialise each unit in the backward pass
  dtype: str = "float32"  # compute dtype; weights and BN stay float32
  bn_group_size: int = 0  # BN statistics per group of images; 0 = batch
  bn_momentum: float = 0.9  # running statistics: m * old + (1 - m) * new
  bn_epsilon: float = 1e-5  # added to the variance
  cpu_conv_grad: str = "auto"  # auto | on | off: see cpu_conv.py


@dataclasses.dataclass(frozen=True)
class ModelConfig(shortcuts.ShortcutKeys, NetworkKeys):
  """Every model key, resolved and validated, as frozen attributes.

  The fields are those of ``NetworkKeys``, then the built-in shortcuts'
  (``shortcuts.ShortcutKeys``: dropout, gate and scale keys), in the order
  of ``DEFAULTS``. Build one with ``resolve``: the constructor alone applies
  no family defaults and validates nothing. A shortcut registered from
  outside the package adds its keys on a subclass (``_with_keys``).
  """

  def replace(self, **kw) -> "ModelConfig":
    """A copy with ``kw`` changed, resolved and validated again."""
    return resolve({**dataclasses.asdict(self), **kw})


def _with_keys(extra: Mapping[str, Any]) -> type[ModelConfig]:
  """``ModelConfig`` with fields for keys of shortcuts registered later.

  Only shortcuts defined outside this package declare such keys; a class
  with their fields is made once per registration.
  """
  if not extra:
    return ModelConfig
  cls = dataclasses.make_dataclass(
      "ModelConfig",
      [(k, type(v), dataclasses.field(kw_only=True)) for k, v in extra.items()],
      bases=(ModelConfig,),
      frozen=True,
      # Pickle finds no class of this name in the module: rebuild through
      # resolve (the shortcut must be registered where it is unpickled).
      namespace={"__reduce__": lambda c: (resolve, (dataclasses.asdict(c),))},
  )
  cls.__doc__ = ModelConfig.__doc__
  cls.__module__ = __name__
  return cls


# Defaults of every model key: ModelConfig's fields, then the keys of the
# shortcuts registered from outside the package. A plain dict, recomputed
# in place by _shortcuts_changed when a shortcut is (un)registered. A
# network's own defaults override these where a config does not set them.
DEFAULTS: dict[str, Any] = {}
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
_NETWORK_KEYS = frozenset(f.name for f in dataclasses.fields(NetworkKeys))
# The class resolve builds, and why no config can be built (a shortcut's key
# clashes), as of the last registration.
_config_class: type[ModelConfig] = ModelConfig
_clash = ""


def _shortcuts_changed():
  """Recomputes DEFAULTS and the config class from the shortcuts' keys.

  A key clash does not fail the registration (the registry holds the entry
  already); ``resolve`` raises it until the shortcut is unregistered.
  """
  global _config_class, _clash
  extra: dict[str, Any] = {}
  owner: dict[str, str] = {}
  clashes = []
  for name in shortcuts.SHORTCUTS.names():
    for key, value in shortcuts.SHORTCUTS.get(name).hparams.items():
      if key in _NETWORK_KEYS:
        clashes.append(
            f"model.shortcut={name!r} declares model.{key}, "
            "which is already a model key; rename it"
        )
      elif key in _FIELD_DEFAULTS and value != _FIELD_DEFAULTS[key]:
        clashes.append(
            f"model.shortcut={name!r} declares model.{key}={value!r}, but "
            f"ModelConfig.{key} (a built-in shortcut's key) defaults to "
            f"{_FIELD_DEFAULTS[key]!r}; rename it"
        )
      elif key in extra and extra[key] != value:
        clashes.append(
            f"model.shortcut={name!r} declares model.{key}={value!r}, but "
            f"model.shortcut={owner[key]!r} declares it ={extra[key]!r}; "
            "rename one"
        )
      elif key not in _FIELD_DEFAULTS:
        extra.setdefault(key, value)
        owner.setdefault(key, name)
  _config_class = _with_keys(extra)
  _clash = "; ".join(clashes)
  DEFAULTS.clear()
  DEFAULTS.update(_FIELD_DEFAULTS, **extra)


_shortcuts_changed()
shortcuts.SHORTCUTS.listen(_shortcuts_changed)


def units_per_stage(cfg: ModelConfig) -> tuple[int, ...]:
  """Number of residual units in each stage; raises on an invalid depth."""
  return families.FAMILIES.get(cfg.name).units(cfg)


ConfigLike = None | str | Mapping[str, Any]


# Keys whose "" means the network's own default (base_config sets them so).
_CHOSEN = ("projection", "block")


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
  if _clash:
    raise ValueError(_clash)
  defaults = DEFAULTS
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
  # "" leaves the choice to the family (and, for block, to the depth).
  given = {k: v for k, v in given.items() if not (k in _CHOSEN and v == "")}
  values.update(given)
  family.fill(values, given)
  values["widths"] = tuple(values["widths"] or ())
  cfg = _config_class(**values)
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


def initial_value_keys(model_config: ConfigLike) -> tuple[str, ...]:
  """Model keys of this network that only set initial parameter values.

  Two configs differing only in these keys compute the same function of
  the same variables; only their initialisers differ.

  Args:
    model_config: as ``resolve``'s ``config``.

  Returns:
    Key names without the ``model.`` prefix (e.g. ``("gate_bias_init",)``
    for the gated shortcuts), declared by the network's shortcut.
  """
  cfg = _as_config(model_config)
  return tuple(shortcuts.SHORTCUTS.get(cfg.shortcut).initial_value_keys)


def init_only_keys(model_config: ConfigLike) -> tuple[str, ...]:
  """Deprecated: the old name of ``initial_value_keys``."""
  warnings.warn(
      "resflax.models.init_only_keys is renamed initial_value_keys; the old "
      "name goes in the next release",
      DeprecationWarning,
      stacklevel=2,
  )
  return initial_value_keys(model_config)


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
  _check_shortcut_keys(cfg, shortcut)
  family = families.FAMILIES.get(cfg.name)
  family.check(cfg)
  family.layout(cfg)


def _check_shortcut_keys(cfg: ModelConfig, selected: type[shortcuts.Shortcut]):
  """The selected shortcut's own check, and what other shortcuts require.

  A key a shortcut lists in ``requires_selection`` may leave its default
  only while a shortcut declaring it is selected.
  """
  selected.check(cfg)
  for name in shortcuts.SHORTCUTS.names():
    for key in shortcuts.SHORTCUTS.get(name).requires_selection:
      value = getattr(cfg, key)
      if key not in selected.hparams and value != DEFAULTS[key]:
        raise ValueError(f"model.{key}={value!r} needs model.shortcut={name!r}")
