"""ImageNet ResNets from torchvision checkpoints.

``from_torchvision(state_dict, depth)`` builds the resflax ``imagenet_resnet``
with torchvision's architecture (option B projections, the bottleneck's
stride on its 3x3 conv, post-activation units, BN epsilon 1e-5) and copies a
torchvision ``resnet18/34/50/101/152`` state dict into its variables, so a
trained ImageNet model can be studied with resflax's tools (lesions, paths,
signal statistics). Example::

  import torch
  state = torch.load("resnet50.pth", map_location="cpu")
  model, variables = resflax.models.from_torchvision(state, 50)
  logits = model.apply(variables, images_nhwc)

torch itself is not needed: a dict of numpy arrays (e.g. from ``np.load``)
converts the same way; tensors are read through their own ``.numpy()``.

The key mapping, layout transposes and checks (``_check_overrides``,
``_strip_module_prefix``, ``_load_variables``) are shared with
``resflax.models.torch_cifar``, whose PyTorch CIFAR ResNets name their
modules the same way.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["from_torchvision", "TORCHVISION_ARCH"]

# The model keys that make resflax's imagenet_resnet torchvision's ResNet.
TORCHVISION_ARCH = dict(
    name="imagenet_resnet",
    shortcut="identity",
    unit="original",
    projection="B",
    stride_on="3x3",
    bn_epsilon=1e-5,
    widths=(64, 128, 256, 512),
)

# Model keys that change how the network runs, not what it computes.
_ALLOWED_OVERRIDES = (
    "dtype",
    "scan",
    "scan_unroll",
    "remat",
    "bn_group_size",
    "bn_momentum",
)

# A counter torchvision's BN keeps for momentum=None; evaluation never reads
# it, and older checkpoints lack it.
_IGNORED_SUFFIX = ".num_batches_tracked"

_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def _module_name(scope: str, names: Sequence[str], head: str = "fc") -> str:
  """torchvision's name of the resflax module ``names`` inside ``scope``.

  ``head`` is the checkpoint's name of the classifier (torchvision 'fc').
  """
  if scope == "stem":
    return {"conv": "conv1", "bn": "bn1"}[names[0]]
  if scope == "head":
    return {"fc": head}[names[0]]
  if names[0] == "shortcut":
    return {"proj": "downsample.0", "proj_bn": "downsample.1"}[names[1]]
  for prefix in ("conv", "bn_post"):
    if names[0].startswith(prefix) and names[0][len(prefix) :].isdigit():
      # resflax counts a unit's convs from 0, torchvision from 1.
      kind = "conv" if prefix == "conv" else "bn"
      return f"{kind}{int(names[0][len(prefix):]) + 1}"
  raise KeyError(names[0])


def _torch_keys(
    path: tuple[str, ...], stacked: int, head: str = "fc"
) -> list[str]:
  """The state-dict key(s) of one resflax variable.

  Args:
    path: (collection, scope, ..., leaf), e.g.
      ('params', 'stage1', 'units', 'conv0', 'kernel').
    stacked: how many units the leaf stacks ('units'), else 0.
    head: the checkpoint's name of the classifier.

  Returns:
    One key, or one per stacked unit (units 1..n of the stage, in order).
  """
  scope, leaf = path[1], path[-1]
  if scope in ("stem", "head"):
    return [f"{_module_name(scope, path[2:-1], head)}.{_LEAF[leaf]}"]
  layer = f"layer{int(scope[len('stage'):]) + 1}"
  module = _module_name(scope, path[3:-1])
  units = [0] if path[2] == "unit0" else range(1, stacked + 1)
  return [f"{layer}.{u}.{module}.{_LEAF[leaf]}" for u in units]


def _to_torch_layout(shape: Sequence[int]) -> tuple[int, ...]:
  """A resflax weight shape as torchvision stores it (for error messages)."""
  if len(shape) == 4:  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:  # Dense (in, out) -> Linear (out, in)
    return (shape[1], shape[0])
  return tuple(shape)


def _as_numpy(value: Any) -> np.ndarray:
  """A torch tensor (read without importing torch) or array as float32."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      # numpy has no bfloat16: half-precision checkpoints go through float32.
      value = value.float()
    value = value.numpy()
  return np.asarray(value, np.float32)


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
    return value.T
  return value


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  # torch.nn.DataParallel checkpoints name every key 'module.<name>'.
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    return {k[len("module.") :]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _check_keys(state: Mapping[str, Any], needed: Sequence[str], network: str):
  """Raises ValueError for a key of ``network`` missing, or one too many."""
  missing = [k for k in needed if k not in state]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise ValueError(
        f"state_dict lacks key {missing[0]!r}{more}, needed by " f"{network}"
    )
  wanted = set(needed)
  unexpected = [
      k for k in state if k not in wanted and not k.endswith(_IGNORED_SUFFIX)
  ]
  if unexpected:
    more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
    raise ValueError(
        f"state_dict has unexpected key {unexpected[0]!r}{more}; "
        f"it is not part of {network}"
    )


def _convert_leaf(state, keys, shape, stacked, network) -> np.ndarray:
  """Reads, checks and converts the state-dict entries of one variable."""
  per_unit = tuple(shape[1:] if stacked else shape)
  arrays = []
  for key in keys:
    value = _from_torch_layout(_as_numpy(state[key]))
    if value.shape != per_unit:
      raise ValueError(
          f"state_dict[{key!r}] has shape {_to_torch_layout(value.shape)}; "
          f"{network} needs {_to_torch_layout(per_unit)}"
      )
    arrays.append(value)
  return np.stack(arrays) if stacked else arrays[0]


def _plan(shapes, network: str, head: str = "fc"):
  """Each resflax variable's path, state-dict keys, shape and stacking.

  Args:
    shapes: ``jax.eval_shape`` of the network's ``init``.
    network: the checkpoint's network, for error messages.
    head: the checkpoint's name of the classifier.

  Returns:
    ``(leaves, trees)``: a list of ``(path, keys, shape, stacked)`` in
    flattening order, and the tree structure of each collection.
  """
  leaves, trees = [], {}
  for collection in ("params", "batch_stats"):
    flat, trees[collection] = jax.tree_util.tree_flatten_with_path(
        shapes[collection]
    )
    for kpath, leaf in flat:
      path = (collection,) + tuple(str(k.key) for k in kpath)
      stacked = leaf.shape[0] if "units" in path[2:3] else 0
      try:
        keys = _torch_keys(path, stacked, head)
      except KeyError:
        raise ValueError(
            f"resflax variable {'/'.join(path)} has no "
            f"counterpart in {network}"
        ) from None
      leaves.append((path, keys, leaf.shape, stacked))
  return leaves, trees


def _check_overrides(caller: str, network: str, overrides: Mapping[str, Any]):
  """Raises ValueError for a model key that would change the architecture."""
  bad = sorted(set(overrides) - set(_ALLOWED_OVERRIDES))
  if bad:
    raise ValueError(
        f"{caller}: model key(s) {bad} would change "
        f"{network} architecture; allowed: "
        f"{', '.join(_ALLOWED_OVERRIDES)}"
    )


# adjust(path, value) -> value: a change to one converted variable.
_Adjust = Callable[[tuple[str, ...], np.ndarray], np.ndarray]


def _load_variables(
    model,
    state: Mapping[str, Any],
    network: str,
    *,
    image_size: int,
    head: str = "fc",
    adjust: _Adjust | None = None,
) -> dict[str, Any]:
  """``model``'s variables, every one read from a torch-named state dict.

  Args:
    model: the resflax ``Network`` whose variables to fill.
    state: the state dict, 'module.' prefix already stripped.
    network: the checkpoint's network, for error messages (e.g.
      "torchvision's ResNet-50").
    image_size: an input side the network accepts (only shapes are traced).
    head: the checkpoint's name of the classifier.
    adjust: optional ``adjust(path, value)`` applied to each converted
      variable (resflax layout) before it is stored, e.g. to permute
      channels.

  Returns:
    ``params``, ``batch_stats`` and an intact ``lesion``.

  Raises:
    ValueError: a key missing or unexpected, or a shape that does not fit.
  """
  shapes = jax.eval_shape(
      model.init,
      jax.random.key(0),
      jnp.zeros((1, image_size, image_size, 3), jnp.float32),
  )
  leaves, trees = _plan(shapes, network, head)
  _check_keys(state, [k for _, keys, _, _ in leaves for k in keys], network)
  values = {"params": [], "batch_stats": []}
  for path, keys, shape, stacked in leaves:
    value = _convert_leaf(state, keys, shape, stacked, network)
    if adjust is not None:
      value = adjust(path, value)
    values[path[0]].append(jnp.asarray(value))
  # Unflattened with init's own structure, so modules without variables
  # (the head's batch_stats) stay present as empty dicts.
  variables = {c: jax.tree.unflatten(trees[c], values[c]) for c in values}
  variables["lesion"] = model.default_lesion()
  return variables


def from_torchvision(
    state_dict: Mapping[str, Any], depth: int, **overrides
) -> tuple[Any, dict[str, Any]]:
  """Converts a torchvision ResNet checkpoint into a resflax network.

  Args:
    state_dict: ``torchvision.models.resnetD().state_dict()`` or the same
      loaded from a file (``torch.load(path, map_location="cpu")``): torch
      tensors or numpy arrays keyed as torchvision names them ('conv1.weight',
      'layer2.0.downsample.1.running_var', 'fc.bias', ...). A 'module.'
      prefix (DataParallel) is accepted; 'num_batches_tracked' is ignored.
    depth: 18, 34, 50, 101 or 152 (resflax's 200 takes the same layout).
    **overrides: model keys that do not change what the network computes:
      dtype, scan, scan_unroll, remat, bn_group_size, bn_momentum (e.g.
      ``dtype="bfloat16"`` or ``scan_unroll=4``). The number of classes is
      read from 'fc.weight'.

  Returns:
    ``(model, variables)``: the ``imagenet_resnet`` network (NHWC input,
    normalised as the checkpoint was trained) and its full variables
    (``params``, ``batch_stats``, an intact ``lesion``).

  Raises:
    ValueError: an invalid depth or override, a key missing from or
      unexpected in ``state_dict``, or a shape that does not fit; each
      names the key.
  """
  # Imported here: resflax.models imports this module.
  from resflax.models import create_model  # pylint: disable=g-import-not-at-top

  _check_overrides("from_torchvision", "torchvision's", overrides)
  state = _strip_module_prefix(state_dict)
  fc = state.get("fc.weight")
  num_classes = int(np.shape(fc)[0]) if fc is not None else 1000
  model = create_model(
      depth=depth, num_classes=num_classes, **TORCHVISION_ARCH, **overrides
  )
  variables = _load_variables(
      model, state, f"torchvision's ResNet-{depth}", image_size=64
  )
  return model, variables
