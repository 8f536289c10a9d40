"""Stochastic depth (Huang et al. 2016) against constant depth: papers.md A4.

ResNet-110 (and ResNet-1202) on CIFAR-10/100 with the survival probability
decaying linearly from 1 at the first module to p_L = 0.5 at the last,
whole residual branches dropped per mini-batch, against the same nets at
constant depth.

Names (``:arg``, comma-separated, any letter case; ``resnet-110`` is read
as ``resnet110``):
  cases: resnet110_constant, resnet110_sd, resnet110_constant_c100,
    resnet110_sd_c100 (CIFAR-100), resnet1202_constant, resnet1202_sd;
  groups: resnet110, cifar100, resnet1202, all;
  smoke: added to any of these (alone: every case), shrinks every case to
    seconds on a CPU (synthetic data, one seed).
Every name runs a sweep: ``config.seeds`` runs per case (5) in
DIR/<case>/seed<s>/, the table in DIR/results.md.

  python -m resflax.main --config experiments/stochastic_depth.py --workdir runs/sd
  python -m resflax.main --config experiments/stochastic_depth.py:resnet110 --workdir runs/sd
Every case shrunk to seconds on a CPU (synthetic data, one seed each):
  python -m resflax.main --config experiments/stochastic_depth.py:smoke --workdir /tmp/sd
All seeds of a case in one program: --config.train.parallel_runs=5.

Anchors: the authors' README (ResNet-110, CIFAR-10: 5.25% with stochastic
depth, 6.41% constant depth, "expect +-0.2%") [V]; the CIFAR-100 and
ResNet-1202 numbers are from the paper as remembered [U].

Recipe: the stochastic-depth paper's, recalled, not in papers.md [U]:
500 epochs at batch 128, lr 0.1 divided by 10 at epochs 250 and 375,
weight decay 1e-4, Nesterov momentum 0.9, 5,000 training images held out
for validation (45,000 train, 351 steps per epoch). The authors report the
test error at the best validation error; resflax reports the final test
error (results.json keeps the validation error beside it).
"""

from resflax.config import base_config
from resflax.experiment import cases
from resflax.experiment.cases import Case, paper_ref

SD = "stochastic_depth"
TRAIN_IMAGES = 45_000
BATCH = 128
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH
EPOCHS = 500
DECAY_EPOCHS = (250, 375)


def _case(depth, dataset, sd, ref):
  overrides = {
      "model.depth": depth,
      "model.stochastic_depth": 0.5 if sd else 1.0,
  }
  if dataset != "cifar10":
    overrides["data.name"] = dataset
  return Case(
      overrides,
      paper_ref(SD, ref),
      ("linear decay to p_L = 0.5" if sd else "constant depth")
      + (
          ""
          if depth == 110 and dataset == "cifar10"
          else "; paper number from memory [U]"
      ),
  )


CASES = {
    "resnet110_constant": _case(110, "cifar10", False, "resnet110_constant"),
    "resnet110_sd": _case(110, "cifar10", True, "resnet110_sd"),
    "resnet110_constant_c100": _case(
        110, "cifar100", False, "cifar100_constant"
    ),
    "resnet110_sd_c100": _case(110, "cifar100", True, "cifar100_sd"),
    "resnet1202_constant": _case(1202, "cifar10", False, "resnet1202_constant"),
    "resnet1202_sd": _case(1202, "cifar10", True, "resnet1202_sd"),
}
GROUPS = {
    "resnet110": ("resnet110_constant", "resnet110_sd"),
    "cifar100": ("resnet110_constant_c100", "resnet110_sd_c100"),
    "resnet1202": ("resnet1202_constant", "resnet1202_sd"),
}


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: every case."""
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.stochastic_depth_mode = "batch"
  config.data.validation_split = 5_000
  t = config.train
  t.batch_size = BATCH
  t.steps = EPOCHS * STEPS_PER_EPOCH
  t.schedule_steps = t.steps
  t.lr_boundaries = tuple(e * STEPS_PER_EPOCH for e in DECAY_EPOCHS)
  t.nesterov = True
  t.eval_every = 10 * STEPS_PER_EPOCH
  return cases.experiment(
      __file__,
      config,
      CASES,
      arg,
      groups=GROUPS,
      title="Stochastic depth vs constant depth (Huang et al. 2016)",
  )
