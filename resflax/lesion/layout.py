"""Reading a network's lesion collection: stages, sizes, the module table.

``resflax.lesion.ops`` (whose public API re-exports these) rewrites the
collection; this module only reads its layout (see ``ops`` for what the
collection holds).
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from resflax.models import ModuleInfo, Network


def _lesion_of(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  if not isinstance(variables, Mapping) or "lesion" not in variables:
    keys = (
        sorted(variables)
        if isinstance(variables, Mapping)
        else type(variables).__name__
    )
    raise ValueError(
        "expected the full variables pytree of a resflax network, with a "
        f"'lesion' collection (keys 'params', 'batch_stats', 'lesion'); got "
        f"{keys}"
    )
  return variables["lesion"]


def stage_names(variables: Mapping[str, Any]) -> list[str]:
  """The lesion's stage names in forward order (``stage0``, ``stage1``, ...).

  Sorted by their number, not as strings, so ``stage10`` follows ``stage9``.
  """
  names = list(_lesion_of(variables))
  bad = [s for s in names if not re.fullmatch(r"stage\d+", s)]
  if bad:
    raise ValueError(
        f"variables['lesion'] has keys {bad}; only 'stageN' " "keys are allowed"
    )
  return sorted(names, key=lambda s: int(s[len("stage") :]))


def stage_sizes(variables: Mapping[str, Any]) -> tuple[int, ...]:
  """Number of modules of each stage, read from the lesion arrays' shapes."""
  lesion = _lesion_of(variables)
  return tuple(
      int(np.shape(lesion[s]["active"])[0]) for s in stage_names(variables)
  )


def movable_counts(variables: Mapping[str, Any]) -> tuple[int, ...]:
  """How many units of each stage a reordering permutes: its ``order``'s size.

  They are the stage's last ones: n - 1 (unit 0 stays first) or all n (a
  post-activation stage whose unit 0 keeps the shape); 0 for a stage
  without ``order``.
  """
  lesion = _lesion_of(variables)
  return tuple(
      int(np.shape(lesion[s]["order"])[0]) if "order" in lesion[s] else 0
      for s in stage_names(variables)
  )


def num_modules(variables: Mapping[str, Any]) -> int:
  """Number of residual modules n of the network the variables belong to."""
  return sum(stage_sizes(variables))


def module_table(
    model_or_variables: Network | Mapping[str, Any],
    downsampling: Sequence[bool] | None = None,
) -> list[ModuleInfo]:
  """The numbering of the modules and which of them downsample.

  Args:
    model_or_variables: a ``Network`` (its ``modules`` are returned), or a
      variables pytree, from whose lesion arrays the stage sizes are read.
    downsampling: only with variables: one bool per module saying whether it
      downsamples. None assumes the ResNet layout (unit 0 of every stage but
      the first downsamples), which is wrong for ``vgg`` (it pools between
      stages instead): pass the model for that.

  Returns:
    One ``ModuleInfo(index, stage, unit, downsampling, changes_shape)`` per
    module in forward order. From variables alone ``changes_shape`` is taken
    equal to ``downsampling`` (channel-only changes cannot be seen there).

  Raises:
    ValueError: ``downsampling`` has the wrong length.
  """
  if isinstance(model_or_variables, Network):
    if downsampling is not None:
      raise ValueError(
          "module_table(model, downsampling=...): the model "
          "already knows which modules downsample; pass "
          "downsampling only with variables"
      )
    return list(model_or_variables.modules)
  sizes = stage_sizes(model_or_variables)
  n = sum(sizes)
  if downsampling is None:
    downsampling = [
        s > 0 and u == 0 for s, size in enumerate(sizes) for u in range(size)
    ]
  downsampling = [bool(d) for d in downsampling]
  if len(downsampling) != n:
    raise ValueError(
        f"downsampling has {len(downsampling)} entries; the "
        f"network has {n} modules (stages of {list(sizes)})"
    )
  table, i = [], 0
  for s, size in enumerate(sizes):
    for u in range(size):
      table.append(ModuleInfo(i, s, u, downsampling[i], downsampling[i]))
      i += 1
  return table
