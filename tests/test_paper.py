"""Tests for resflax.experiment.paper against the papers' numbers.

The numbers are copied here, as printed, from shared/reference/papers.md
(the project's transcription of the papers), so the tests run in a bare
clone. The rows are turned into resflax's case names independently of the
module, so a transcription slip in resflax/experiment/paper.py shows up as a
mismatch, and `test_every_entry_is_checked` makes sure no number of the
module goes unchecked.
"""

import re

import pytest

from resflax.experiment import paper

V, V2, U = "[V]", "[V2]", "[U]"

# ---------------------------------------------------------------------------
# papers.md A1: He et al. 2016 (CVPR), Table 6. [V]
# | net | n | layers | params | error % |
CVPR_TABLE6 = [
    ("ResNet-20", "3", "20", "0.27M", "8.75"),
    ("ResNet-32", "5", "32", "0.46M", "7.51"),
    ("ResNet-44", "7", "44", "0.66M", "7.17"),
    ("ResNet-56", "9", "56", "0.85M", "6.97"),
    ("ResNet-110", "18", "110", "1.7M", "**6.43** (6.61±0.16)"),
    ("ResNet-1202", "200", "1202", "19.4M", "7.93"),
]
CVPR_TABLE6_OTHERS = (
    "Maxout 9.38, NIN 8.81, DSN 8.22, FitNet-19 (2.5M) 8.39, "
    "Highway-19 (2.3M) 7.54 (7.72±0.16), "
    "Highway-32 (1.25M) 8.80"
)

# papers.md A2: He et al. 2016 (ECCV), Table 1. [V]
# | case | on shortcut | on F | error % | remark |
IDENTITY_TABLE1 = [
    ("original", "1", "1", "**6.61**", ""),
    ("constant scaling", "0", "1", "fail", "this is a plain net"),
    ("constant scaling", "0.5", "1", "fail", "F not scaled"),
    (
        "constant scaling",
        "0.5",
        "0.5",
        "12.35",
        'F scaled by 1−λ, i.e. "frozen gating"',
    ),
    ("exclusive gating", "1−g(x)", "g(x)", "fail", "init b_g = 0 to −5"),
    ("exclusive gating", "1−g(x)", "g(x)", "8.70", "init b_g = −6"),
    ("exclusive gating", "1−g(x)", "g(x)", "9.81", "init b_g = −7"),
    ("shortcut-only gating", "1−g(x)", "1", "12.86", "init b_g = 0"),
    ("shortcut-only gating", "1−g(x)", "1", "6.91", "init b_g = −6"),
    ("1×1 conv shortcut (every unit)", "1×1 conv", "1", "12.22", ""),
    ("dropout shortcut", "dropout 0.5 on the shortcut output", "1", "fail", ""),
]

# Table 2. [V]  | case (Fig. 4) | ResNet-110 | ResNet-164 |
IDENTITY_TABLE2 = [
    ("(a) original", "6.61", "5.93"),
    ("(b) BN after addition", "8.17", "6.50"),
    ("(c) ReLU before addition", "7.84", "6.14"),
    ("(d) ReLU-only pre-activation", "6.71", "5.91"),
    ("(e) full pre-activation", "**6.37**", "**5.46**"),
]

# Table 3. [V]  | dataset | net | original unit | pre-act unit |
IDENTITY_TABLE3 = [
    ("C10", "ResNet-110 with 1-layer skip", "9.90", "8.91"),
    ("C10", "ResNet-110", "6.61", "6.37"),
    ("C10", "ResNet-164", "5.93", "5.46"),
    ("C10", "ResNet-1001", "7.61", "4.92"),
    ("C100", "ResNet-164", "25.16", "24.33"),
    ("C100", "ResNet-1001", "27.82", "22.71"),
]

# Table 4, median of 5 runs (mean±std). [V]
IDENTITY_TABLE4 = {
    "cifar10": "ResNet-110 (1.7M) 6.61; ResNet-1202 (19.4M) 7.93; pre-act "
    "ResNet-164 (1.7M) 5.46; pre-act ResNet-1001 (10.2M) 4.92 "
    "(4.89±0.14); the same at mini-batch 64: **4.62** (4.69±0.20)",
    "cifar100": "ResNet-164 [1] 25.16; ResNet-1001 [1] 27.82; pre-act "
    "ResNet-164 24.33; pre-act ResNet-1001 **22.71** (22.68±0.22)",
}
IDENTITY_TABLE4_OTHERS = (
    "NIN 8.81/35.68, DSN 8.22/34.57, FitNet 8.39/35.04, "
    "Highway 7.72/32.39, All-CNN 7.25/33.71, "
    "ELU 6.55/24.28, FitResNet-LSUV 5.84/27.66"
)

