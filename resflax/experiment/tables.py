"""Results tables and plots: a sweep's test errors beside the paper's.

``write_tables(workdir, config)`` reads every run of a sweep (see
``resflax.experiment.sweep`` for the layout) and writes, atomically:

  results.csv  one row per case: median over every run (a diverged run
               counts as failed, as in Identity Mappings Table 1), mean,
               std (ddof=1) and best of the finished runs' test error in %,
               run counts (diverged, above 20%), the paper's number (and its
               mean/std where the paper gives them), the reference into
               ``resflax.experiment.paper`` and each run's error.
  results.md   the same as a Markdown table with the difference
               median - paper, the paper tables' titles and what the tags
               mean.
  results.png  per case: each run (dots), our median (bar) and the paper's
               number (red x; 'fail' = above 20% drawn at the right edge).

A smoke sweep (shrunk networks, synthetic data) is not a result, and each
file says so first (``sweep_mark``): results.md's heading and results.png's
title open with it, results.csv's first column (``mark``) holds it on every
row, and the paper's numbers are drawn as a reference for a different
setting (hollow grey marks) with no difference taken against them.
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from resflax import fileio
from resflax.experiment import cases
from resflax.experiment import paper as paper_lib
from resflax.training import curves
from resflax.training.metrics import read_scalars  # noqa: F401  (notebooks)

# "mark" first: a reader of a smoke sweep's CSV meets it before any number.
FIELDS = (
    "mark",
    "case",
    "median_error",
    "median_failed",
    "mean_error",
    "std_error",
    "best_error",
    "runs",
    "diverged",
    "above_20",
    "pending",
    "paper_error",
    "paper_error_mean",
    "paper_error_std",
    "paper_source",
    "paper_reference",
    "run_errors",
    "note",
)

# Identity Mappings Table 1 calls a run with test error above 20% "fail".
FAIL_THRESHOLD = 20.0


def _error_pct(result: Mapping[str, Any]) -> float:
  return 100.0 * float(result["test_error"])


def sweep_mark(config) -> str:
  """``curves.output_mark`` of a sweep: '' when its runs are real.

  Synthetic when any case trains on synthetic data, shrunk when the sweep is
  a smoke one (``config.sweep_shrunk``).
  """
  return curves.output_mark(
      synthetic=_synthetic(config),
      shrunk=bool(config.get("sweep_shrunk", False)),
  )


def _synthetic(config) -> bool:
  """Whether any case of the sweep trains on synthetic data."""
  return any(
      cases.case_config(config, case, seed=config.seed).data.name == "synthetic"
      for case in cases.case_names(config)
  )


def case_runs(workdir: str, case: str, seeds: Sequence[int]) -> dict[str, Any]:
  """The finished runs of one case.

  Returns:
    ``{"errors": {seed: test error %}, "failed": {seed: message},
    "pending": [seeds without a result]}``.
  """
  errors, failed, pending = {}, {}, []
  for s in seeds:
    path = cases.run_dir(workdir, case, s)
    status = cases.run_status(path)
    if status == "ok":
      errors[s] = _error_pct(
          fileio.read_json(os.path.join(path, cases.RESULTS_FILE))
      )
    elif status == "failed":
      failed[s] = fileio.read_json(os.path.join(path, cases.FAILED_FILE)).get(
          "error", ""
      )
    else:
      pending.append(s)
  return {"errors": errors, "failed": failed, "pending": pending}


def summarize(errors: Sequence[float], diverged: int = 0) -> dict[str, Any]:
  """Statistics of a case's runs, as Identity Mappings Table 1 reads them.

  Args:
    errors: test errors (%) of the finished runs.
    diverged: runs stopped by a non-finite loss; they count as failed runs
      (error above every finished one) in the median.

  Returns:
    ``median`` over all runs (inf when the median run diverged),
    ``median_failed`` (the median run diverged or ended above 20%, the
    paper's "fail"), ``mean``, ``std`` (ddof=1) and ``best`` of the finished
    runs; NaN where undefined.
  """
  e = np.asarray(list(errors), np.float64)
  every = np.concatenate([e, np.full(diverged, np.inf)])
  nan = float("nan")
  median = float(np.median(every)) if every.size else nan
  return {
      "median": median,
      "median_failed": bool(every.size) and median > FAIL_THRESHOLD,
      "mean": float(e.mean()) if e.size else nan,
      "std": float(e.std(ddof=1)) if e.size > 1 else nan,
      "best": float(e.min()) if e.size else nan,
  }


def reference_text(ref: Mapping[str, Any]) -> str:
  """``table: case (selector=value, ...)``, or '' for no reference."""
  if not ref:
    return ""
  ref = dict(ref)
  table, case = ref.pop("table"), ref.pop("case")
  sel = ", ".join(f"{k}={v}" for k, v in sorted(ref.items()))
  return f"{table}: {case}" + (f" ({sel})" if sel else "")


def case_rows(workdir: str, config) -> list[dict[str, Any]]:
  """One row per case of the sweep ``config`` run in ``workdir``."""
  rows = []
  for case in cases.case_names(config):
    runs = case_runs(workdir, case, cases.seeds(config))
    ref = (
        config.sweep_paper[case].to_dict() if case in config.sweep_paper else {}
    )
    entry = cases.paper_value(ref)
    mean = cases.paper_value(ref, "error_mean")
    std = cases.paper_value(ref, "error_std")
    stats = summarize(runs["errors"].values(), len(runs["failed"]))
    rows.append(
        {
            "case": case,
            "median_error": stats["median"],
            "median_failed": stats["median_failed"],
            "mean_error": stats["mean"],
            "std_error": stats["std"],
            "best_error": stats["best"],
            "runs": len(runs["errors"]) + len(runs["failed"]),
            "diverged": len(runs["failed"]),
            "above_20": sum(
                e > FAIL_THRESHOLD for e in runs["errors"].values()
            ),
            "pending": len(runs["pending"]),
            "paper_error": None if entry is None else entry.value,
            "paper_error_mean": None if mean is None else mean.value,
            "paper_error_std": None if std is None else std.value,
            "paper_source": "" if entry is None else entry.source,
            "paper_reference": reference_text(ref),
            "run_errors": {
                str(s): e for s, e in sorted(runs["errors"].items())
            },
            "note": config.sweep_notes[case]
            if case in config.sweep_notes
            else "",
            "_table": ref.get("table", ""),
            "_failures": runs["failed"],
        }
    )
  return rows


def _num(x: float | None, decimals: int = 2) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "—"
  return f"{x:.{decimals}f}"


def _paper_text(value) -> str:
  if value == paper_lib.FAIL:
    return f"fail (>{FAIL_THRESHOLD:g}%)"
  return paper_lib.format_paper_value(value)


def _median_text(r: Mapping[str, Any]) -> str:
  if r["median_failed"]:
    return f"fail (>{FAIL_THRESHOLD:g}%)"
  return _num(r["median_error"])


def format_markdown(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    seeds: Sequence[int],
    shrunk: bool = False,
    synthetic: bool = False,
) -> str:
  """The Markdown table of ``case_rows``.

  Args:
    rows: from ``case_rows``.
    title: the table's heading.
    seeds: the seeds of each case.
    shrunk: the networks were shrunk for a smoke run.
    synthetic: the runs trained on synthetic data.
  """
  mark = curves.output_mark(synthetic=synthetic, shrunk=shrunk)
  comparable = not mark
  lines = [
      f"# {curves.marked(title, mark, ': ')}",
      "",
      f"Test error (%) of each case's runs (seeds {seeds[0]}..{seeds[-1]}). "
      "`median` is over every run, a diverged run counting as failed; it "
      f"reads `fail` when the median run diverged or ended above "
      f"{FAIL_THRESHOLD:g}%, as Identity Mappings Table 1 does. `mean ± std` "
      "(ddof=1) and `best` are over the finished runs. `diverged`: runs "
      "stopped by a non-finite loss; `>20%`: finished runs above "
      f"{FAIL_THRESHOLD:g}%; `pending`: not run yet. Δ = our median − the "
      "paper's number.",
      "",
  ]
  if not comparable:
    lines += [
        f"**{mark}.** These runs test the pipeline: their numbers are "
        "not comparable with the paper's (its column is the full-size "
        "networks on real data), so Δ is left out.",
        "",
    ]
  lines += [
      "| case | median | mean ± std | best | runs | diverged | >20% | pending "
      "| paper | paper mean ± std | Δ | reference | note |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  lines += [_markdown_row(r, comparable) for r in rows]
  tables = sorted({r["_table"] for r in rows if r["_table"]})
  if tables:
    lines += [
        "",
        "Paper numbers (`resflax.experiment.paper`); the tag after "
        "each says where it was read: "
        + "; ".join(
            f"`{tag}` {meaning}"
            for tag, meaning in paper_lib.SOURCE_TAGS.items()
        )
        + ".",
        "",
    ]
    lines += [
        f"- `{t}`: {paper_lib.TABLES[t].title}; "
        f"{paper_lib.TABLES[t].units}."
        for t in tables
    ]
  failures = [
      (r["case"], s, m) for r in rows for s, m in sorted(r["_failures"].items())
  ]
  if failures:
    lines += ["", "Diverged runs:", ""]
    lines += [f"- {c} seed {s}: {m}" for c, s, m in failures]
  return "\n".join(lines) + "\n"


def _markdown_row(r: Mapping[str, Any], comparable: bool) -> str:
  """One case's line of ``format_markdown``'s table (Δ when ``comparable``)."""
  p = r["paper_error"]
  delta = (
      r["median_error"] - p
      if comparable and isinstance(p, float) and not r["median_failed"]
      else None
  )
  pm = (
      "—"
      if r["paper_error_mean"] is None
      else f"{_num(r['paper_error_mean'])} ± {_num(r['paper_error_std'])}"
  )
  paper = _paper_text(p) + (f" {r['paper_source']}" if p is not None else "")
  ours = (
      "—"
      if math.isnan(r["mean_error"])
      else f"{_num(r['mean_error'])} ± {_num(r['std_error'])}"
  )
  return (
      f"| {r['case']} | {_median_text(r)} | {ours} | "
      f"{_num(r['best_error'])} | {r['runs']} | {r['diverged']} | "
      f"{r['above_20']} | {r['pending']} | {paper} | {pm} | "
      f"{'—' if delta is None else f'{delta:+.2f}'} | "
      f"{r['paper_reference'] or '—'} | {r['note']} |"
  )


def _paper_marks(ax, y: float, p, right: float, comparable: bool) -> None:
  """The paper's number of one case: red when comparable, else hollow grey."""
  style = (
      dict(color="tab:red", label="paper")
      if comparable
      else dict(
          facecolors="none",
          edgecolors="0.4",
          label="paper (full-size, real data)",
      )
  )
  if isinstance(p, float):
    ax.scatter(
        [p], [y], marker="x" if comparable else "o", s=50, zorder=4, **style
    )
  elif p == paper_lib.FAIL:
    style["label"] += f": fail, >{FAIL_THRESHOLD:g}%"
    ax.scatter([right], [y], marker=">", s=40, zorder=4, **style)


def results_figure(
    rows: Sequence[Mapping[str, Any]], title: str, mark: str = ""
):
  """The Figure of results.png: each case's runs, median, paper's number.

  Args:
    rows: from ``case_rows``.
    title: the table's heading.
    mark: ``sweep_mark``; '' for real runs. A marked figure opens its title
      with it and draws the paper's numbers as a reference only.
  """
  # The Agg canvas directly: no pyplot state, no global backend switch, so
  # a notebook's inline backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  n = len(rows)
  fig = Figure(figsize=(10, 1.6 + 0.42 * n))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ys = np.arange(n)[::-1]
  finite = [e for r in rows for e in r["run_errors"].values()]
  finite += [
      r["paper_error"] for r in rows if isinstance(r["paper_error"], float)
  ]
  right = max(finite + [FAIL_THRESHOLD]) * 1.08
  labels = []
  for y, r in zip(ys, rows):
    errs = list(r["run_errors"].values())
    if errs:
      ax.scatter(
          errs, [y] * len(errs), s=14, color="0.45", zorder=3, label="runs"
      )
      if math.isfinite(r["median_error"]):
        ax.barh(
            y,
            r["median_error"],
            height=0.5,
            color="tab:blue",
            alpha=0.35,
            label="median",
        )
    _paper_marks(ax, y, r["paper_error"], right, comparable=not mark)
    labels.append(
        r["case"] + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
    )
  ax.set_yticks(ys)
  ax.set_yticklabels(labels, fontsize=8)
  ax.set_xlim(0, right * 1.03)
  ax.set_xlabel("test error (%)")
  ax.set_title(
      curves.marked(title, mark),
      fontsize=9,
      color="tab:red" if mark else "black",
  )
  ax.grid(axis="x", alpha=0.3)
  handles, names = ax.get_legend_handles_labels()
  unique = dict(zip(names, handles))
  if unique:
    ax.legend(
        unique.values(),
        unique.keys(),
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
  return fig


def plot(
    rows: Sequence[Mapping[str, Any]], title: str, mark: str = ""
) -> bytes:
  """PNG bytes of ``results_figure`` (its ``Title`` chunk: the title)."""
  return curves.png_bytes(
      results_figure(rows, title, mark), curves.marked(title, mark, ": ")
  )


def write_tables(workdir: str, config) -> list[dict[str, Any]]:
  """Writes results.md, results.csv and results.png of a sweep.

  Args:
    workdir: the sweep's directory.
    config: the sweep config.

  Returns:
    The rows (``case_rows``) without the private ``_`` keys.
  """
  rows = case_rows(workdir, config)
  title = config.sweep_title if "sweep_title" in config else "results"
  shrunk = bool(config.get("sweep_shrunk", False))
  synthetic = _synthetic(config)
  mark = curves.output_mark(synthetic=synthetic, shrunk=shrunk)
  for r in rows:
    r["mark"] = mark
  fileio.write_atomic(
      os.path.join(workdir, "results.md"),
      format_markdown(
          rows, title, cases.seeds(config), shrunk=shrunk, synthetic=synthetic
      ),
  )
  fileio.write_csv(
      os.path.join(workdir, "results.csv"),
      [{k: r[k] for k in FIELDS} for r in rows],
      fieldnames=FIELDS,
  )
  fileio.write_atomic(
      os.path.join(workdir, "results.png"), plot(rows, title, mark)
  )
  return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
