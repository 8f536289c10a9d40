"""The model zoo: every network of the three papers, switchable by name.

Example::

  model = resflax.models.create_model("resnet110", unit="full_preact")
  variables = model.init(jax.random.key(0), images)
  logits = model.apply(variables, images)                      # evaluation
  logits, variables = model.apply(variables, images, train=True,
                                  rng=key)                     # training
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from resflax.models.blocks import BLOCKS
from resflax.models.config import (
    DEFAULTS,
    ModelConfig,
    init_only_keys,
    initial_value_keys,
    needs_rng,
    resolve,
    shrink,
    smallest_depth,
    units_per_stage,
)
from resflax.models.cpu_conv import MODES as CPU_CONV_GRAD_MODES
from resflax.models.families import FAMILIES, Family
from resflax.models.network import ModuleInfo, Network
from resflax.models.placements import PLACEMENTS
from resflax.models.shortcuts import SHORTCUTS, Shortcut
from resflax.models.torch_cifar import from_torch_cifar
from resflax.models.torchvision import from_torchvision

__all__ = [
    "create_model",
    "num_params",
    "Network",
    "ModelConfig",
    "DEFAULTS",
    "BLOCKS",
    "SHORTCUTS",
    "PLACEMENTS",
    "FAMILIES",
    "ModuleInfo",
    "Family",
    "Shortcut",
    "resolve",
    "units_per_stage",
    "shrink",
    "smallest_depth",
    "needs_rng",
    "initial_value_keys",
    "init_only_keys",  # deprecated: initial_value_keys
    "CPU_CONV_GRAD_MODES",
    "from_torchvision",
    "from_torch_cifar",
]


def create_model(
    config: None | str | Mapping[str, Any] = None, **overrides
) -> Network:
  """Builds a network of the zoo.

  Args:
    config: a common name (``"resnet110"``, ``"resnet50"``,
      ``"preact_resnet1001"``, ``"wrn28_10"``; see ``names``), or a
      ConfigDict or mapping of model keys (like an experiment's
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
  # A mapping or ConfigDict (not a Mapping subclass) has items().
  if config is not None and not (
      isinstance(config, str) or hasattr(config, "items")
  ):
    raise TypeError(
        f"create_model: config must be a model name such as 'resnet110', a "
        f"mapping or ConfigDict of model keys, or None; got {config!r} of "
        f"type {type(config).__name__}"
    )
  cfg = resolve(config, **overrides)
  layout = FAMILIES.get(cfg.name).layout(cfg)
  return Network(
      cfg,
      layout.stem_features,
      layout.stages,
      imagenet_stem=layout.imagenet_stem,
  )


def num_params(variables) -> int:
  """Number of trainable parameters (excludes BN statistics and lesions)."""
  tree = variables["params"] if "params" in variables else variables
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