# Table 5, ImageNet single crop. [V]  | model | top-1 | top-5 |
IDENTITY_TABLE5 = [
    ("ResNet-152 original, 224 test crop", "23.0", "6.7"),
    ("ResNet-152 original", "21.3", "5.5"),
    ("ResNet-152 pre-act", "21.1", "5.5"),
    ("ResNet-200 original", "21.8", "6.0"),
    ("ResNet-200 pre-act", "**20.7**", "**5.3**"),
    (
        "ResNet-200 pre-act, scale + aspect-ratio augmentation "
        "(fb.resnet.torch)",
        "20.1",
        "4.8",
    ),
    ("Inception v3", "21.2", "5.6"),
]
# "A BN-after-addition ResNet-101 reached 24.6/7.5 top-1/top-5, against
# 23.6/7.1 for the original (224 crop)." [V]
IDENTITY_RESNET101 = {
    "bn_after_addition_224crop": ("24.6", "7.5"),
    "original_224crop": ("23.6", "7.1"),
}

# papers.md A3, Veit et al.: the abstract [V], quoting notes [V2].
VEIT = {
    # "a 110-layer ResNet with **54 residual modules**"
    "num_modules": ("54", V2),
    "effective_path_min_modules": ("5", V2),  # "**5 and 17 modules**"
    "effective_path_max_modules": ("17", V2),
    # "only **0.45%** of all paths"
    "effective_path_fraction_pct": ("0.45", V2),
    "effective_path_min_layers": ("10", V),  # abstract: "10–34 layers deep"
    "effective_path_max_layers": ("34", V),
    # "more than 95% of paths pass through 19 to 35 modules"
    "path_length_95pct_min_modules": ("19", V2),
    "path_length_95pct_max_modules": ("35", V2),
    "path_length_bulk_pct": ("95", V2),
    "effective_training_sampled_modules": ("23", V2),  # "**23 of 54 modules**"
    "effective_training_error": ("5.96", V2),  # "**5.96%** error"
    "full_model_error": ("6.10", V2),  # "against **6.10%**"
    "delete_10_modules_error": ("0.2", V2),  # "error remains around 0.2"
    "delete_severe_modules": ("20", V2),  # "for the removal of 20 modules"
    "gradient_samples_per_k": ("1000", V2),  # "1,000 samples per k"
}

# papers.md A4, related anchors.
STOCHASTIC_DEPTH = {
    "resnet110_sd": ("5.25", V),  # "p_L = 0.5: **5.25%**"
    "resnet110_constant": ("6.41", V),  # "baseline in the same code: **6.41%**"
    "svhn_sd": ("1.75", V),
    "cifar100_constant": ("27.22", U),  # "CIFAR-100 27.22 → 24.98" [U]
    "cifar100_sd": ("24.98", U),
    "resnet1202_constant": ("6.67", U),  # "ResNet-1202 ... 6.67 → 4.91" [U]
    "resnet1202_sd": ("4.91", U),
}
WRN = {  # "name: C10 / C100" [V]
    "preact_resnet164": ("5.46", "24.33"),
    "preact_resnet1001": ("4.92", "22.71"),
    "wrn28_10": ("4.00", "19.25"),
    "wrn28_10_dropout": ("3.89", "18.85"),
}
# "ResNet-110 (1.73M params ...) final test accuracy 93.75%. Highway-110
# (2.65M params ...) final 93.96%." [V]; errors are 100 - accuracy.
HIGHWAY_RETEST = {
    "resnet110": ("93.75", "1.73M"),
    "highway110": ("93.96", "2.65M"),
}

