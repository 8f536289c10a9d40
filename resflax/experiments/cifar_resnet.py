"""He et al. 2016 (CVPR), CIFAR-10 ResNets: Table 6, plain twins, Fig. 6 and 7.

Names (``:arg``, comma-separated; as models are spelt, ``resnet-110`` is
read as ``resnet110``):
  one network, trained once, results in DIR/results.json: a depth alone
    (``:110``, ``:20``); ``:smoke`` alone is a tiny ResNet-8 run;
  the table's cases, ``config.seeds`` runs each (5), results in
    DIR/results.md and each run in DIR/<case>/seed<s>/: resnet20 resnet32
    resnet44 resnet56 resnet110 resnet1202, plain20 plain32 plain44
    plain56, resnet110_effective;
  groups of cases: table6, plain, fig6, fig7, effective_paths, all;
  ``smoke``: added to any of these, shrinks it to seconds on a CPU
    (synthetic data, one seed).

The table: ResNet-20/32/44/56/110/1202 and the plain nets 20/32/44/56 of
Fig. 6, with the paper's numbers:
  python -m resflax.main --config experiments/cifar_resnet.py --workdir runs/table6
Cases or groups of it:
  python -m resflax.main --config experiments/cifar_resnet.py:resnet110 --workdir runs/table6
  python -m resflax.main --config experiments/cifar_resnet.py:plain --workdir runs/table6
The whole table shrunk to seconds per case on a CPU (synthetic data):
  python -m resflax.main --config experiments/cifar_resnet.py:all,smoke --workdir /tmp/t6
All seeds of a case in one program: --config.train.parallel_runs=5.

One network, one seed (no sweep); its plain twin with a flag:
  python -m resflax.main --config experiments/cifar_resnet.py:110 --workdir runs/r110
  python -m resflax.main --config experiments/cifar_resnet.py:56 --workdir runs/p56 \
      --config.model.shortcut=none
A tiny single run (ResNet-8, narrow) that finishes in seconds on a CPU:
  python -m resflax.main --config experiments/cifar_resnet.py:smoke --workdir /tmp/smoke

Training curves, He et al. Fig. 6 (group ``fig6``: the table's cases):
plain-20/32/44/56 left, ResNet-20/32/44/56/110 in the middle, ResNet-110
and ResNet-1202 right; thin lines train error, bold lines test error, every
seed a line in its case's colour. Drawn into DIR/fig6.png when the sweep
runs all of its cases (the default table does); every run also writes its
own DIR/<case>/seed<s>/curves.png:
  python -m resflax.main --config experiments/cifar_resnet.py:fig6 --workdir runs/table6
He et al. Fig. 7 (group ``fig7``): plain-20/56 and ResNet-20/56/110 are
trained, then each finished run is restored and the std of every 3x3
layer's response (after BN, before ReLU/addition) measured on 500 test
images; drawn in layer order and sorted by magnitude into DIR/fig7.png, the
numbers in DIR/fig7.json and DIR/fig7.csv:
  python -m resflax.main --config experiments/cifar_resnet.py:fig7 --workdir runs/table6

Veit et al. 2016 sec. 5, training on the effective paths only: ResNet-110
with gradients through 23 of its 54 modules' branches per mini-batch,
beside the normally trained net (group ``effective_paths``).

Recipe (He et al. 2016 CVPR): SGD momentum 0.9, weight decay 1e-4, batch
128 (BN statistics over 64 images, as on the paper's 2 GPUs), lr 0.1
divided by 10 at 32k and 48k iterations, 64k iterations, pad-4/crop/flip
augmentation, per-pixel mean subtraction. ResNet-110 and ResNet-1202 warm
up at lr 0.01 until the training error is below 80% (about 400 iterations
in the paper), then train at 0.1. Table 6 reports ResNet-110 as the best of
5 runs (mean 6.61 +- 0.16), the other rows as single numbers.
"""

from resflax import models
from resflax.config import base_config
from resflax.experiment import cases, paper
from resflax.experiment.cases import Case, Figure, paper_ref

DEPTHS = (20, 32, 44, 56, 110, 1202)
PLAIN_DEPTHS = (20, 32, 44, 56)  # Fig. 6 left; plain-110 (>60%) is not plotted
# He et al. Fig. 7: the response std of these networks' 3x3 layers.
FIG7 = ("plain20", "plain56", "resnet20", "resnet56", "resnet110")


