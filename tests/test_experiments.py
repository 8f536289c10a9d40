"""Experiment files: every case and ``smoke`` give a valid config."""

import glob
import importlib.util
import os
import re

import pytest
from helpers import REPO

from resflax import models, training
from resflax.config import base_config
from resflax.experiment import cases

# The experiment files of the papers' tables (sweeps).
NAMES = [
    "cifar_resnet.py",
    "cifar_shortcuts.py",
    "cifar_activations.py",
    "cifar_preact.py",
    "imagenet_resnet.py",
    "stochastic_depth.py",
    "wide_resnet.py",
]
FILES = [os.path.join(REPO, "experiments", n) for n in NAMES]


def load(path):
  spec = importlib.util.spec_from_file_location(
      "experiment_" + os.path.basename(path)[:-3], path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_sweep_file_is_covered():
  sweeps = [
      os.path.basename(f)
      for f in glob.glob(os.path.join(REPO, "experiments", "*.py"))
      if hasattr(load(f), "CASES")
  ]
  assert sorted(sweeps) == sorted(NAMES)


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_smoke_is_the_table_shrunk(path):
  module = load(path)
  # cifar_resnet.py's "smoke" alone is its older tiny single run (the
  # training tests and README use it); "table6,plain,smoke" is its table
  # shrunk.
  arg = "table6,plain,smoke" if path.endswith("cifar_resnet.py") else "smoke"
  config = module.get_config(arg)
  assert cases.case_names(config) == cases.case_names(module.get_config())
  # One seed covers every case; the pipeline, not the spread, is checked.
  assert config.seeds == cases.SMOKE_SEEDS == 1


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_every_case_is_valid(path):
  module = load(path)
  name = os.path.basename(path)
  assert f"--config experiments/{name}" in module.__doc__
  config = module.get_config()
  names = cases.case_names(config)
  assert names and config.seeds >= 1
  for case in module.CASES:
    one = module.get_config(case)
    assert cases.case_names(one) == [case]
    run = cases.case_config(one, case, seed=config.seed)
    # Every preset runs unchanged on 1, 2, 4 and 8 devices (a Colab TPU):
    # BN groups span devices and evaluation pads its last batch.
    for devices in (1, 2, 4, 8):
      training.validate_config(run, devices)
    ref = one.sweep_paper[case].to_dict()
    assert not ref or cases.paper_value(ref) is not None


def smallest_depth(model):
  """One unit per stage (ImageNet: the smallest net of the same block)."""
  if model.name == "imagenet_resnet":
    return 50 if model.depth >= 50 else 18
  if model.name == "wide_resnet":
    return 10  # 6n+4
  # An empty model.block is the network's default (basic for CIFAR nets).
  block = model.block or "basic"
  return {"basic": 8, "bottleneck": 11, "single": 5}[block]


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_smoke_shrinks_every_case(path):
  module = load(path)
  config = module.get_config("all,smoke")
  assert cases.case_names(config) == list(module.CASES)
  for case in cases.case_names(config):
    run = cases.case_config(config, case, seed=0)
    assert run.data.name == "synthetic" and run.train.steps <= 10
    training.validate_config(run)  # on this suite's 4 CPU devices
    full = cases.case_config(module.get_config(case), case, seed=0)
    # Structure kept: block, shortcut, unit and projection of the full case.
    for key in (
        "name",
        "block",
        "shortcut",
        "unit",
        "projection",
        "gate_bias_init",
        "stochastic_depth",
        "dropout",
    ):
      assert run.model[key] == full.model[key], (case, key)
    assert run.model.depth == smallest_depth(full.model)
    assert run.data.num_classes == {"cifar100": 100, "imagenet2012": 1000}.get(
        full.data.name, 10
    )
    models.create_model(training.model_config(run, 1))


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_bad_arg_lists_the_cases(path):
  module = load(path)
  with pytest.raises(ValueError) as e:
    module.get_config("no_such_case")
  for case in module.CASES:
    assert case in str(e.value)
  assert "smoke" in str(e.value)


def test_groups_and_options():
  shortcuts = load(os.path.join(REPO, "experiments", "cifar_shortcuts.py"))
  assert cases.case_names(shortcuts.get_config("exclusive_gate")) == [
      "exclusive_gate_b0",
      "exclusive_gate_b-6",
      "exclusive_gate_b-7",
  ]
  search = cases.case_names(shortcuts.get_config("exclusive_gate_search"))
  assert search == [f"exclusive_gate_b{b}" for b in range(0, -11, -1)]
  # The default is the paper's table, not the search.
  assert "exclusive_gate_b-3" not in cases.case_names(shortcuts.get_config())
  two = shortcuts.get_config("conv1x1,original,smoke")
  assert cases.case_names(two) == ["conv1x1", "original"]


def test_imagenet_recipe():
  imagenet = load(os.path.join(REPO, "experiments", "imagenet_resnet.py"))
  config = imagenet.get_config()
  per_epoch = 1_281_167 // 256
  assert config.data.name == "imagenet2012"
  assert config.train.batch_size == 256 and config.train.learning_rate == 0.1
  assert tuple(config.train.lr_boundaries) == (30 * per_epoch, 60 * per_epoch)
  assert config.train.warmup_steps == 0


def test_cifar_resnet_keeps_its_single_runs():
  cifar = load(os.path.join(REPO, "experiments", "cifar_resnet.py"))
  one = cifar.get_config("110")
  assert "sweep_cases" not in one and one.model.depth == 110
  assert one.seeds == 1
  # He et al. 2016 (CVPR): warm up until the training error is below 80%.
  assert one.train.warmup_until_error == 0.8 and one.train.warmup_steps == 0
  assert "sweep_cases" not in cifar.get_config("smoke")
  # A depth with smoke is that command shrunk: still one run.
  shrunk = cifar.get_config("110,smoke")
  assert "sweep_cases" not in shrunk and shrunk.data.name == "synthetic"
  assert shrunk.train.steps == cifar.get_config("smoke").train.steps
  table = cifar.get_config()
  assert cases.case_names(table) == (
      list(cifar.GROUPS["table6"]) + list(cifar.GROUPS["plain"])
  )


def test_cifar_resnet_names_a_run_or_a_case():
  """A depth alone is one run; resnet110 and resnet-110 are the case."""
  cifar = load(os.path.join(REPO, "experiments", "cifar_resnet.py"))
  for name in ("resnet110", "resnet-110", "ResNet-110"):
    config = cifar.get_config(name)
    assert cases.case_names(config) == ["resnet110"], name
    assert config.seeds == 5
    run = cases.case_config(config, "resnet110", seed=0)
    assert run.model.depth == 110 and run.train.warmup_until_error == 0.8
  plain = cifar.get_config("plain-56")
  assert cases.case_names(plain) == ["plain56"]
  assert cases.case_config(plain, "plain56", seed=0).model.shortcut == "none"
  assert cases.case_names(cifar.get_config("resnet-110-effective")) == [
      "resnet110_effective"
  ]
  with pytest.raises(ValueError, match="'110' trains one network once"):
    cifar.get_config("110,resnet56")


def _hyphenated(name):
  """``resnet110_sd`` -> ``resnet-110_sd``: the other accepted spelling."""
  return re.sub(r"(?<=[a-z]{2})(?=\d)", "-", name, count=1)


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_every_name_takes_both_spellings(path):
  module = load(path)
  groups = getattr(module, "GROUPS", {})
  for name in list(module.CASES) + list(groups):
    assert cases.canonical_name(name) == name  # declared as models spell
    expected = cases.case_names(module.get_config(name))
    for other in (_hyphenated(name), name.upper()):
      assert cases.case_names(module.get_config(other)) == expected, other
  assert any(_hyphenated(n) != n for n in list(module.CASES) + list(groups))


def test_canonical_names():
  assert cases.canonical_name(" ResNet-110 ") == "resnet110"
  assert cases.canonical_name("resnet-110-effective") == "resnet110_effective"
  assert cases.canonical_name("WRN-28-10") == "wrn28_10"
  # A minus sign is not a hyphen: b_g = -6 stays -6.
  assert cases.canonical_name("exclusive_gate_b-6") == "exclusive_gate_b-6"
  with pytest.raises(ValueError, match="spelt other than 'resnet110'"):
    cases.experiment(
        "f.py", base_config(), {"ResNet-110": cases.Case()}, None, title="t"
    )


@pytest.mark.parametrize(
    "arg,suggested",
    [
        ("resnt-20", "resnet20"),  # a sweep case
        ("11o", "110"),  # a single run's name
        ("fig", "fig6"),  # a group
    ],
)
def test_did_you_mean_covers_every_kind_of_name(arg, suggested):
  cifar = load(os.path.join(REPO, "experiments", "cifar_resnet.py"))
  with pytest.raises(ValueError) as e:
    cifar.get_config(arg)
  message = str(e.value)
  hint = re.search(r"\(did you mean ([^?]+)\?\)", message)
  assert hint and suggested in hint.group(1).split(", "), message
  assert "\n" not in message
  assert "a depth alone (20, 32, 44, 56, 110, 1202)" in message
  assert "resnet110_effective" in message and "fig6" in message


def test_lesion_depth_takes_every_spelling():
  lesion = load(os.path.join(REPO, "experiments", "cifar_lesion.py"))
  for arg in ("56", "resnet56", "ResNet-56", "resnet-56,smoke"):
    assert lesion.get_config(arg).model.depth == 56, arg
  assert lesion.get_config().model.depth == 110
  with pytest.raises(
      ValueError, match=r"unknown arg 'resnt56' \(did you " r"mean resnet56"
  ):
    lesion.get_config("resnt56")