# A1 recipe [V]: "SGD, weight decay 1e-4, momentum 0.9"; "Mini-batch 128";
# "Learning rate 0.1, divided by 10 at 32k and 48k iterations, stop at 64k";
# "pad 4 pixels"; ResNet-110: "warm up at lr 0.01 ... (about 400 iterations)".
CVPR_RECIPE = {
    "learning_rate": (0.1, V),
    "lr_decay_factor": (0.1, V),
    "lr_boundary_1": (32000, V),
    "lr_boundary_2": (48000, V),
    "total_iterations": (64000, V),
    "batch_size": (128, V),
    "momentum": (0.9, V),
    "weight_decay": (1e-4, V),
    "pad": (4, V),
    "warmup_learning_rate": (0.01, V),
    "warmup_iterations": (400, V),
}
# A2 appendix [V]: "lr 0.1, divided by 10 at 32k and 48k"; "Warm-up at lr
# 0.01 for the first 400 iterations"; "Batch 128 on 2 GPUs, **64 per GPU**";
# "Weight decay 1e-4, momentum 0.9"; ImageNet "divided by 10 at epochs 30 and
# 60. Batch 256"; "does not restate the 64k stopping point" [U].
IDENTITY_RECIPE = {
    "learning_rate": (0.1, V),
    "lr_boundary_1": (32000, V),
    "lr_boundary_2": (48000, V),
    "total_iterations": (64000, U),
    "warmup_learning_rate": (0.01, V),
    "warmup_iterations": (400, V),
    "batch_size": (128, V),
    "batch_size_per_gpu": (64, V),
    "weight_decay": (1e-4, V),
    "momentum": (0.9, V),
    "imagenet_batch_size": (256, V),
    "imagenet_lr_boundary_1_epoch": (30, V),
    "imagenet_lr_boundary_2_epoch": (60, V),
}


# ---------------------------------------------------------------------------
# Rows -> expected entries: (table, case, selectors) -> (value, source).


def _num(cell):
  """'**6.43** (6.61±0.16)' -> '6.43'; 'fail' -> 'fail'."""
  return cell.replace("*", "").strip().split()[0]


def _value(text):
  return "fail" if text == "fail" else float(str(text).rstrip("M"))


def _minus(s):
  return s.replace("\u2212", "-")


def _net(name):
  """'ResNet-110' -> 'resnet110', 'FitNet-19' -> 'fitnet19'."""
  return name.lower().replace("-", "")


def _table1_keys(case, shortcut, residual, remark):
  """Derives resflax's case names from a Table 1 row."""
  case, shortcut, residual, remark = map(
      _minus, (case, shortcut, residual, remark)
  )
  if case == "original":
    return ["original"]
  if case == "constant scaling":
    key = f"scale_{shortcut}"
    return [key if residual == "1" else f"{key}_residual_{residual}"]
  if case in ("exclusive gating", "shortcut-only gating"):
    prefix = (
        "exclusive_gate" if case.startswith("exclusive") else "shortcut_gate"
    )
    lo, hi = re.search(r"b_g = (-?\d+)(?: to (-?\d+))?", remark).groups()
    hi = lo if hi is None else hi
    return [f"{prefix}_b{b}" for b in range(int(lo), int(hi) - 1, -1)]
  if case.startswith("1×1 conv"):
    return ["conv1x1"]
  if case.startswith("dropout"):
    return ["dropout"]
  raise AssertionError(f"unexpected Table 1 row {case!r}")


def _table4_case(fragment):
  pre = "preact_" if fragment.startswith("pre-act") else ""
  if fragment.startswith("the same at mini-batch 64"):
    return "preact_resnet1001_batch64"
  return pre + _net(re.search(r"ResNet-\d+", fragment).group())


_TABLE5_CASES = {
    "ResNet-152 original, 224 test crop": "resnet152_original_224crop",
    "ResNet-152 original": "resnet152_original",
    "ResNet-152 pre-act": "resnet152_preact",
    "ResNet-200 original": "resnet200_original",
    "ResNet-200 pre-act": "resnet200_preact",
    (
        "ResNet-200 pre-act, scale + aspect-ratio augmentation "
        "(fb.resnet.torch)"
    ): "resnet200_preact_scale_aspect",
    "Inception v3": "inception_v3",
}
_OTHER_NAMES = {"All-CNN": "all_cnn", "FitResNet-LSUV": "fitresnet_lsuv"}


