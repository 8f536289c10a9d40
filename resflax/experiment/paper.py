"""Reference numbers from the papers resflax reproduces, as data, in one place.

Transcribed from `shared/reference/papers.md`. Each entry keeps the number as
printed (`PaperValue.text`, e.g. '6.10' or '0.27M'), its parsed value (a float,
or the string 'fail' for Identity Mappings Table 1's "test error above 20%")
and the source tag of papers.md:

  [V]  read in the paper or the authors' repository,
  [V2] from notes that quote the paper,
  [U]  unverified.

Errors are test error in percent, parameter counts in millions, unless a
table's `units` says otherwise. Look numbers up with `lookup`; see `tables()`,
`cases(table)` and `TABLES[table].columns` for the names. Example::

  lookup('cvpr_table6', 'resnet110')                     # 6.43 (best of 5)
  lookup('cvpr_table6', 'resnet110', field='error_mean') # 6.61
  lookup('identity_table1', 'exclusive_gate_b-6')        # 8.7
  lookup('identity_table1', 'scale_0')                   # 'fail'
  lookup('identity_table2', 'e', depth=164)              # 5.46
  lookup('identity_table3', 'resnet1001', dataset='cifar100', unit='preact')
  lookup('identity_table5', 'resnet200_preact', metric='top5')  # 5.3
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

V = "[V]"
V2 = "[V2]"
U = "[U]"
FAIL = "fail"
# What each source tag means, for tables that show the tags.
SOURCE_TAGS = {
    V: "read in the paper or the authors' repository",
    V2: "from notes that quote the paper",
    U: "unverified",
}


@dataclasses.dataclass(frozen=True)
class PaperValue:
  """One number from a paper.

  Attributes:
    text: The value as printed, e.g. '6.10', '0.27M', 'fail'.
    source: '[V]', '[V2]' or '[U]' (see module docstring).
    note: Anything needed to interpret the value.
  """

  text: str
  source: str
  note: str = ""

  @property
  def value(self) -> float | str:
    """The parsed value: a float, or 'fail' (error > 20%)."""
    if self.text == FAIL:
      return FAIL
    return float(self.text.rstrip("M"))


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of reference values.

  Attributes:
    name: Key in `TABLES`.
    title: Paper and table, for citing in results.
    columns: Selector keyword names `lookup` takes for this table, each with
      its allowed values (as strings).
    defaults: Selector values used when `lookup` omits them.
    rows: case -> {tuple of selector values in `columns` order: PaperValue}.
    aliases: Alternative case names -> canonical case name.
    units: What the numbers mean.
  """

  name: str
  title: str
  columns: Mapping[str, tuple[str, ...]]
  defaults: Mapping[str, str]
  rows: Mapping[str, Mapping[tuple[str, ...], PaperValue]]
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  units: str = "test error %"


def _single(entries: Mapping[str, tuple[str, str] | tuple[str, str, str]]):
  """Rows without selectors: case -> (text, source[, note])."""
  return {case: {(): PaperValue(*spec)} for case, spec in entries.items()}


def _fields(
    entries: Mapping[str, Mapping[str, str]], source: str, notes=None
) -> dict[str, dict[tuple[str, ...], PaperValue]]:
  """Rows with one selector: case -> {selector value: text}."""
  notes = notes or {}
  return {
      case: {
          (col,): PaperValue(text, source, notes.get((case, col), ""))
          for col, text in cols.items()
      }
      for case, cols in entries.items()
  }


# --- He et al. 2016 (CVPR), Table 6: CIFAR-10 -----------------------------

