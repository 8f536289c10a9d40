"""Identity Mappings (He et al. 2016, ECCV) Table 1: shortcuts of ResNet-110.

Names (``:arg``, comma-separated, any letter case; ``resnet-110`` is read
as ``resnet110``):
  cases: original, scale_0, scale_half, scale_half_residual_half,
    exclusive_gate_b0 .. exclusive_gate_b-10 (b_g = 0 .. -10; the table
    has 0, -6 and -7), shortcut_gate_b0, shortcut_gate_b-6, conv1x1,
    dropout;
  groups: scale, exclusive_gate, exclusive_gate_search, shortcut_gate,
    fig3 (the table), all;
  smoke: added to any of these (alone: the table), shrinks every case to
    seconds on a CPU (synthetic data, one seed).
Every name runs a sweep: ``config.seeds`` runs per case (5) in
DIR/<case>/seed<s>/, the table in DIR/results.md.

Training curves (Identity Mappings Fig. 3, "training curves of various
shortcuts"): drawn into DIR/fig3.png when the sweep runs the whole table
(no argument, or ``fig3``), one panel per kind of shortcut (constant
scaling, exclusive gating, shortcut-only gating, 1x1 conv and dropout),
each with the original ResNet-110 first; thin lines train error (the paper
draws training loss), bold lines test error, every seed a line in its
case's colour.

The whole table:
  python -m resflax.main --config experiments/cifar_shortcuts.py --workdir runs/table1
One case or a group of cases (comma-separated):
  python -m resflax.main --config experiments/cifar_shortcuts.py:exclusive_gate --workdir runs/table1
The paper's gate-bias search (b_g = 0 .. -10) instead of its three rows:
  python -m resflax.main --config experiments/cifar_shortcuts.py:exclusive_gate_search --workdir runs/bg
Every case shrunk to seconds on a CPU (synthetic data, one seed each):
  python -m resflax.main --config experiments/cifar_shortcuts.py:smoke --workdir /tmp/t1
All seeds of a case in one program: --config.train.parallel_runs=5.

Recipe (Identity Mappings appendix): ResNet-110 (18 basic units per stage,
option A), post-activation units (f = ReLU after the addition) in every
case; SGD momentum 0.9, weight decay 1e-4, batch 128 with BN statistics
over 64 images (the papers' 2 GPUs), lr 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations, warm-up at lr 0.01 for the first 400 iterations
(all CIFAR experiments), pad-4/crop/flip augmentation. The paper reports
the median of 5 runs; "fail" means test error above 20%.
"""

from resflax.config import base_config
from resflax.experiment import cases
from resflax.experiment.cases import Case, Figure, paper_ref

T1 = "identity_table1"


def _gate(kind, b):
  return {"model.shortcut": kind, "model.gate_bias_init": float(b)}


CASES = {
    "original": Case({}, paper_ref(T1, "original")),
    # lambda = 0 removes the shortcut: a plain net.
    "scale_0": Case(
        {"model.shortcut": "scale", "model.shortcut_scale": 0.0},
        paper_ref(T1, "scale_0"),
        "a plain net",
    ),
    "scale_half": Case(
        {"model.shortcut": "scale", "model.shortcut_scale": 0.5},
        paper_ref(T1, "scale_0.5"),
        "F not scaled",
    ),
    "scale_half_residual_half": Case(
        {
            "model.shortcut": "scale",
            "model.shortcut_scale": 0.5,
            "model.scale_residual": True,
        },
        paper_ref(T1, "scale_0.5_residual_0.5"),
        "F scaled by 0.5",
    ),
    **{
        f"exclusive_gate_b{b}": Case(
            _gate("exclusive_gate", b),
            paper_ref(T1, f"exclusive_gate_b{b}") if b >= -7 else {},
            f"1x1 conv gate, init b_g = {b}",
        )
        for b in range(0, -11, -1)
    },
    **{
        f"shortcut_gate_b{b}": Case(
            _gate("shortcut_gate", b),
            paper_ref(T1, f"shortcut_gate_b{b}"),
            f"1x1 conv gate, init b_g = {b}",
        )
        for b in (0, -6)
    },
    "conv1x1": Case(
        {"model.shortcut": "conv1x1"},
        paper_ref(T1, "conv1x1"),
        "BN(1x1 conv) shortcut in every unit",
    ),
    "dropout": Case(
        {"model.shortcut": "dropout", "model.shortcut_dropout": 0.5},
        paper_ref(T1, "dropout"),
        "dropout 0.5 on the shortcut",
    ),
}

GROUPS = {
    "scale": ("scale_0", "scale_half", "scale_half_residual_half"),
    "exclusive_gate": (
        "exclusive_gate_b0",
        "exclusive_gate_b-6",
        "exclusive_gate_b-7",
    ),
    # The paper chose b_g by a search over 0..-10 in steps of -1.
    "exclusive_gate_search": tuple(
        f"exclusive_gate_b{b}" for b in range(0, -11, -1)
    ),
    "shortcut_gate": ("shortcut_gate_b0", "shortcut_gate_b-6"),
}

TABLE = (
    "original",
    *GROUPS["scale"],
    *GROUPS["exclusive_gate"],
    *GROUPS["shortcut_gate"],
    "conv1x1",
    "dropout",
)
GROUPS["fig3"] = TABLE

# Identity Mappings Fig. 3 draws the training curves of the shortcut
# variants; here one panel per kind of shortcut of Table 1, each beside the
# original (the first case of every panel, so in the same colour).
FIGURES = {
    "fig3": Figure(
        "Identity Mappings Fig. 3: shortcut variants of ResNet-110, CIFAR-10 "
        "training (thin) and test (bold) error",
        {
            "constant scaling": ("original", *GROUPS["scale"]),
            "exclusive gating": ("original", *GROUPS["exclusive_gate"]),
            "shortcut-only gating": ("original", *GROUPS["shortcut_gate"]),
            "1x1 conv and dropout shortcuts": (
                "original",
                "conv1x1",
                "dropout",
            ),
        },
    )
}


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: the paper's
  table."""
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.depth = 110
  config.model.bn_group_size = 64
  config.train.warmup_steps = 400
  return cases.experiment(
      __file__,
      config,
      CASES,
      arg,
      table=TABLE,
      groups=GROUPS,
      figures=FIGURES,
      title="Identity Mappings Table 1: shortcut variants, ResNet-110, "
      "CIFAR-10",
  )
