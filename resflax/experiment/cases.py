"""Sweeps as data: an experiment file's cases and the configs they make.

An experiment file declares its table as data: a dict of ``Case`` (dotted
config overrides, the paper's reference key, a note) and calls
``experiment(...)``, which turns the file's argument into a config::

  CASES = {
      "original": Case({}, paper_ref("identity_table1", "original")),
      "conv1x1": Case({"model.shortcut": "conv1x1"},
                      paper_ref("identity_table1", "conv1x1")),
  }
  def get_config(arg=None):
    return cases.experiment(__file__, base(), CASES, arg, title="...")

The argument is a comma-separated list of tokens: a case name or a group
name selects those cases (none: the file's default table; ``all``: every
case), and ``smoke`` shrinks every case (``shrink``, one seed). Names are
spelt as models are (``resnet110``, ``wrn28_10``); ``canonical_name`` reads
other spellings: case does not matter, a hyphen between a network and its
depth may be left out (``resnet-110`` is ``resnet110``) and one after a
number stands for ``_`` (``wrn-28-10`` is ``wrn28_10``). A file may also
accept names that train one network once (``SingleRun``, e.g.
``cifar_resnet.py:110``). An unknown token is an error with a "did you
mean" over every accepted name, listing the cases, groups and single runs.

Config keys ``experiment`` adds (and ``resflax.runner`` dispatches on):
  sweep_cases: ConfigDict case name -> the case's overrides as a nested
    partial config (``{"model": {"shortcut": "conv1x1"}}``); ConfigDict keys
    cannot contain dots, so the dotted dict of the file is stored nested and
    ``case_overrides`` flattens it back.
  sweep_paper: ConfigDict case name -> ``{table, case, <selectors>}`` for
    ``resflax.experiment.paper.lookup`` (empty: no paper number).
  sweep_notes: ConfigDict case name -> a note for the results table.
  sweep_order: the case names in table order (ConfigDict sorts its keys).
  sweep_title: the table's heading.
  sweep_shrunk: True for a ``smoke`` sweep (results.md marks it).
  sweep_figures: figure name -> ``{title, kind, panel_titles,
    panel_cases}``, the figures of the file's ``figures`` (``Figure``)
    whose cases all run.
  seeds: runs per case (seeds ``seed`` .. ``seed + seeds - 1``).
"""

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from flax import traverse_util

from resflax import data as data_lib
from resflax import models
from resflax.errors import ConfigError
from resflax.experiment import paper as paper_lib
from resflax.training import runs as runs_lib
from resflax.training import workdir as workdir_lib

