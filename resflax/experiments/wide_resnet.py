"""Wide ResNets (Zagoruyko & Komodakis 2016) and their baselines: papers.md A4.

WRN-28-10 with and without dropout, and the pre-activation ResNet-164 and
ResNet-1001 baselines of the authors' README table, on CIFAR-10 and
CIFAR-100 (median of 5 runs).

Names (``:arg``, comma-separated, any letter case; ``resnet-110`` is read
as ``resnet110``, ``wrn-28-10`` as ``wrn28_10``):
  cases: wrn28_10, wrn28_10_dropout, preact_resnet164, preact_resnet1001,
    each also with _c100 (CIFAR-100);
  groups: cifar10, cifar100, wrn, preact, all;
  smoke: added to any of these (alone: every case), shrinks every case to
    seconds on a CPU.
Every name runs a sweep: ``config.seeds`` runs per case (5) in
DIR/<case>/seed<s>/, the table in DIR/results.md.

  python -m resflax.main --config experiments/wide_resnet.py --workdir runs/wrn
  python -m resflax.main --config experiments/wide_resnet.py:wrn --workdir runs/wrn
Every case shrunk to seconds on a CPU (synthetic data, WRN-10-1 structure
with narrow stages, one seed each):
  python -m resflax.main --config experiments/wide_resnet.py:smoke --workdir /tmp/wrn
All seeds of a case in one program: --config.train.parallel_runs=5.

WRN recipe: the WRN paper's, recalled, not in papers.md [U]: per-channel
mean/std normalisation ("meanstd"; papers.md: the README warns that ZCA
gives substantially different results), 200 epochs at batch 128 (390 steps
per epoch), lr 0.1 multiplied by 0.2 at epochs 60, 120 and 160, weight
decay 5e-4, Nesterov momentum 0.9, dropout 0.3 between the convolutions of
a unit for the dropout rows. The pre-activation baselines are He et al.'s
numbers, so they use the Identity Mappings recipe (as in
experiments/cifar_preact.py).
"""

from resflax.config import base_config
from resflax.experiment import cases
from resflax.experiment.cases import Case, paper_ref

STEPS_PER_EPOCH = 50_000 // 128
EPOCHS = 200
DECAY_EPOCHS = (60, 120, 160)

# Identity Mappings appendix: the recipe of the pre-activation baselines.
IDENTITY_RECIPE = {
    "data.normalization": "pixel_mean",
    "model.name": "cifar_resnet",
    "model.block": "bottleneck",
    "model.projection": "B",
    "model.unit": "full_preact",
    "model.bn_group_size": 64,
    "train.steps": 64_000,
    "train.schedule_steps": 64_000,
    "train.lr_boundaries": (32_000, 48_000),
    "train.lr_decay": 0.1,
    "train.weight_decay": 1e-4,
    "train.nesterov": False,
    "train.warmup_steps": 400,
}
NETS = {
    "wrn28_10": {},
    "wrn28_10_dropout": {"model.dropout": 0.3},
    "preact_resnet164": {**IDENTITY_RECIPE, "model.depth": 164},
    "preact_resnet1001": {**IDENTITY_RECIPE, "model.depth": 1001},
}

CASES = {
    net
    + ("" if dataset == "cifar10" else "_c100"): Case(
        {**overrides, "data.name": dataset},
        paper_ref("wrn", net, dataset=dataset),
        "Identity Mappings recipe" if net.startswith("preact") else "",
    )
    for dataset in ("cifar10", "cifar100")
    for net, overrides in NETS.items()
}
GROUPS = {
    "cifar10": tuple(c for c in CASES if not c.endswith("_c100")),
    "cifar100": tuple(c for c in CASES if c.endswith("_c100")),
    "wrn": tuple(c for c in CASES if c.startswith("wrn")),
    "preact": tuple(c for c in CASES if c.startswith("preact")),
}


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: every case."""
  config = base_config()
  config.model.name = "wide_resnet"
  config.model.depth = 28
  config.model.width = 10
  config.data.normalization = "channel_standardize"
  t = config.train
  t.steps = EPOCHS * STEPS_PER_EPOCH
  t.schedule_steps = t.steps
  t.lr_boundaries = tuple(e * STEPS_PER_EPOCH for e in DECAY_EPOCHS)
  t.lr_decay = 0.2
  t.weight_decay = 5e-4
  t.nesterov = True
  return cases.experiment(
      __file__,
      config,
      CASES,
      arg,
      groups=GROUPS,
      title="Wide ResNets and pre-activation baselines, CIFAR-10/100",
  )
