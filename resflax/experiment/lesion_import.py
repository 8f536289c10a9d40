"""Networks imported from PyTorch checkpoints for the lesion study.

``config.lesion.torch_cifar`` (akamaster's CIFAR ResNets,
``resflax.models.from_torch_cifar``) or ``config.lesion.torchvision``
(torchvision's ImageNet ResNets, ``resflax.models.from_torchvision``) names
a checkpoint file: ``.npz`` (numpy arrays of the state dict, no torch
needed) or ``.th``/``.pt``/``.pth`` (``torch.load``). The depth is
``config.model.depth``. The network is then not trained: the study runs on
it, on ``config.data`` (its test split for the lesions and signal
statistics, its training split for the gradient per path length),
normalised as the checkpoint was trained (torchvision's constants on
[0, 1] images for both importers, whatever ``config.data.normalization``
says).

The study's :class:`~resflax.experiment.lesion_analysis.Net` is built from
the imported variables as from a restored run: the same fields, the intact
lesion of ``model.default_lesion()``, so every analysis sees one kind of
network.
"""

import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from resflax import data as data_lib
from resflax import models
from resflax.errors import ConfigError
from resflax.experiment.lesion_analysis import Net

# config.lesion key -> the importer of resflax.models that converts its file.
IMPORTERS = {
    "torch_cifar": "from_torch_cifar",
    "torchvision": "from_torchvision",
}
# What each importer's networks were trained on: x / 255, then these
# (torchvision's transforms.Normalize; akamaster's training script used
# them too).
NORMALISATION = {
    "torch_cifar": (data_lib.IMAGENET_MEAN, data_lib.IMAGENET_STD),
    "torchvision": (data_lib.IMAGENET_MEAN, data_lib.IMAGENET_STD),
}
_SUFFIXES = (".npz", ".th", ".pt", ".pth")


def imported_key(lesion_config: ml_collections.ConfigDict) -> str:
  """The ``config.lesion`` key naming an imported network, or ''.

  Raises:
    ConfigError: more than one is set.
  """
  given = [k for k in IMPORTERS if lesion_config.get(k, "")]
  if len(given) > 1:
    raise ConfigError(
        f"config.lesion sets {given}: give one imported network (the "
        "study lesions one ResNet)"
    )
  return given[0] if given else ""


def check_imported(config: ml_collections.ConfigDict) -> None:
  """Validates an imported network's keys before anything is loaded.

  Raises:
    ConfigError: naming the key, the file and what is allowed.
  """
  c = config.lesion
  key = imported_key(c)
  if not key:
    if config.model.name == "imagenet_resnet" and not c.get("checkpoint"):
      raise ConfigError(
          "config.lesion.torchvision is empty: the ImageNet lesion study "
          "studies a trained network; give a torchvision checkpoint "
          "(--config.lesion.torchvision=resnet200.pth or .npz) or a run "
          "directory (--config.lesion.checkpoint)"
      )
    return
  path = c[key]
  if not path.endswith(_SUFFIXES):
    raise ConfigError(
        f"config.lesion.{key}={path!r}: a checkpoint file is "
        f"{', '.join(_SUFFIXES)}"
    )
  if not os.path.isfile(path):
    raise ConfigError(f"config.lesion.{key}={path!r} does not exist")
  if c.get("checkpoint"):
    raise ConfigError(
        f"config.lesion.checkpoint and config.lesion.{key} are both set: "
        "give the ResNet once"
    )


def read_state_dict(path: str) -> Mapping[str, Any]:
  """The state dict in ``path``: ``.npz`` arrays or a ``torch.load`` file.

  Raises:
    ConfigError: a ``.th``/``.pt``/``.pth`` file without torch installed.
  """
  if path.endswith(".npz"):
    with np.load(path) as npz:
      return dict(npz)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
        f"reading {path} needs torch (pip install -e '.[torch]'); or save "
        "its state dict as .npz: np.savez(f, **{k: v.numpy() ...})"
    ) from e
  # The published files pickle more than tensors (akamaster's best_prec1).
  return torch.load(path, map_location="cpu", weights_only=False)


def net_from_variables(
    role: str,
    source: str,
    config: ml_collections.ConfigDict,
    model: models.Network,
    variables: Any,
    dataset: data_lib.Dataset,
    step: int,
) -> Net:
  """A study's Net from a network's variables, lesion reset to intact."""
  variables = dict(variables)
  variables["lesion"] = model.default_lesion()
  return Net(role, source, config, model, variables, dataset, int(step))


def load_imported(
    config: ml_collections.ConfigDict,
    dataset: data_lib.Dataset,
    role: str = "resnet",
) -> Net:
  """The network of ``config.lesion.torch_cifar`` or ``.torchvision``.

  Args:
    config: the study's config (``check_imported`` passed).
    dataset: ``config.data`` loaded; its normalisation is replaced by the
      checkpoint's (``NORMALISATION``).
    role: the Net's role.

  Returns:
    A Net whose ``run_dir`` is the checkpoint file and ``step`` 0.

  Raises:
    ConfigError: the file does not convert at ``config.model.depth`` (the
      importer's message: the key, shape or depth), or its classes are not
      the dataset's.
  """
  key = imported_key(config.lesion)
  path, depth = config.lesion[key], int(config.model.depth)
  importer = getattr(models, IMPORTERS[key])
  try:
    model, variables = importer(read_state_dict(path), depth)
  except ValueError as e:
    raise ConfigError(
        f"config.lesion.{key}={path!r} at config.model.depth={depth}: {e}"
    ) from e
  if model.config.num_classes != dataset.num_classes:
    raise ConfigError(
        f"config.lesion.{key}={path!r} classifies "
        f"{model.config.num_classes} classes, config.data "
        f"({dataset.source or dataset.name}) has {dataset.num_classes}"
    )
  mean, std = NORMALISATION[key]
  dataset = dataclasses.replace(dataset, mean=mean, std=std)
  run_cfg = copy.deepcopy(config)
  with run_cfg.unlocked():
    del run_cfg["lesion"]  # what the network is, as a run's config.json
  return net_from_variables(role, path, run_cfg, model, variables, dataset, 0)
