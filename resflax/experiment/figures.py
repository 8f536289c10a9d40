"""A sweep's figures: training curves and layer responses.

An experiment file declares them as data (``cases.Figure``: panels of
cases and a kind); after a sweep, and while it runs, ``write_figures``
draws each into ``DIR/<figure>.png``:

  ``curves`` (He et al. 2016 Fig. 6; Identity Mappings Fig. 1, 3 and 6):
    every seed of each case from its ``metrics.jsonl``, each seed its own
    lines in the case's colour (the case labelled once): thin lines train
    error, bold lines test error, dashed lines the learning-rate drops.
  ``response_std`` (He et al. 2016 Fig. 7): every finished run restored
    from its checkpoints and the std of each conv layer's response (after
    BN, before ReLU and addition) measured on ``RESPONSE_IMAGES`` test
    images, with the lesion study's code
    (``lesion_analysis.response_std_rows``, drawn by
    ``lesion_plots.response_figure``): in layer order and sorted by
    magnitude, each seed a line in its case's colour. The rows are kept in
    ``DIR/<figure>.json`` and ``.csv``, so a run is measured once (delete
    the JSON to measure again). A parallel sweep
    (``train.parallel_runs``) stacks its runs' checkpoints in
    ``DIR/<case>``: those runs are not measured (a warning says so).

The figure's title is the declared one; a smoke sweep's (shrunk networks,
synthetic data) opens with ``tables.sweep_mark``, so it cannot pass for the
paper's.
"""

import os
from typing import Any

from absl import logging

from resflax import fileio
from resflax.errors import CheckpointError, ConfigError
from resflax.experiment import (
    cases,
    lesion_analysis,
    lesion_plots,
    lesion_study,
    tables,
)
from resflax.training import curves
from resflax.training import workdir as workdir_lib
from resflax.training.state import lr_drop_steps

# Test images per network for Fig. 7, as the lesion study's signal_images.
RESPONSE_IMAGES = 500


def _evaluated(workdir: str, case: str, seed: int) -> list[dict[str, Any]]:
  """The run's ``metrics.jsonl`` lines; [] before its first evaluation."""
  records = workdir_lib.RunLog(cases.run_dir(workdir, case, seed)).records()
  return records if any(r["kind"] == "eval" for r in records) else []


def _curve_panels(workdir: str, config, fig) -> list[dict[str, Any]]:
  """The panels of a curves figure: every evaluated seed of each case."""
  panels = []
  for title, members in zip(fig.panel_titles, fig.panel_cases):
    runs, drops = [], ()
    for k, case in enumerate(members):
      logs = [_evaluated(workdir, case, s) for s in cases.seeds(config)]
      logs = [records for records in logs if records]
      # One colour per case, the legend naming it once.
      runs += [
          (case if j == 0 else None, records, f"C{k}")
          for j, records in enumerate(logs)
      ]
      if logs:
        drops = lr_drop_steps(
            cases.case_config(config, case, seed=config.seed).train
        )
    panels.append({"title": title, "runs": runs, "lr_drops": drops})
  return panels


def _curves(workdir: str, config, name: str):
  fig = config.sweep_figures[name]
  panels = _curve_panels(workdir, config, fig)
  if not any(p["runs"] for p in panels):
    return None
  return curves.panels_figure(panels, fig.title, mark=tables.sweep_mark(config))


def _measure(workdir: str, case: str, seed: int) -> list[dict[str, Any]]:
  """Fig. 7 rows of one finished run; [] (logged) when it cannot restore."""
  path = cases.run_dir(workdir, case, seed)
  stacked = os.path.join(os.path.dirname(path), "checkpoints")
  if not os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isdir(
      stacked
  ):
    logging.warning(
        "response std of %s not measured: a parallel sweep keeps its runs' "
        "checkpoints stacked in %s; run the figure's cases with "
        "--config.train.parallel_runs=1",
        path,
        stacked,
    )
    return []
  try:
    net = lesion_study.load_run(path, case)
  except (ConfigError, CheckpointError) as e:
    logging.warning("response std of %s not measured: %s", path, e)
    return []
  return [
      {"case": case, "seed": seed, "step": net.step, **r}
      for r in lesion_analysis.response_std_rows(net, RESPONSE_IMAGES, case)
  ]


def response_rows(workdir: str, config, name: str) -> list[dict[str, Any]]:
  """Fig. 7 rows of every finished run of figure ``name``, case by case.

  Runs measured before come from ``DIR/<name>.json``; newly finished ones
  are restored and measured, and both files rewritten.
  """
  fig = config.sweep_figures[name]
  path = os.path.join(workdir, f"{name}.json")
  kept = fileio.read_json(path)["rows"] if os.path.exists(path) else []
  rows, new = [], False
  for case in fig.panel_cases[0]:
    for seed in cases.seeds(config):
      have = [r for r in kept if r["case"] == case and r["seed"] == seed]
      done = cases.run_status(cases.run_dir(workdir, case, seed)) == "ok"
      if not have and done:
        have = _measure(workdir, case, seed)
        new = new or bool(have)
      rows += have
  if new:
    fileio.write_json(path, {"title": fig.title, "rows": rows})
    fileio.write_csv(os.path.join(workdir, f"{name}.csv"), rows)
  return rows


def _responses(workdir: str, config, name: str):
  rows = response_rows(workdir, config, name)
  if not rows:
    return None
  drawn = lesion_plots.response_figure(rows)
  mark = tables.sweep_mark(config)
  drawn.suptitle(
      curves.marked(config.sweep_figures[name].title, mark),
      fontsize=10,
      color="tab:red" if mark else "black",
  )
  return drawn


# cases.Figure.kind -> how it is drawn.
_DRAW = {"curves": _curves, "response_std": _responses}
assert set(_DRAW) == set(cases.FIGURE_KINDS)


def figure(workdir: str, config, name: str):
  """The matplotlib Figure of ``config.sweep_figures[name]``.

  Returns:
    The Figure (its suptitle: the marked title), or None when no run of it
    has finished an evaluation (curves) or training (response_std) yet.

  Raises:
    ConfigError: a figure kind this version does not draw, naming the
      allowed ones.
  """
  kind = config.sweep_figures[name].get("kind", "curves")
  if kind not in _DRAW:
    raise ConfigError(
        f"config.sweep_figures.{name}.kind={kind!r}: use one of "
        f"{', '.join(_DRAW)}"
    )
  return _DRAW[kind](workdir, config, name)


def write_figures(workdir: str, config) -> list[str]:
  """Draws every figure of ``config.sweep_figures``; returns their paths.

  A run not finished yet is left out of its panel.
  """
  written = []
  figures = config.get("sweep_figures") or {}
  mark = tables.sweep_mark(config)
  for name in sorted(figures):
    drawn: Any | None = figure(workdir, config, name)
    if drawn is not None:
      path = os.path.join(workdir, f"{name}.png")
      title = curves.marked(figures[name].title, mark, ": ")
      fileio.write_atomic(path, curves.png_bytes(drawn, title))
      written.append(path)
  return written