_CVPR_T6 = {
    "resnet20": {"n": "3", "layers": "20", "params": "0.27M", "error": "8.75"},
    "resnet32": {"n": "5", "layers": "32", "params": "0.46M", "error": "7.51"},
    "resnet44": {"n": "7", "layers": "44", "params": "0.66M", "error": "7.17"},
    "resnet56": {"n": "9", "layers": "56", "params": "0.85M", "error": "6.97"},
    "resnet110": {
        "n": "18",
        "layers": "110",
        "params": "1.7M",
        "error": "6.43",
        "error_mean": "6.61",
        "error_std": "0.16",
    },
    "resnet1202": {
        "n": "200",
        "layers": "1202",
        "params": "19.4M",
        "error": "7.93",
    },
    "maxout": {"error": "9.38"},
    "nin": {"error": "8.81"},
    "dsn": {"error": "8.22"},
    "fitnet19": {"params": "2.5M", "error": "8.39"},
    "highway19": {
        "params": "2.3M",
        "error": "7.54",
        "error_mean": "7.72",
        "error_std": "0.16",
    },
    "highway32": {"params": "1.25M", "error": "8.80"},
}

# --- He et al. 2016 (ECCV), Identity Mappings ------------------------------

_IDENTITY_T1 = {
    "original": ("6.61", V, "shortcut 1, F 1"),
    "scale_0": (FAIL, V, "shortcut scaled by 0 (a plain net), F 1"),
    "scale_0.5": (FAIL, V, "shortcut scaled by 0.5, F not scaled"),
    "scale_0.5_residual_0.5": (
        "12.35",
        V,
        'shortcut 0.5, F 0.5 (1-lambda): "frozen gating"',
    ),
    **{
        f"exclusive_gate_b{b}": (
            FAIL,
            V,
            "shortcut 1-g(x), F g(x); fails for init b_g = 0 to -5",
        )
        for b in (0, -1, -2, -3, -4, -5)
    },
    "exclusive_gate_b-6": ("8.70", V, "shortcut 1-g(x), F g(x), init b_g=-6"),
    "exclusive_gate_b-7": ("9.81", V, "shortcut 1-g(x), F g(x), init b_g=-7"),
    "shortcut_gate_b0": ("12.86", V, "shortcut 1-g(x), F 1, init b_g=0"),
    "shortcut_gate_b-6": ("6.91", V, "shortcut 1-g(x), F 1, init b_g=-6"),
    "conv1x1": ("12.22", V, "1x1 conv shortcut in every unit"),
    "dropout": (FAIL, V, "dropout 0.5 on the shortcut output"),
}

_IDENTITY_T2 = {
    "a": {"110": "6.61", "164": "5.93"},
    "b": {"110": "8.17", "164": "6.50"},
    "c": {"110": "7.84", "164": "6.14"},
    "d": {"110": "6.71", "164": "5.91"},
    "e": {"110": "6.37", "164": "5.46"},
}
_IDENTITY_T2_ALIASES = {
    "original": "a",
    "bn_after_addition": "b",
    "relu_before_addition": "c",
    "relu_only_preact": "d",
    "full_preact": "e",
}

_IDENTITY_T3 = {
    # (dataset, unit) -> error
    "resnet110_1layer": {
        ("cifar10", "original"): "9.90",
        ("cifar10", "preact"): "8.91",
    },
    "resnet110": {
        ("cifar10", "original"): "6.61",
        ("cifar10", "preact"): "6.37",
    },
    "resnet164": {
        ("cifar10", "original"): "5.93",
        ("cifar10", "preact"): "5.46",
        ("cifar100", "original"): "25.16",
        ("cifar100", "preact"): "24.33",
    },
    "resnet1001": {
        ("cifar10", "original"): "7.61",
        ("cifar10", "preact"): "4.92",
        ("cifar100", "original"): "27.82",
        ("cifar100", "preact"): "22.71",
    },
}

