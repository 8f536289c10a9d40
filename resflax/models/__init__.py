"""The model zoo: every network of the three papers, switchable by name.

Example::

  model = resflax.models.create_model(name="cifar_resnet", depth=110,
                                      unit="full_preact")
  variables = model.init(jax.random.key(0), images)
  logits = model.apply(variables, images)                      # evaluation
  logits, variables = model.apply(variables, images, train=True,
                                  rng=key)                     # training
"""

from typing import Any, Mapping, Optional

import jax
import numpy as np

from resflax.models.blocks import BLOCKS, EXPANSION
from resflax.models.config import DEFAULTS, ModelConfig, resolve, units_per_stage
from resflax.models.network import ModuleInfo, Network, StageSpec
from resflax.models.placements import PLACEMENTS
from resflax.models.shortcuts import SHORTCUTS

__all__ = ["create_model", "num_params", "Network", "ModelConfig", "DEFAULTS",
           "BLOCKS", "SHORTCUTS", "PLACEMENTS", "ModuleInfo"]


def _default_widths(cfg: ModelConfig):
  if cfg.widths:
    return cfg.widths
  if cfg.name == "imagenet_resnet":
    return (64, 128, 256, 512)
  if cfg.name == "wide_resnet":
    return tuple(w * cfg.width for w in (16, 32, 64))
  return (16, 32, 64)


def create_model(config: Optional[Mapping[str, Any]] = None,
                 **overrides) -> Network:
  """Builds a network of the zoo.

  Args:
    config: a ConfigDict or mapping of model keys (like an experiment's
      ``config.model``); missing keys take ``DEFAULTS`` and the network's
      own defaults (e.g. option A for ``cifar_resnet``, option B and 1000
      classes for ``imagenet_resnet``).
    **overrides: model keys overriding ``config``.

  Returns:
    A ``Network`` with pure ``init(key, images)`` and ``apply``.

  Raises:
    ValueError: an unknown key, name, variant or an invalid depth, naming
      what is valid; raised before anything is traced.
  """
  cfg = resolve(config, **overrides)
  units = units_per_stage(cfg)
  widths = _default_widths(cfg)
  if len(widths) != len(units):
    raise ValueError(f"model.widths needs {len(units)} entries for "
                     f"{cfg.name}, got {widths}")
  if cfg.name == "imagenet_resnet":
    stages = [StageSpec(n, w, 1 if s == 0 else 2)
              for s, (n, w) in enumerate(zip(units, widths))]
    return Network(cfg, 64, stages, imagenet_stem=True)
  if cfg.name == "vgg":
    stages = [StageSpec(n, w, 1, pool_before=s > 0)
              for s, (n, w) in enumerate(zip(units, widths))]
    return Network(cfg, widths[0], stages)
  stages = [StageSpec(n, w, 1 if s == 0 else 2)
            for s, (n, w) in enumerate(zip(units, widths))]
  return Network(cfg, 16 if cfg.name == "wide_resnet" else widths[0], stages)


def num_params(variables) -> int:
  """Number of trainable parameters (excludes BN statistics and lesions)."""
  tree = variables["params"] if "params" in variables else variables
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
