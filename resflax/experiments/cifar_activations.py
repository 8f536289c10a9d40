"""Identity Mappings (He et al. 2016, ECCV) Table 2: where BN and ReLU go.

The five unit designs of Fig. 4, (a) original, (b) BN after addition, (c)
ReLU before addition, (d) ReLU-only pre-activation, (e) full
pre-activation, on ResNet-110 (basic units, option A) and ResNet-164
(bottleneck units 1x1,16 / 3x3,16 / 1x1,64; projection B).

Names (``:arg``, comma-separated, any letter case; ``resnet-110`` is read
as ``resnet110``):
  cases: <unit>_<depth>, unit one of original, bn_after_add,
    relu_before_add, relu_preact, full_preact (Fig. 4 (a)-(e)), depth 110
    or 164 (e.g. full_preact_110);
  groups: resnet110, resnet164 (every unit of a depth), each unit's name
    (both depths), fig6 (Fig. 6's four networks), all;
  smoke: added to any of these (alone: the table), shrinks every case to
    seconds on a CPU (synthetic data, one seed).
Every name runs a sweep: ``config.seeds`` runs per case (5) in
DIR/<case>/seed<s>/, the table in DIR/results.md.

Training curves (Identity Mappings Fig. 6): left, BN after addition against
the original unit on ResNet-110; right, full pre-activation against the
original on ResNet-164. Drawn into DIR/fig6.png when the sweep runs those
four cases (the whole table does); thin lines train error (the paper draws
training loss), bold lines test error, every seed a line in its case's
colour:
  python -m resflax.main --config experiments/cifar_activations.py:fig6 --workdir runs/table2

The whole table:
  python -m resflax.main --config experiments/cifar_activations.py --workdir runs/table2
One depth, one design, or one case (comma-separated):
  python -m resflax.main --config experiments/cifar_activations.py:resnet164 --workdir runs/table2
  python -m resflax.main --config experiments/cifar_activations.py:full_preact --workdir runs/table2
  python -m resflax.main --config experiments/cifar_activations.py:full_preact_110 --workdir runs/table2
Every case shrunk to seconds on a CPU (synthetic data, one seed each):
  python -m resflax.main --config experiments/cifar_activations.py:smoke --workdir /tmp/t2
All seeds of a case in one program: --config.train.parallel_runs=5.

Recipe (Identity Mappings appendix): SGD momentum 0.9, weight decay 1e-4,
batch 128 with BN statistics over 64 images (2 GPUs), lr 0.1 divided by 10
at 32k and 48k iterations, 64k iterations, warm-up at lr 0.01 for the first
400 iterations, pad-4/crop/flip augmentation; median of 5 runs.
"""

from resflax.config import base_config
from resflax.experiment import cases
from resflax.experiment.cases import Case, Figure, paper_ref

# model.unit -> the letter of Fig. 4 / Table 2.
UNITS = {
    "original": "a",
    "bn_after_add": "b",
    "relu_before_add": "c",
    "relu_preact": "d",
    "full_preact": "e",
}
NETS = {
    110: {"model.depth": 110, "model.block": "basic"},
    164: {
        "model.depth": 164,
        "model.block": "bottleneck",
        "model.projection": "B",
    },
}

CASES = {
    f"{unit}_{depth}": Case(
        {**net, "model.unit": unit},
        paper_ref("identity_table2", letter, depth=depth),
        f"Fig. 4 ({letter}), ResNet-{depth}",
    )
    for depth, net in NETS.items()
    for unit, letter in UNITS.items()
}

# Identity Mappings Fig. 6: left, BN after addition (Fig. 4b) against the
# original on ResNet-110; right, full pre-activation (Fig. 4e) against the
# original on ResNet-164.
FIG6 = {
    "ResNet-110: BN after addition": ("original_110", "bn_after_add_110"),
    "ResNet-164: pre-activation": ("original_164", "full_preact_164"),
}
GROUPS = {
    **{
        f"resnet{depth}": tuple(f"{u}_{depth}" for u in UNITS) for depth in NETS
    },
    **{unit: tuple(f"{unit}_{depth}" for depth in NETS) for unit in UNITS},
    "fig6": tuple(c for members in FIG6.values() for c in members),
}
FIGURES = {
    "fig6": Figure(
        "Identity Mappings Fig. 6: CIFAR-10 training (thin) and test (bold) "
        "error",
        FIG6,
    )
}


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: Table 2."""
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.bn_group_size = 64
  config.train.warmup_steps = 400
  return cases.experiment(
      __file__,
      config,
      CASES,
      arg,
      groups=GROUPS,
      figures=FIGURES,
      title="Identity Mappings Table 2: BN/ReLU placement, CIFAR-10",
  )