_IDENTITY_T4 = {
    # (dataset, field) -> text; 'error' is the median of 5 runs.
    "resnet110": {("cifar10", "error"): "6.61", ("cifar10", "params"): "1.7M"},
    "resnet1202": {
        ("cifar10", "error"): "7.93",
        ("cifar10", "params"): "19.4M",
    },
    "resnet164": {("cifar100", "error"): "25.16"},
    "resnet1001": {("cifar100", "error"): "27.82"},
    "preact_resnet164": {
        ("cifar10", "error"): "5.46",
        ("cifar10", "params"): "1.7M",
        ("cifar100", "error"): "24.33",
    },
    "preact_resnet1001": {
        ("cifar10", "error"): "4.92",
        ("cifar10", "error_mean"): "4.89",
        ("cifar10", "error_std"): "0.14",
        ("cifar10", "params"): "10.2M",
        ("cifar100", "error"): "22.71",
        ("cifar100", "error_mean"): "22.68",
        ("cifar100", "error_std"): "0.22",
    },
    "preact_resnet1001_batch64": {
        ("cifar10", "error"): "4.62",
        ("cifar10", "error_mean"): "4.69",
        ("cifar10", "error_std"): "0.20",
    },
    **{
        name: {("cifar10", "error"): c10, ("cifar100", "error"): c100}
        for name, c10, c100 in (
            ("nin", "8.81", "35.68"),
            ("dsn", "8.22", "34.57"),
            ("fitnet", "8.39", "35.04"),
            ("highway", "7.72", "32.39"),
            ("all_cnn", "7.25", "33.71"),
            ("elu", "6.55", "24.28"),
            ("fitresnet_lsuv", "5.84", "27.66"),
        )
    },
}

_IDENTITY_T5 = {
    # model -> (top1, top5); 320x320 test crop unless the name says 224.
    "resnet152_original_224crop": ("23.0", "6.7"),
    "resnet152_original": ("21.3", "5.5"),
    "resnet152_preact": ("21.1", "5.5"),
    "resnet200_original": ("21.8", "6.0"),
    "resnet200_preact": ("20.7", "5.3"),
    "resnet200_preact_scale_aspect": ("20.1", "4.8"),
    "inception_v3": ("21.2", "5.6"),
}

# --- Veit, Wilber & Belongie 2016 ------------------------------------------

_VEIT = {
    "num_modules": ("54", V2, "110-layer CIFAR-10 ResNet, 2^54 paths"),
    "effective_path_min_modules": (
        "5",
        V2,
        "gradient comes almost entirely from paths of 5..17 modules",
    ),
    "effective_path_max_modules": ("17", V2, "see effective_path_min_modules"),
    "effective_path_fraction_pct": (
        "0.45",
        V2,
        "effective paths as % of all paths",
    ),
    "effective_path_min_layers": ("10", V, 'abstract: "10-34 layers deep"'),
    "effective_path_max_layers": ("34", V, 'abstract: "10-34 layers deep"'),
    "path_length_95pct_min_modules": (
        "19",
        V2,
        ">95% of paths pass through 19..35 modules (n=54)",
    ),
    "path_length_95pct_max_modules": (
        "35",
        V2,
        "see path_length_95pct_min_modules",
    ),
    "path_length_bulk_pct": (
        "95",
        V2,
        "more than this % of the paths pass through "
        "path_length_95pct_min..max_modules (n=54)",
    ),
    "effective_training_sampled_modules": (
        "23",
        V2,
        "modules sampled per mini-batch when training on short paths",
    ),
    "effective_training_error": (
        "5.96",
        V2,
        "test error %, training only effective paths (23 of 54)",
    ),
    "full_model_error": ("6.10", V2, "test error %, the full model"),
    "delete_10_modules_error": (
        "0.2",
        V2,
        'error as a fraction ("error remains around 0.2")',
    ),
    "delete_severe_modules": (
        "20",
        V2,
        'removing 20 modules gives a "severe drop in performance"',
    ),
    "gradient_samples_per_k": ("1000", V2, "samples per k in Fig. 6b"),
}

# --- Related anchors --------------------------------------------------------

_STOCHASTIC_DEPTH = {
    "resnet110_sd": (
        "5.25",
        V,
        "CIFAR-10, linear decay to p_L=0.5; test error at best"
        " validation error; expect +-0.2",
    ),
    "resnet110_constant": (
        "6.41",
        V,
        "CIFAR-10 constant-depth baseline in the same code",
    ),
    "svhn_sd": ("1.75", V, "SVHN"),
    "cifar100_constant": ("27.22", U, "SD paper, from memory"),
    "cifar100_sd": ("24.98", U, "SD paper, from memory"),
    "resnet1202_constant": ("6.67", U, "SD paper, from memory"),
    "resnet1202_sd": ("4.91", U, "SD paper, from memory"),
}

