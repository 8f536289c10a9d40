"""Where BN and ReLU sit in a residual unit: Identity Mappings Fig. 4 (a)-(e).

A placement is data: the ops before each conv of the residual branch, after
each inner conv, after the last conv, after the addition, after the stem conv
and before the final pooling. ``"bn"`` and ``"relu"`` are the only ops.
"""

import dataclasses

from resflax.registry import Registry

PLACEMENTS: Registry["Placement"] = Registry("model.unit")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Order of operations of one residual unit x -> f(h(x) + F(x))."""

  pre: tuple[str, ...]  # before every conv of F
  post: tuple[str, ...]  # after every conv of F but the last
  last: tuple[str, ...]  # after the last conv of F
  after_add: tuple[str, ...]  # f, after the addition
  stem: tuple[str, ...]  # after the stem conv
  final: tuple[str, ...]  # after the last unit, before pooling
  preact: bool  # ops precede the convs; the paper's edge rules apply


for _name, _p in {
    # (a) conv-BN-ReLU-conv-BN, add, ReLU.
    "original": Placement(
        (), ("bn", "relu"), ("bn",), ("relu",), ("bn", "relu"), (), False
    ),
    # (b) conv-BN-ReLU-conv, add, BN, ReLU.
    "bn_after_add": Placement(
        (), ("bn", "relu"), (), ("bn", "relu"), ("bn", "relu"), (), False
    ),
    # (c) conv-BN-ReLU-conv-BN-ReLU, add.
    "relu_before_add": Placement(
        (), ("bn", "relu"), ("bn", "relu"), (), ("bn", "relu"), (), False
    ),
    # (d) ReLU-conv-BN-ReLU-conv-BN, add.
    "relu_preact": Placement(
        ("relu",), ("bn",), ("bn",), (), ("bn",), ("relu",), True
    ),
    # (e) BN-ReLU-conv-BN-ReLU-conv, add.
    "full_preact": Placement(
        ("bn", "relu"), (), (), (), (), ("bn", "relu"), True
    ),
}.items():
  PLACEMENTS.register(_name)(_p)