# He et al. 2016 (CVPR) sec. 4.2: "we use 0.01 to warm up the training
# until the training error is below 80% (about 400 iterations), and then go
# back to 0.1" for the 110- and 1202-layer nets.
WARMUP = {"train.warmup_until_error": 0.8, "train.warmup_steps": 0}
EFFECTIVE_MODULES = int(
    paper.lookup("veit", "effective_training_sampled_modules")
)


def _net(depth, plain=False):
  overrides = {"model.depth": depth}
  if plain:
    overrides["model.shortcut"] = "none"
  if depth >= 110:
    overrides.update(WARMUP)
  return overrides


CASES = {
    **{
        f"resnet{d}": Case(
            _net(d),
            paper_ref("cvpr_table6", f"resnet{d}"),
            "paper: best of 5 runs" if d == 110 else "",
        )
        for d in DEPTHS
    },
    **{
        f"plain{d}": Case(
            _net(d, plain=True), {}, "Fig. 6 only (no number in the paper)"
        )
        for d in PLAIN_DEPTHS
    },
    "resnet110_effective": Case(
        {**_net(110), "train.gradient_modules": EFFECTIVE_MODULES},
        paper_ref("veit", "effective_training_error"),
        f"Veit et al. sec. 5: gradients through {EFFECTIVE_MODULES} of 54 "
        "modules per mini-batch; the full model there: "
        f"{paper.lookup('veit', 'full_model_error')}%",
    ),
}
GROUPS = {
    "table6": tuple(f"resnet{d}" for d in DEPTHS),
    "plain": tuple(f"plain{d}" for d in PLAIN_DEPTHS),
    # Fig. 6's three panels: the whole table of the paper.
    "fig6": tuple(f"plain{d}" for d in PLAIN_DEPTHS)
    + tuple(f"resnet{d}" for d in DEPTHS),
    "fig7": FIG7,
    "effective_paths": ("resnet110", "resnet110_effective"),
}
FIGURES = {
    # One figure of three panels, as in the paper.
    "fig6": Figure(
        "He et al. 2016 Fig. 6: CIFAR-10 training (thin) and test (bold) error",
        {
            "plain-20/32/44/56": tuple(f"plain{d}" for d in PLAIN_DEPTHS),
            "ResNet-20/32/44/56/110": tuple(
                f"resnet{d}" for d in PLAIN_DEPTHS + (110,)
            ),
            "ResNet-110 and ResNet-1202": ("resnet110", "resnet1202"),
        },
    ),
    "fig7": Figure(
        "He et al. 2016 Fig. 7: std of layer responses on CIFAR-10",
        {"plain-20/56 and ResNet-20/56/110": FIG7},
        kind="response_std",
    ),
}


def _base():
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.bn_group_size = 64
  return config


def shrink(config):
  """One network, small enough for seconds on a CPU (the ``smoke`` run):
  the smallest of the family (one unit per stage, narrow stages)."""
  config.model.update(models.shrink(config.model))
  config.data.name = "synthetic"
  config.data.synthetic_train_size = 256
  config.data.synthetic_test_size = 128
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  config.train.steps = 20
  config.train.scale_schedule = True
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.checkpoint_every = 10
  config.train.fast_compile = True
  return config


def _single(name):
  """A depth alone ("110"): that ResNet, trained once; "" (``smoke``
  alone): ResNet-20, which ``smoke`` shrinks to ResNet-8."""
  if name and not name.isdigit():
    return None
  config = _base()
  config.model.depth = int(name or 20)
  if config.model.depth >= 110:
    config.update_from_flattened_dict(WARMUP)
  return config


SINGLE = cases.SingleRun(
    _single, shrink, "a depth alone", tuple(str(d) for d in DEPTHS)
)


def get_config(arg=None):
  """``arg``: the names of the module docstring, comma-separated; none:
  the whole table."""
  return cases.experiment(
      __file__,
      _base(),
      CASES,
      arg,
      groups=GROUPS,
      figures=FIGURES,
      table=GROUPS["table6"] + GROUPS["plain"],
      single=SINGLE,
      title="He et al. 2016 (CVPR) Table 6, Fig. 6 and 7: CIFAR-10 ResNets "
      "and plain nets",
  )