SWEEP_KEYS = (
    "sweep_cases",
    "sweep_order",
    "sweep_paper",
    "sweep_notes",
    "sweep_title",
    "sweep_shrunk",
    "sweep_figures",
)
FAILED_FILE = workdir_lib.FAILED_FILE
RESULTS_FILE = workdir_lib.RESULTS_FILE
SMOKE = "smoke"
ALL = "all"
SMOKE_SEEDS = 1  # a smoke sweep covers every case once
# What a declared Figure draws (resflax.experiment.figures draws each).
FIGURE_KINDS = ("curves", "response_std")


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of a paper's table.

  Attributes:
    overrides: dotted config key -> value, applied to the experiment's base
      config (``{"model.shortcut": "scale", "model.shortcut_scale": 0.5}``).
    paper: where ``resflax.experiment.paper.lookup`` finds the paper's
      number (from ``paper_ref``); empty when the paper has none.
    note: shown beside the row (e.g. what the paper's number measures).
  """

  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  paper: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
  """A figure of a sweep, drawn from its cases' runs (every seed).

  Two kinds (``FIGURE_KINDS``): ``"curves"``, side-by-side panels of
  training curves (He et al. Fig. 6, Identity Mappings Fig. 1, 3 and 6), and
  ``"response_std"``, the std of each layer's response of every trained
  network, in layer order and sorted by magnitude (He et al. Fig. 7);
  ``resflax.experiment.figures`` draws both.

  Attributes:
    title: the figure's title.
    panels: panel title -> the cases drawn in it, left to right (for
      ``"response_std"``: one panel, its networks).
    kind: one of ``FIGURE_KINDS``.

  Raises:
    ValueError: an unknown kind (naming the allowed ones), or a
      ``"response_std"`` figure with other than one panel.
  """

  title: str
  panels: Mapping[str, Sequence[str]]
  kind: str = "curves"

  def __post_init__(self):
    if self.kind not in FIGURE_KINDS:
      raise ValueError(
          f"Figure {self.title!r}: unknown kind {self.kind!r}; use one of "
          f"{', '.join(FIGURE_KINDS)}"
      )
    if self.kind == "response_std" and len(self.panels) != 1:
      raise ValueError(
          f"Figure {self.title!r}: a 'response_std' figure has one panel "
          f"(its networks; drawn in layer order and sorted), not "
          f"{len(self.panels)}"
      )


def paper_ref(table: str, case: str, **selectors) -> dict[str, Any]:
  """A reference to one number of ``resflax.experiment.paper``, checked now.

  Args:
    table: a ``resflax.experiment.paper.tables()`` name.
    case: a row of that table.
    **selectors: the table's columns (``depth=110``, ``dataset="cifar100"``).

  Raises:
    ValueError: the reference does not resolve to a number of the paper.
  """
  try:
    value = paper_lib.lookup(table, case, **selectors)
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(
        f"paper_ref({table!r}, {case!r}, {selectors}): {e}"
    ) from None
  if value is None:
    raise ValueError(
        f"paper_ref({table!r}, {case!r}, {selectors}): the paper "
        f"has no such number; cases: {paper_lib.cases(table)}"
    )
  return {"table": table, "case": case, **selectors}


def paper_value(ref: Mapping[str, Any], field: str | None = None):
  """The paper's number for ``ref`` (a ``paper_ref`` dict), or None.

  Args:
    ref: ``{table, case, <selectors>}``; empty gives None.
    field: for tables with a ``field`` column, e.g. ``"error_mean"``; None
      uses the reference's own selectors. A table without that column or a
      cell the paper leaves empty gives None.

  Returns:
    ``resflax.experiment.paper.PaperValue`` or None.
  """
  if not ref:
    return None
  ref = dict(ref)
  table, case = ref.pop("table"), ref.pop("case")
  if field is not None:
    if "field" not in paper_lib.TABLES[table].columns:
      return None
    ref["field"] = field
  return paper_lib.lookup_entry(table, case, **ref)


# --------------------------------------------------------------------------
# Building an experiment's config


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _without_sweep(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` without the sweep's own keys."""
  c = config.copy_and_resolve_references()
  c.unlock()
  for key in SWEEP_KEYS:
    if key in c:
      del c[key]
  return c


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> ml_collections.ConfigDict:
  """Sets dotted ``overrides`` on ``config`` in place; returns it.

  Args:
    config: an unlocked config.
    overrides: dotted key -> value.
    where: names the overrides' origin in errors (e.g. ``"case 'x'"``).

  Raises:
    ConfigError: a key the config does not have, or a value of the
      wrong type, naming the key and ``where``.
  """
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  for key, value in overrides.items():
    if key not in flat:
      close = difflib.get_close_matches(key, list(flat), n=3)
      raise ConfigError(
          f"{where}: unknown config key {key!r}"
          + (f"; did you mean {', '.join(close)}?" if close else "")
      )
    try:
      config.update_from_flattened_dict({key: value})
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{where}: {key}={value!r}: {e}") from None
  return config


def canonical_name(token: str) -> str:
  """The spelling of a case, group or network name that resflax uses.

  Lower case; a hyphen between a network and its depth dropped
  (``ResNet-110`` -> ``resnet110``, as ``resflax.models.create_model``
  spells it); a hyphen after a number read as ``_`` (``wrn-28-10`` ->
  ``wrn28_10``). A minus sign stays (``exclusive_gate_b-6``).
  """
  name = re.sub(r"(?<=[a-z]{2})-(?=\d)", "", token.strip().lower())
  return re.sub(r"(?<=\d)-", "_", name)


def unknown_name_error(
    source: str,
    token: str,
    valid: Sequence[str],
    allowed: str,
    what: str = "case",
) -> ConfigError:
  """The one-line error for a token no name matches.

  Args:
    source: the experiment file's name.
    token: what was given.
    valid: every accepted name, for the "did you mean".
    allowed: what may be given, e.g. "use a case (...) or a group (...)".
    what: the kind of name expected.
  """
  close = difflib.get_close_matches(canonical_name(token), list(valid), n=3)
  return ConfigError(
      f"{source}: unknown {what} {token!r}"
      + (f" (did you mean {', '.join(close)}?)" if close else "")
      + f"; {allowed}"
  )


def _check_case_name(name: str, source: str):
  if (
      not name
      or "." in name
      or "," in name
      or name in (SMOKE, ALL)
      or canonical_name(name) != name
  ):
    raise ValueError(
        f"{source}: case name {name!r} may not be empty, "
        f"'{SMOKE}', '{ALL}', contain '.' or ',' or be spelt "
        f"other than {canonical_name(name)!r}"
    )


@dataclasses.dataclass(frozen=True)
class SingleRun:
  """Names of an experiment file that train one network once, not a sweep.

  Attributes:
    make: a canonical name -> that run's config, or None when the name is
      not one of these; ``""`` is ``smoke`` alone (None: ``smoke`` alone
      shrinks the file's table instead).
    shrink: shrinks the run's config for ``smoke``.
    rule: how the names look, for errors (e.g. "a depth alone").
    examples: names listed in errors and offered by "did you mean".
  """

  make: Callable[[str], ml_collections.ConfigDict | None]
  shrink: Callable[[ml_collections.ConfigDict], Any]
  rule: str
  examples: Sequence[str] = ()


def _single_run(
    single: SingleRun, names: Sequence[str], smoke: bool, source: str
) -> ml_collections.ConfigDict | None:
  """The config of a single run when ``names`` name one, else None."""
  if len(names) > 1:
    ones = [n for n in names if single.make(n) is not None]
    if ones:
      raise ConfigError(
          f"{source}: {ones[0]!r} trains one network once ({single.rule}); "
          "name it alone (or with 'smoke'), or name only cases and groups "
          "of the table"
      )
    return None
  if not names and not smoke:
    return None  # no argument: the file's table
  config = single.make(names[0] if names else "")
  if config is None:
    return None
  if smoke:
    single.shrink(config)
  return config


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks one case in place to seconds on a CPU; returns it.

  Synthetic data with the real dataset's class count, the smallest network
  of the case's family and variant (``resflax.models.shrink``), 6 steps with
  the schedule scaled to them (warm-up and decays at the same fractions),
  programs compiled unoptimised (``train.fast_compile``), one seed
  (``SMOKE_SEEDS``): every case runs; the pipeline, not the
  spread over seeds, is what a smoke sweep checks.
  """
  data, model, t = config.data, config.model, config.train
  data.num_classes = data_lib.source_info(data).num_classes or data.num_classes
  data.name = "synthetic"
  data.path = ""
  data.validation_split = 0
  data.synthetic_train_size = 96
  data.synthetic_test_size = 64
  data.max_train_images = data.max_test_images = 0
  data.image_size = models.FAMILIES.get(model.name).smoke_image_size
  model.update(models.shrink(model))
  t.schedule_steps = t.steps
  t.scale_schedule = True
  t.steps = 6
  t.batch_size = 16
  t.eval_batch_size = 32
  t.log_every = 3
  t.eval_every = 0
  t.checkpoint_every = 0
  t.fast_compile = True  # a smoke run's time is compilation
  config.seeds = SMOKE_SEEDS
  return config


def _select(
    tokens: Sequence[str],
    cases: Mapping[str, Case],
    groups: Mapping[str, Sequence[str]],
    source: str,
    single: SingleRun | None,
) -> list[str]:
  """The cases the argument's (canonical) tokens name, in order, without
  repeats."""
  selected: list[str] = []
  for token in tokens:
    if token == ALL:
      members = list(cases)
    elif token in cases:
      members = [token]
    elif token in groups:
      members = list(groups[token])
    else:
      examples = list(single.examples) if single else []
      one = (
          f", or one network trained once: {single.rule} "
          f"({', '.join(examples)})"
          if single
          else ""
      )
      raise unknown_name_error(
          source,
          token,
          list(cases) + list(groups) + [ALL, SMOKE] + examples,
          f"use cases ({', '.join(cases)}), groups "
          f"({', '.join(list(groups) + [ALL])}){one}, and/or '{SMOKE}', "
          "comma-separated",
      )
    selected += [m for m in members if m not in selected]
  return selected


def _figures(
    figures: Mapping[str, Figure], selected: Sequence[str]
) -> ml_collections.ConfigDict:
  """The figures whose every case runs, as config data."""
  return ml_collections.ConfigDict(
      {
          name: {
              "title": fig.title,
              "kind": fig.kind,
              "panel_titles": tuple(fig.panels),
              "panel_cases": tuple(
                  tuple(members) for members in fig.panels.values()
              ),
          }
          for name, fig in figures.items()
          if all(
              m in selected for members in fig.panels.values() for m in members
          )
      }
  )


def experiment(
    path: str,
    base: ml_collections.ConfigDict,
    cases: Mapping[str, Case],
    arg: str | None,
    *,
    title: str,
    table: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    shrink_fn: Callable[[ml_collections.ConfigDict], Any] = shrink,
    seeds: int = 5,
    figures: Mapping[str, Figure] | None = None,
    single: SingleRun | None = None,
) -> ml_collections.ConfigDict:
  """The config of an experiment file for its argument.

  Args:
    path: the experiment file (``__file__``), for error messages.
    base: the config every case starts from.
    cases: every case the file knows, in table order.
    arg: the file's argument (see the module docstring).
    title: the results table's heading.
    table: the cases run without a selecting token (default: all).
    groups: extra names selecting several cases (e.g. a search).
    shrink_fn: shrinks one case config for ``smoke``.
    seeds: runs per case (``config.seeds``; ``smoke`` sets
      ``SMOKE_SEEDS``).
    figures: figures (``Figure``) drawn when the sweep runs every case they
      show (``resflax.experiment.figures``).
    single: names that train one network once instead (its config is
      returned as it is, without sweep keys).

  Returns:
    ``base`` with ``seeds`` and the ``sweep_*`` keys set, or a single run's
    config.

  Raises:
    ValueError: an unknown token, listing the valid names with a "did you
      mean"; a single run's name beside other names; a case whose
      overrides name a key the config lacks.
  """
  source = os.path.basename(path)
  groups = dict(groups or {})
  table = list(table or cases)
  _check_declared(source, cases, groups, table)
  tokens = [canonical_name(t) for t in str(arg or "").split(",") if t.strip()]
  smoke = SMOKE in tokens
  names = [t for t in tokens if t != SMOKE]
  one = _single_run(single, names, smoke, source) if single else None
  if one is not None:
    return one
  selected = _select(names, cases, groups, source, single) or table

  config = base.copy_and_resolve_references()
  config.unlock()
  config.seeds = seeds
  reference = _without_sweep(config)
  if smoke:
    shrink_fn(reference)
  overrides = {}
  for name in selected:
    c = apply_overrides(
        _without_sweep(config), cases[name].overrides, f"{source} case {name!r}"
    )
    if smoke:
      shrink_fn(c)
    # Store only what differs from the (shrunk) base: the case's own keys,
    # plus for smoke what shrinking a differently-shaped case changed.
    ref_flat = traverse_util.flatten_dict(reference.to_dict(), sep=".")
    flat = traverse_util.flatten_dict(c.to_dict(), sep=".")
    overrides[name] = {k: v for k, v in flat.items() if ref_flat.get(k) != v}
  config = reference
  config.sweep_cases = ml_collections.ConfigDict(
      {name: _nest(o) for name, o in overrides.items()}
  )
  config.sweep_order = tuple(selected)
  config.sweep_paper = ml_collections.ConfigDict(
      {name: dict(cases[name].paper) for name in selected}
  )
  config.sweep_notes = ml_collections.ConfigDict(
      {name: cases[name].note for name in selected}
  )
  config.sweep_title = title
  config.sweep_shrunk = smoke
  config.sweep_figures = _figures(figures or {}, selected)
  return config


def _check_declared(
    source: str,
    cases: Mapping[str, Case],
    groups: Mapping[str, Sequence[str]],
    table: Sequence[str],
) -> None:
  """Checks an experiment file's own names: spelt canonically, known."""
  for name in list(cases) + list(groups):
    _check_case_name(name, source)
  for name, members in list(groups.items()) + [("table", table)]:
    unknown = [m for m in members if m not in cases]
    if unknown:
      raise ValueError(
          f"{source}: group {name!r} names unknown cases {unknown}"
      )


# --------------------------------------------------------------------------
# Reading a sweep config


def case_names(config: ml_collections.ConfigDict) -> list[str]:
  """The sweep's cases, in table order."""
  return list(config.sweep_order)


def case_overrides(
    config: ml_collections.ConfigDict, case: str
) -> dict[str, Any]:
  """The dotted overrides of ``case``."""
  return traverse_util.flatten_dict(config.sweep_cases[case].to_dict(), sep=".")


def case_config(
    config: ml_collections.ConfigDict,
    case: str,
    *,
    seed: int,
    parallel_runs: int = 1,
) -> ml_collections.ConfigDict:
  """The training config of one run (or one parallel program) of ``case``.

  Args:
    config: the sweep config.
    case: one of ``case_names(config)``.
    seed: the run's seed (the first seed of a parallel program).
    parallel_runs: runs trained together; 1 for one run.

  Returns:
    The config ``train.train_and_evaluate`` takes: the sweep keys removed,
    the case's overrides applied, ``seeds`` set to 1 (a run is one seed, and
    a later sweep with more seeds must not see a different config).
  """
  c = apply_overrides(
      _without_sweep(config),
      case_overrides(config, case),
      f"sweep case {case!r}",
  )
  c.seed = seed
  c.seeds = 1
  c.train.parallel_runs = parallel_runs
  c.lock()
  return c


def seeds(config) -> list[int]:
  return [runs_lib.run_seed(config.seed, k) for k in range(config.seeds)]


def run_dir(workdir: str, case: str, seed: int) -> str:
  return runs_lib.seed_dir(os.path.join(workdir, case), seed)


def run_status(path: str) -> str | None:
  """'ok' (results.json), 'failed' (failed.json) or None (not finished)."""
  if os.path.exists(os.path.join(path, RESULTS_FILE)):
    return "ok"
  if os.path.exists(os.path.join(path, FAILED_FILE)):
    return "failed"
  return None
