"""CIFAR ResNets trained in PyTorch (akamaster/pytorch_resnet_cifar10).

``from_torch_cifar(state_dict, depth)`` builds the resflax ``cifar_resnet``
with the architecture of the widely used PyTorch reproduction of He et al.'s
CIFAR ResNets (``resnet20`` ... ``resnet1202`` of
akamaster/pytorch_resnet_cifar10: post-activation ``original`` units, option
A shortcuts, widths 16/32/64, BN epsilon 1e-5) and copies its state dict
('conv1.weight', 'bn1.*', 'layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}.*',
'linear.*') into the variables, so a trained network can be studied with
resflax's tools (lesions, paths, signal statistics). Example::

  state = np.load("resnet20.npz")
  model, variables = resflax.models.from_torch_cifar(state, 20)
  x = resflax.data.normalize(images_nhwc_uint8, resflax.data.IMAGENET_MEAN,
                             resflax.data.IMAGENET_STD)
  logits = model.apply(variables, x)

Those networks were trained on images scaled to [0, 1] and normalised with
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (``IMAGENET_MEAN``
and ``IMAGENET_STD``), not with He et al.'s per-pixel mean: feed them so.
torch itself is not needed: numpy arrays (``np.load`` of an ``.npz``)
convert the same way as tensors.

Channel order. Both networks zero-pad the new channels of option A's
shortcut, but in different places: the checkpoint puts planes//4 zero
channels before the subsampled input and planes//4 after it, resflax all of
them after it. The imported network computes the same function by holding
each stage's residual stream in another channel order: resflax channel r of
stage s is the checkpoint's channel ``channel_orders()[s][r]``. Stage 0
keeps the checkpoint's order; stage s > 0 lists the channels that carry
stage s-1's stream first (in stage s-1's resflax order, shifted by the
padding), then the zero-padded ones in ascending order::

  stage 0 (16 channels): 0..15
  stage 1 (32 channels): 8..23, 0..7, 24..31
  stage 2 (64 channels): 24..39, 16..23, 40..47, 0..15, 48..63

so option A's shortcut puts the subsampled input exactly where resflax pads
it. The input channels of each unit's first conv, the output channels of
its second conv with that conv's BN (parameters and statistics), and the
rows of the classifier are permuted accordingly; the units' inner channels
(first conv's output, its BN, the second conv's input) keep the
checkpoint's order. Identity shortcuts, ReLU, the addition and global
average pooling commute with a channel permutation, so the logits are the
checkpoint's (up to float32 summation order). Whatever does not depend on
channel indices is unchanged too: a lesion's error, a unit's response
standard deviation, any per-layer statistic. A per-channel index of a
stage's stream (an activation of the stream, a channel of a second conv or
its BN) is resflax's and maps to the checkpoint's through
``channel_orders()``.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from resflax.models.torchvision import (
    _Adjust,
    _check_overrides,
    _load_variables,
    _strip_module_prefix,
)

__all__ = ["from_torch_cifar", "channel_orders", "TORCH_CIFAR_ARCH"]

# The model keys that make resflax's cifar_resnet the PyTorch CIFAR ResNet.
TORCH_CIFAR_ARCH = dict(
    name="cifar_resnet",
    block="basic",
    shortcut="identity",
    unit="original",
    projection="A",
    bn_epsilon=1e-5,
    widths=(16, 32, 64),
)


def channel_orders(
    widths: Sequence[int] = TORCH_CIFAR_ARCH["widths"],
) -> tuple[np.ndarray, ...]:
  """The checkpoint's channel held in each resflax channel of each stage.

  Args:
    widths: the stage widths; the stem is as wide as the first stage, and
      a stage that widens doubles the width (the checkpoint pads planes//4
      channels on each side).

  Returns:
    One int array per stage: resflax channel r of stage s's residual stream
    is the checkpoint's channel ``orders[s][r]``.

  Raises:
    ValueError: a stage whose widening the symmetric padding cannot make.
  """
  order = np.arange(widths[0])
  orders = []
  for width in widths:
    if width != len(order):
      before = width // 4  # akamaster's LambdaLayer: planes//4 on each side
      if len(order) + 2 * before != width:
        raise ValueError(
            f"option A pads planes//4 channels on each side, "
            f"which cannot widen {len(order)} to {width}"
        )
      carried = order + before
      # setdiff1d is sorted: the padded channels in ascending order.
      order = np.concatenate([carried, np.setdiff1d(np.arange(width), carried)])
    orders.append(order)
  return tuple(orders)


def _permuter(orders: tuple[np.ndarray, ...]) -> _Adjust:
  """``adjust(path, value)`` putting each stream in ``orders`` (docstring).

  Variables are in resflax layout: conv kernels HWIO (stacked units add a
  leading axis, so channels are indexed from the end), the classifier's
  kernel (in, out).
  """
  # A stage's first unit reads the previous stage's stream (stage 0 the
  # stem's, which is in the checkpoint's own order).
  entering = (np.arange(len(orders[0])),) + orders[:-1]

  def adjust(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    scope, leaf = path[1], path[-1]
    if scope == "head":
      return value[orders[-1]] if leaf == "kernel" else value
    if not scope.startswith("stage"):
      return value  # the stem writes stage 0's order, the checkpoint's
    s, module = int(scope[len("stage") :]), path[3]
    if module == "conv0":  # reads the stream entering the unit
      reads = entering[s] if path[2] == "unit0" else orders[s]
      return np.take(value, reads, axis=-2)
    if module in ("conv1", "bn_post1"):  # writes what joins the stream
      return np.take(value, orders[s], axis=-1)
    return value  # inner channels: the checkpoint's order

  return adjust


def _checkpoint_depth(state: Mapping[str, Any]) -> int | None:
  """6n+2 for a state dict whose layer1 has n blocks; None without layer1."""
  blocks = {
      int(k.split(".")[1])
      for k in state
      if k.startswith("layer1.") and k.split(".")[1].isdigit()
  }
  return 6 * (max(blocks) + 1) + 2 if blocks else None


def from_torch_cifar(
    state_dict: Mapping[str, Any], depth: int, **overrides
) -> tuple[Any, dict[str, Any]]:
  """Converts a PyTorch CIFAR ResNet checkpoint into a resflax network.

  Args:
    state_dict: the ``state_dict`` of akamaster's ``resnetD()`` (or any
      network with its module names and shapes): torch tensors or numpy
      arrays, e.g. ``np.load("resnet20.npz")``. A 'module.' prefix
      (DataParallel, as in the published ``.th`` files) is accepted, as is
      the whole ``.th`` checkpoint (a dict whose 'state_dict' entry is the
      state dict); 'num_batches_tracked' is ignored.
    depth: 6n+2 (20, 32, 44, 56, 110, 1202 were published); must match the
      checkpoint's n blocks per layer.
    **overrides: model keys that do not change what the network computes:
      dtype, scan, scan_unroll, remat, bn_group_size, bn_momentum. The
      number of classes is read from 'linear.weight'.

  Returns:
    ``(model, variables)``: the ``cifar_resnet`` network (NHWC input,
    normalised as the checkpoint was trained, see the module docstring)
    and its full variables (``params``, ``batch_stats``, an intact
    ``lesion``), each stage's channels in ``channel_orders()``.

  Raises:
    ValueError: an invalid depth or override, a depth that does not match
      the checkpoint, a key missing from or unexpected in ``state_dict``,
      or a shape that does not fit; each names the key or depth.
  """
  # Imported here: resflax.models imports this module.
  from resflax.models import create_model  # pylint: disable=g-import-not-at-top

  _check_overrides("from_torch_cifar", "the PyTorch CIFAR ResNet's", overrides)
  if isinstance(state_dict.get("state_dict"), Mapping):
    state_dict = state_dict["state_dict"]  # a whole .th checkpoint
  state = _strip_module_prefix(state_dict)
  linear = state.get("linear.weight")
  num_classes = int(np.shape(linear)[0]) if linear is not None else 10
  model = create_model(
      depth=depth, num_classes=num_classes, **TORCH_CIFAR_ARCH, **overrides
  )
  held = _checkpoint_depth(state)
  if held is not None and held != depth:
    raise ValueError(
        f"from_torch_cifar: state_dict holds a ResNet-{held} "
        f"({(held - 2) // 6} blocks per layer), not the ResNet-{depth} "
        f"asked for ({(depth - 2) // 6} blocks per layer); pass depth={held}"
    )
  adjust = _permuter(channel_orders(TORCH_CIFAR_ARCH["widths"]))
  variables = _load_variables(
      model,
      state,
      f"the PyTorch CIFAR ResNet-{depth}",
      image_size=32,
      head="linear",
      adjust=adjust,
  )
  return model, variables