_WRN = {
    "preact_resnet164": {"cifar10": "5.46", "cifar100": "24.33"},
    "preact_resnet1001": {"cifar10": "4.92", "cifar100": "22.71"},
    "wrn28_10": {"cifar10": "4.00", "cifar100": "19.25"},
    "wrn28_10_dropout": {"cifar10": "3.89", "cifar100": "18.85"},
}

_HIGHWAY_RETEST = {
    "resnet110": {"accuracy": "93.75", "error": "6.25", "params": "1.73M"},
    "highway110": {"accuracy": "93.96", "error": "6.04", "params": "2.65M"},
}

_CVPR_RECIPE = {
    "learning_rate": ("0.1", V, ""),
    "lr_decay_factor": ("0.1", V, "divided by 10 at each boundary"),
    "lr_boundary_1": ("32000", V, "iterations"),
    "lr_boundary_2": ("48000", V, "iterations"),
    "total_iterations": ("64000", V, ""),
    "batch_size": ("128", V, "on two GPUs"),
    "momentum": ("0.9", V, ""),
    "weight_decay": ("0.0001", V, ""),
    "pad": ("4", V, "pixels, then random 32x32 crop and horizontal flip"),
    "warmup_learning_rate": ("0.01", V, "ResNet-110 only"),
    "warmup_iterations": (
        "400",
        V,
        'ResNet-110: until training error < 80%, "about 400"',
    ),
}

_IDENTITY_RECIPE = {
    "learning_rate": ("0.1", V, ""),
    "lr_boundary_1": ("32000", V, "iterations"),
    "lr_boundary_2": ("48000", V, "iterations"),
    "total_iterations": ("64000", U, "not restated; presumably as in [1]"),
    "warmup_learning_rate": ("0.01", V, "all CIFAR experiments"),
    "warmup_iterations": ("400", V, "all CIFAR experiments"),
    "batch_size": ("128", V, "two GPUs"),
    "batch_size_per_gpu": ("64", V, "BN statistics are per 64 images"),
    "weight_decay": ("0.0001", V, ""),
    "momentum": ("0.9", V, ""),
    "imagenet_batch_size": ("256", V, "8 GPUs, 32 each"),
    "imagenet_lr_boundary_1_epoch": ("30", V, ""),
    "imagenet_lr_boundary_2_epoch": ("60", V, ""),
}