def _put_table4(put):
  """Identity Mappings Table 4's entries, from its printed lines."""
  for dataset, line in IDENTITY_TABLE4.items():
    for fragment in line.split("; "):
      case = _table4_case(fragment)
      m = re.search(
          r"(?:\(([\d.]+M)\) )?\**([\d.]+)\**" r"(?: \(([\d.]+)±([\d.]+)\))?$",
          fragment,
      )
      params, error, mean, std = m.groups()
      put("identity_table4", case, error, dataset=dataset, field="error")
      if params:
        put("identity_table4", case, params, dataset=dataset, field="params")
      if mean:
        put("identity_table4", case, mean, dataset=dataset, field="error_mean")
        put("identity_table4", case, std, dataset=dataset, field="error_std")
  for name, c10, c100 in re.findall(
      r"([\w-]+) ([\d.]+)/([\d.]+)", IDENTITY_TABLE4_OTHERS
  ):
    case = _OTHER_NAMES.get(name, name.lower())
    put("identity_table4", case, c10, dataset="cifar10", field="error")
    put("identity_table4", case, c100, dataset="cifar100", field="error")


def _expected():
  out = {}

  def put(table, case, value, source=V, **sel):
    key = (table, case, tuple(sorted(sel.items())))
    assert key not in out, key  # a row derived twice is a slip in this file
    out[key] = (_value(value), source)

  for net, n, layers, params, error in CVPR_TABLE6:
    case = _net(net)
    put("cvpr_table6", case, _num(error), field="error")
    put("cvpr_table6", case, n, field="n")
    put("cvpr_table6", case, layers, field="layers")
    put("cvpr_table6", case, params, field="params")
    spread = re.search(r"\(([\d.]+)±([\d.]+)\)", error)
    if spread:
      put("cvpr_table6", case, spread.group(1), field="error_mean")
      put("cvpr_table6", case, spread.group(2), field="error_std")
  for m in re.finditer(
      r"([\w-]+) (?:\(([\d.]+M)\) )?([\d.]+)" r"(?: \(([\d.]+)±([\d.]+)\))?",
      CVPR_TABLE6_OTHERS,
  ):
    case = _net(m.group(1))
    put("cvpr_table6", case, m.group(3), field="error")
    if m.group(2):
      put("cvpr_table6", case, m.group(2), field="params")
    if m.group(4):
      put("cvpr_table6", case, m.group(4), field="error_mean")
      put("cvpr_table6", case, m.group(5), field="error_std")

  for case, shortcut, residual, error, remark in IDENTITY_TABLE1:
    for key in _table1_keys(case, shortcut, residual, remark):
      put("identity_table1", key, _num(error))
  for label, e110, e164 in IDENTITY_TABLE2:
    letter = re.match(r"\((\w)\)", label).group(1)
    put("identity_table2", letter, _num(e110), depth="110")
    put("identity_table2", letter, _num(e164), depth="164")
  datasets = {"C10": "cifar10", "C100": "cifar100"}
  for dataset, net, original, preact in IDENTITY_TABLE3:
    case = _net(net).replace(" with 1layer skip", "_1layer")
    for unit, cell in (("original", original), ("preact", preact)):
      put("identity_table3", case, cell, dataset=datasets[dataset], unit=unit)

  _put_table4(put)
  for model, top1, top5 in IDENTITY_TABLE5:
    put("identity_table5", _TABLE5_CASES[model], _num(top1), metric="top1")
    put("identity_table5", _TABLE5_CASES[model], _num(top5), metric="top5")
  for case, (top1, top5) in IDENTITY_RESNET101.items():
    put("identity_resnet101_imagenet", case, top1, metric="top1")
    put("identity_resnet101_imagenet", case, top5, metric="top5")

  for table, rows in (
      ("veit", VEIT),
      ("stochastic_depth", STOCHASTIC_DEPTH),
      ("cvpr_recipe", CVPR_RECIPE),
      ("identity_recipe", IDENTITY_RECIPE),
  ):
    for case, (value, source) in rows.items():
      put(table, case, value, source)
  for case, (c10, c100) in WRN.items():
    put("wrn", case, c10, dataset="cifar10")
    put("wrn", case, c100, dataset="cifar100")
  for case, (accuracy, params) in HIGHWAY_RETEST.items():
    put("highway_retest", case, accuracy, field="accuracy")
    put("highway_retest", case, params, field="params")
    put("highway_retest", case, f"{100 - float(accuracy):.2f}", field="error")
  return out


EXPECTED = _expected()


def _check(table):
  rows = [(k, v) for k, v in EXPECTED.items() if k[0] == table]
  assert rows, table
  for (_, case, sel), (value, source) in rows:
    got = paper.lookup(table, case, **dict(sel))
    assert got == value, (table, case, sel, got, value)
    assert paper.source(table, case, **dict(sel)) == source, (table, case, sel)
  return rows


# ---------------------------------------------------------------------------


