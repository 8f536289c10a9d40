"""Identity Mappings (He et al. 2016, ECCV) Tables 3 and 4: pre-activation.

Original (post-activation, Fig. 4a) against full pre-activation units
(Fig. 4e) on CIFAR-10 and CIFAR-100:
  ResNet-110 with 1-layer skips (one 3x3 conv per unit, depth 3n+2),
  ResNet-110 (basic units, option A),
  ResNet-164 and ResNet-1001 (bottleneck units, projection B),
and Table 4's pre-activation ResNet-1001 at mini-batch 64.

Names (``:arg``, comma-separated, any letter case; ``resnet-110`` is read
as ``resnet110``):
  cases: <unit>_<net>[_c100], unit original or preact, net
    resnet110_1layer, resnet110, resnet164 or resnet1001 (Table 3's rows;
    _c100: CIFAR-100), and preact_resnet1001_batch64 (Table 4);
  groups: cifar10, cifar100, original, preact, and each net's name;
    fig1 (ResNet-1001, CIFAR-10, both units); all;
  smoke: added to any of these (alone: the tables), shrinks every case to
    seconds on a CPU (synthetic data, one seed).
Every name runs a sweep: ``config.seeds`` runs per case (5) in
DIR/<case>/seed<s>/, the table in DIR/results.md.

Training curves (Identity Mappings Fig. 1, right): ResNet-1001 on CIFAR-10
with original against pre-activation units, drawn into DIR/fig1.png when
the sweep runs both (the whole table does); thin lines train error (the
paper draws training loss), bold lines test error, every seed a line in its
case's colour. Fig. 6's pre-activation panel (ResNet-164) and its BN-after-
addition panel are declared in cifar_activations.py, which has both.
  python -m resflax.main --config experiments/cifar_preact.py:fig1 --workdir runs/table3

The whole table:
  python -m resflax.main --config experiments/cifar_preact.py --workdir runs/table3
A group or a case (comma-separated), e.g. everything on CIFAR-100:
  python -m resflax.main --config experiments/cifar_preact.py:cifar100 --workdir runs/table3
  python -m resflax.main --config experiments/cifar_preact.py:preact_resnet1001_batch64 --workdir runs/table3
Every case shrunk to seconds on a CPU (synthetic data, one seed each):
  python -m resflax.main --config experiments/cifar_preact.py:smoke --workdir /tmp/t3
All seeds of a case in one program: --config.train.parallel_runs=5.

Recipe (Identity Mappings appendix): SGD momentum 0.9, weight decay 1e-4,
batch 128 with BN statistics over 64 images (2 GPUs), lr 0.1 divided by 10
at 32k and 48k iterations, 64k iterations, warm-up at lr 0.01 for the first
400 iterations, pad-4/crop/flip augmentation; median of 5 runs.

Batch 64 (Table 4; the authors' resnet-1k-layers README: "-batchSize 64
-nGPU 2 -nEpochs 200"): 200 epochs at 64 images per step, i.e. 156,250
steps, with the decays at the same fractions of training as above (50% and
75%) and BN statistics over 32 images (64 on 2 GPUs).
"""

from resflax.config import base_config
from resflax.experiment import cases
from resflax.experiment.cases import Case, Figure, paper_ref

T3, T4 = "identity_table3", "identity_table4"
UNITS = {"original": "original", "preact": "full_preact"}
NETS = {
    "resnet110_1layer": {"model.depth": 110, "model.block": "single"},
    "resnet110": {"model.depth": 110, "model.block": "basic"},
    "resnet164": {
        "model.depth": 164,
        "model.block": "bottleneck",
        "model.projection": "B",
    },
    "resnet1001": {
        "model.depth": 1001,
        "model.block": "bottleneck",
        "model.projection": "B",
    },
}
# (net, dataset) pairs of Table 3.
ROWS = (
    ("resnet110_1layer", "cifar10"),
    ("resnet110", "cifar10"),
    ("resnet164", "cifar10"),
    ("resnet1001", "cifar10"),
    ("resnet164", "cifar100"),
    ("resnet1001", "cifar100"),
)

_EPOCH_STEPS_64 = 200 * 50_000 // 64


def _reference(net, dataset, unit):
  # Table 4 repeats Table 3's pre-act ResNet-1001 with mean ± std as well.
  if net == "resnet1001" and unit == "preact":
    return paper_ref(T4, "preact_resnet1001", dataset=dataset)
  return paper_ref(T3, net, dataset=dataset, unit=unit)


def _case(net, dataset, unit):
  data = {"data.name": dataset} if dataset != "cifar10" else {}
  return Case(
      {**NETS[net], **data, "model.unit": UNITS[unit]},
      _reference(net, dataset, unit),
  )


CASES = {
    f"{unit}_{net}"
    + ("" if dataset == "cifar10" else "_c100"): _case(net, dataset, unit)
    for net, dataset in ROWS
    for unit in UNITS
}
CASES["preact_resnet1001_batch64"] = Case(
    {
        **NETS["resnet1001"],
        "model.unit": "full_preact",
        "model.bn_group_size": 32,
        "train.batch_size": 64,
        "train.steps": _EPOCH_STEPS_64,
        "train.lr_boundaries": (_EPOCH_STEPS_64 // 2, _EPOCH_STEPS_64 * 3 // 4),
    },
    paper_ref(T4, "preact_resnet1001_batch64", dataset="cifar10"),
    "batch 64, 200 epochs",
)

# Identity Mappings Fig. 1 (right): ResNet-1001 on CIFAR-10, original
# against pre-activation units.
FIG1 = ("original_resnet1001", "preact_resnet1001")
FIGURES = {
    "fig1": Figure(
        "Identity Mappings Fig. 1: ResNet-1001, original vs pre-activation "
        "units, CIFAR-10 training (thin) and test (bold) error",
        {"ResNet-1001": FIG1},
    )
}

GROUPS = {
    "fig1": FIG1,
    "cifar10": tuple(c for c in CASES if not c.endswith("_c100")),
    "cifar100": tuple(c for c in CASES if c.endswith("_c100")),
    "original": tuple(c for c in CASES if c.startswith("original_")),
    "preact": tuple(c for c in CASES if c.startswith("preact_")),
    **{
        net: tuple(
            c
            for c in CASES
            if c.split("_", 1)[1].startswith(net)
            and (net != "resnet110" or "1layer" not in c)
        )
        for net in NETS
    },
}


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: Tables 3 and 4."""
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
      title="Identity Mappings Tables 3-4: original vs pre-activation units",
  )