def _build_tables() -> dict[str, Table]:
  # One long literal on purpose: the tables read top to bottom like papers.md.
  dataset = ("cifar10", "cifar100")
  tables = [
      Table(
          name="cvpr_table6",
          title="He et al. 2016 (CVPR), Table 6, CIFAR-10",
          columns={
              "field": (
                  "error",
                  "error_mean",
                  "error_std",
                  "params",
                  "n",
                  "layers",
              )
          },
          defaults={"field": "error"},
          rows=_fields(_CVPR_T6, V),
          units="error: test error % (ResNet-110: best of 5 runs; error_mean"
          " and error_std over the 5); params: millions",
      ),
      Table(
          name="identity_table1",
          title="He et al. 2016 (ECCV), Table 1, ResNet-110 on CIFAR-10",
          columns={},
          defaults={},
          rows=_single(_IDENTITY_T1),
          units="test error %, median of 5; 'fail' means above 20%",
      ),
      Table(
          name="identity_table2",
          title="He et al. 2016 (ECCV), Table 2, CIFAR-10",
          columns={"depth": ("110", "164")},
          defaults={},
          rows=_fields(_IDENTITY_T2, V),
          aliases=_IDENTITY_T2_ALIASES,
          units="test error %, median of 5",
      ),
      Table(
          name="identity_table3",
          title="He et al. 2016 (ECCV), Table 3",
          columns={"dataset": dataset, "unit": ("original", "preact")},
          defaults={},
          rows={
              case: {key: PaperValue(text, V) for key, text in cols.items()}
              for case, cols in _IDENTITY_T3.items()
          },
          units="test error %, median of 5",
      ),
      Table(
          name="identity_table4",
          title="He et al. 2016 (ECCV), Table 4",
          columns={
              "dataset": dataset,
              "field": ("error", "error_mean", "error_std", "params"),
          },
          defaults={"field": "error"},
          rows={
              case: {key: PaperValue(text, V) for key, text in cols.items()}
              for case, cols in _IDENTITY_T4.items()
          },
          units="error: test error %, median of 5 runs; error_mean/_std:"
          " mean and std of the 5; params: millions",
      ),
      Table(
          name="identity_table5",
          title="He et al. 2016 (ECCV), Table 5, ImageNet single crop",
          columns={"metric": ("top1", "top5")},
          defaults={},
          rows={
              case: {("top1",): PaperValue(t1, V), ("top5",): PaperValue(t5, V)}
              for case, (t1, t5) in _IDENTITY_T5.items()
          },
          units="validation error %, trained at 224, tested on a 320x320 crop"
          " unless the case says 224crop",
      ),
      Table(
          name="identity_resnet101_imagenet",
          title="He et al. 2016 (ECCV), Sec. 3 text, ImageNet ResNet-101",
          columns={"metric": ("top1", "top5")},
          defaults={},
          rows={
              "original_224crop": {
                  ("top1",): PaperValue("23.6", V),
                  ("top5",): PaperValue("7.1", V),
              },
              "bn_after_addition_224crop": {
                  ("top1",): PaperValue("24.6", V),
                  ("top5",): PaperValue("7.5", V),
              },
          },
          units="validation error %, 224 crop",
      ),
      Table(
          name="veit",
          title="Veit, Wilber & Belongie 2016 (NIPS)",
          columns={},
          defaults={},
          rows=_single(_VEIT),
          units="see each entry note",
      ),
      Table(
          name="stochastic_depth",
          title="Huang et al. 2016, Stochastic Depth (authors' README)",
          columns={},
          defaults={},
          rows=_single(_STOCHASTIC_DEPTH),
      ),
      Table(
          name="wrn",
          title="Zagoruyko & Komodakis 2016, Wide ResNet (authors' README)",
          columns={"dataset": dataset},
          defaults={},
          rows=_fields(_WRN, V),
          units="test error %, median of 5, meanstd preprocessing",
      ),
      Table(
          name="highway_retest",
          title="flukeskywalker/highway-resnet-comparison (2025), single runs",
          columns={"field": ("error", "accuracy", "params")},
          defaults={"field": "error"},
          rows=_fields(
              _HIGHWAY_RETEST,
              V,
              notes={
                  ("resnet110", "error"): "derived: 100 - 93.75 accuracy",
                  ("highway110", "error"): "derived: 100 - 93.96 accuracy",
              },
          ),
          units="final test accuracy/error %, params in millions",
      ),
      Table(
          name="cvpr_recipe",
          title="He et al. 2016 (CVPR), CIFAR training recipe",
          columns={},
          defaults={},
          rows=_single(_CVPR_RECIPE),
          units="hyper-parameters",
      ),
      Table(
          name="identity_recipe",
          title="He et al. 2016 (ECCV), appendix training recipe",
          columns={},
          defaults={},
          rows=_single(_IDENTITY_RECIPE),
          units="hyper-parameters",
      ),
  ]
  return {t.name: t for t in tables}


TABLES: dict[str, Table] = _build_tables()

_SELECTOR_ALIASES = {
    "c10": "cifar10",
    "c100": "cifar100",
    "top-1": "top1",
    "top-5": "top5",
    "pre-act": "preact",
    "preactivation": "preact",
}


def tables() -> list[str]:
  """Returns the table names `lookup` accepts."""
  return list(TABLES)


def cases(table: str) -> list[str]:
  """Returns the canonical case names of `table`."""
  return list(_table(table).rows)