def test_cvpr_table6():
  rows = _check("cvpr_table6")
  assert len({case for (_, case, _), _ in rows}) == 12  # 6 ResNets, 6 others
  assert paper.lookup("cvpr_table6", "resnet110", field="error_mean") == 6.61
  assert paper.lookup("cvpr_table6", "highway19", field="error_mean") == 7.72


def test_identity_table1():
  rows = _check("identity_table1")
  assert {case for (_, case, _), _ in rows} == set(
      paper.cases("identity_table1")
  )
  assert len(rows) == 16  # b0..b-5 are six separate failing cases


def test_identity_table2():
  assert len(_check("identity_table2")) == 10
  assert paper.lookup("identity_table2", "full_preact", depth="164") == 5.46


def test_identity_tables_3_to_5():
  assert len(_check("identity_table3")) == 12
  assert len(_check("identity_table4")) == 33
  assert len(_check("identity_table5")) == 14
  assert len(_check("identity_resnet101_imagenet")) == 4
  assert (
      paper.lookup(
          "identity_table3", "resnet1001", dataset="C100", unit="pre-act"
      )
      == 22.71
  )
  assert (
      paper.lookup(
          "identity_table4",
          "preact_resnet1001",
          dataset="c10",
          field="error_std",
      )
      == 0.14
  )
  assert (
      paper.lookup("identity_table4", "resnet110", dataset="cifar100") is None
  )
  assert (
      paper.lookup("identity_table5", "resnet200_preact", metric="top-5") == 5.3
  )


def test_veit_and_anchors():
  _check("veit")
  _check("stochastic_depth")
  assert len(_check("wrn")) == 8
  assert len(_check("highway_retest")) == 6
  assert paper.lookup("veit", "num_modules") == 54
  assert paper.lookup("wrn", "wrn28_10", dataset="cifar100") == 19.25


def test_recipes():
  _check("cvpr_recipe")
  _check("identity_recipe")
  assert paper.lookup("cvpr_recipe", "total_iterations") == 64000


def test_every_entry_is_checked():
  # Every number resflax carries is one this file copied from papers.md, and
  # every number copied here is in resflax.
  held = set()
  for name, table in paper.TABLES.items():
    for case, cells in table.rows.items():
      for key in cells:
        held.add((name, case, tuple(sorted(zip(table.columns, key)))))
  assert held - set(EXPECTED) == set(), "resflax numbers not in papers.md"
  assert set(EXPECTED) - held == set(), "papers.md numbers not in resflax"


def test_every_entry_has_a_source_tag():
  for name, table in paper.TABLES.items():
    assert table.rows, name
    for case, cells in table.rows.items():
      for key, entry in cells.items():
        assert entry.source in ("[V]", "[V2]", "[U]"), (name, case, key)
        assert isinstance(entry.value, float) or entry.value == "fail"
        assert len(key) == len(table.columns), (name, case, key)
        for col, v in zip(table.columns, key):
          assert v in table.columns[col], (name, case, key)


def test_lookup_api():
  assert paper.lookup("cvpr_table6", "ResNet-110") == 6.43
  assert paper.lookup("identity_table1", "exclusive_gate_b-3") == "fail"
  assert paper.lookup("identity_table1", "shortcut_gate_b-6") == 6.91
  assert paper.lookup("identity_table2", "e", depth=110) == 6.37
  assert paper.lookup("identity_table1", "not_in_the_paper") is None
  with pytest.raises(KeyError):
    paper.lookup("no_such_table", "x")
  with pytest.raises(TypeError):
    paper.lookup("identity_table2", "e")  # depth is required
  with pytest.raises(TypeError):
    paper.lookup("identity_table1", "original", depth=110)
  with pytest.raises(ValueError):
    paper.lookup("identity_table2", "e", depth=56)


def test_format_paper_value():
  assert paper.format_paper_value(8.7) == "8.70"
  assert paper.format_paper_value(23.0, decimals=1) == "23.0"
  assert paper.format_paper_value("fail") == "fail"
  assert paper.format_paper_value(None) == "—"
  assert paper.format_paper_value(64000.0) == "64000"
  entry = paper.lookup_entry("veit", "full_model_error")
  assert paper.format_paper_value(entry) == "6.10"
  assert paper.format_paper_value(entry, with_source=True) == "6.10 [V2]"
  assert (
      paper.format_paper_value(
          paper.lookup_entry("cvpr_table6", "resnet20", field="params")
      )
      == "0.27M"
  )
