"""Common network names: ``create_model("resnet110")`` and the like.

A name expands to model keys; keyword overrides apply on top of them
(``create_model("resnet110", unit="full_preact")``). The depths of He et
al.'s ImageNet table (18, 34, 50, 101, 152, 200) name ImageNet ResNets,
every other depth a CIFAR network, so no name means two networks:

  cifar_resnet, ...   a family with its defaults (``families.FAMILIES``)
  resnet20..1202      CIFAR ResNet, 6n+2, option A (He et al. 2016 Table 6)
  resnet18..200       ImageNet ResNet (He et al. 2016 Table 1)
  plain20, plain34    the plain twin (``shortcut="none"``), CIFAR or ImageNet
  preact_resnet164    pre-activation bottleneck net, 9n+2, projection B
                      (Identity Mappings Table 3; ImageNet depths: Table 5)
  wrn28_10            WRN-28-10: wide_resnet, depth 28, widening factor 10
"""

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from resflax.models import families


def _resnet(depth: int) -> dict[str, Any]:
  if depth in families.IMAGENET_STAGES:
    return dict(name="imagenet_resnet", depth=depth)
  return dict(name="cifar_resnet", depth=depth)


def _preact(depth: int) -> dict[str, Any]:
  if depth in families.IMAGENET_STAGES:
    return dict(name="imagenet_resnet", depth=depth, unit="full_preact")
  # The authors' CIFAR pre-activation nets (resnet-1k-layers) are bottleneck
  # nets of depth 9n+2 with projection B.
  return dict(
      name="cifar_resnet",
      depth=depth,
      block="bottleneck",
      unit="full_preact",
      projection="B",
  )


@dataclasses.dataclass(frozen=True)
class _Form:
  pattern: str
  expand: Callable[..., dict[str, Any]]
  help: str


_FORMS = (
    _Form(
        r"resnet(\d+)",
        lambda d: _resnet(int(d)),
        "resnetD (D in 18, 34, 50, 101, 152, 200: ImageNet; otherwise CIFAR "
        "6n+2, e.g. resnet20, resnet110, resnet1202)",
    ),
    _Form(
        r"plain(\d+)",
        lambda d: {**_resnet(int(d)), "shortcut": "none"},
        "plainD (resnetD's plain twin, e.g. plain20, plain56)",
    ),
    _Form(
        r"preact_resnet(\d+)",
        lambda d: _preact(int(d)),
        "preact_resnetD (CIFAR bottleneck 9n+2, e.g. preact_resnet164, "
        "preact_resnet1001; ImageNet depths as resnetD)",
    ),
    _Form(
        r"wrn(\d+)_(\d+)",
        lambda d, k: dict(name="wide_resnet", depth=int(d), width=int(k)),
        "wrnD_K (WRN-D-K, e.g. wrn28_10)",
    ),
)


def expand(name: str) -> dict[str, Any]:
  """The model keys a common name stands for.

  Args:
    name: a family (``"cifar_resnet"``) or a form of the module docstring
      (``"resnet110"``, ``"wrn28_10"``); case-insensitive.

  Returns:
    Model keys for ``resolve``; an invalid depth fails there, naming the
    valid ones.

  Raises:
    ValueError: ``name`` matches no form; the message lists them.
  """
  key = name.strip().lower()
  if key in families.FAMILIES:
    return dict(name=key)
  for form in _FORMS:
    match = re.fullmatch(form.pattern, key)
    if match:
      return form.expand(*match.groups())
  raise ValueError(
      f"model name {name!r} is not valid; use a family ("
      f"{', '.join(families.FAMILIES.names())}), "
      f"{', '.join(f.help for f in _FORMS)}"
  )