def _table(table: str) -> Table:
  try:
    return TABLES[table]
  except KeyError:
    raise KeyError(
        f'unknown paper table {table!r}; known: {", ".join(TABLES)}'
    ) from None


def _norm_selector(value: Any) -> str:
  s = str(value).strip().lower().replace(" ", "")
  s = _SELECTOR_ALIASES.get(s, s)
  return s.replace("-", "")


def _norm_case(t: Table, case: str) -> str:
  c = str(case).strip().lower()
  if c in t.rows:
    return c
  if c in t.aliases:
    return t.aliases[c]
  # 'ResNet-110' -> 'resnet110'; only hyphens between letters and digits, so
  # negative gate biases such as 'b-6' keep their sign.
  c2 = re.sub(r"(?<=[a-z])-(?=\d)", "", c)
  return t.aliases.get(c2, c2)


def lookup_entry(table: str, case: str, **selectors: Any) -> PaperValue | None:
  """Returns the full entry (text, source, note) or None; see `lookup`."""
  t = _table(table)
  unknown = set(selectors) - set(t.columns)
  if unknown:
    raise TypeError(
        f"{table} takes selectors {sorted(t.columns)}, got {sorted(unknown)}"
    )
  key = []
  for col, allowed in t.columns.items():
    if col in selectors:
      v = _norm_selector(selectors[col])
    elif col in t.defaults:
      v = t.defaults[col]
    else:
      raise TypeError(f"{table} needs {col}= one of {list(allowed)}")
    if v not in allowed:
      raise ValueError(
          f"{table}: {col}={selectors[col]!r} not in {list(allowed)}"
      )
    key.append(v)
  row = t.rows.get(_norm_case(t, case))
  if row is None:
    return None
  return row.get(tuple(key))


def lookup(table: str, case: str, **selectors: Any) -> float | str | None:
  """Returns a paper's number for `case` in `table`.

  Args:
    table: A name from `tables()`, e.g. 'cvpr_table6', 'identity_table1'.
    case: Row name from `cases(table)`, case-insensitive; 'ResNet-110' also
      matches 'resnet110', and Table 2 accepts 'full_preact' etc. for 'a'-'e'.
    **selectors: The table's columns, e.g. depth=164, dataset='cifar100'
      ('c100' works too), unit='preact', metric='top5', field='params'.
      Columns with a default (field='error') may be omitted.

  Returns:
    The value as a float, the string 'fail' (Identity Mappings Table 1:
    error above 20%), or None if the paper reports nothing for that cell or
    the case is unknown (e.g. a resflax-only experiment).

  Raises:
    KeyError: Unknown table.
    TypeError: A selector is missing or not a column of this table.
    ValueError: A selector value is not allowed.
  """
  entry = lookup_entry(table, case, **selectors)
  return None if entry is None else entry.value


def source(table: str, case: str, **selectors: Any) -> str | None:
  """Returns the source tag ('[V]', '[V2]', '[U]') of an entry, or None."""
  entry = lookup_entry(table, case, **selectors)
  return None if entry is None else entry.source


def format_paper_value(
    v: PaperValue | float | str | None,
    *,
    decimals: int | None = None,
    with_source: bool = False,
) -> str:
  """Formats a paper value for a results table.

  Args:
    v: A `PaperValue` (printed exactly as in the paper), a float from
      `lookup`, 'fail', or None.
    decimals: Decimals for floats; default 2 (the CIFAR tables' precision),
      integers such as iteration counts are printed without decimals.
    with_source: Append the source tag, e.g. '6.43 [V]' (PaperValue only).

  Returns:
    '—' for None, 'fail' (>20% error), or the number as text.
  """
  if v is None:
    return "—"
  if isinstance(v, PaperValue):
    text = v.text
    return f"{text} {v.source}" if with_source else text
  if isinstance(v, str):
    return v
  x = float(v)
  if math.isnan(x):
    return "—"
  if decimals is None:
    if x.is_integer() and abs(x) >= 100:
      return str(int(x))
    decimals = 2
  return f"{x:.{decimals}f}"
