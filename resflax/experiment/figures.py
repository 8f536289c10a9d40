"""A sweep's training-curve figures (He et al. 2016 Fig. 1 and Fig. 6).

An experiment file declares them as data (``cases.Figure``: panels of
cases); after a sweep, ``write_figures`` draws each case's first seed from
its ``metrics.jsonl`` into ``DIR/<figure>.png``: thin lines train error,
bold lines test error, dashed lines the learning-rate drops. The figure's
title is the declared one; a smoke sweep's (shrunk networks, synthetic
data) opens with ``tables.sweep_mark``, so it cannot pass for the paper's.
"""

import os
from typing import Any

from resflax import fileio
from resflax.experiment import cases, tables
from resflax.training import curves
from resflax.training import workdir as workdir_lib
from resflax.training.state import lr_drop_steps


def _panels(workdir: str, config, fig) -> list[dict[str, Any]]:
  """The panels of one declared figure; unfinished cases left out."""
  panels = []
  for title, members in zip(fig.panel_titles, fig.panel_cases):
    runs, drops = [], ()
    for case in members:
      path = cases.run_dir(workdir, case, config.seed)
      records = workdir_lib.RunLog(path).records()
      if any(r["kind"] == "eval" for r in records):
        runs.append((case, records))
        drops = lr_drop_steps(
            cases.case_config(config, case, seed=config.seed).train
        )
    panels.append({"title": title, "runs": runs, "lr_drops": drops})
  return panels


def figure(workdir: str, config, name: str):
  """The matplotlib Figure of ``config.sweep_figures[name]``.

  Returns:
    The Figure (its suptitle: the marked title), or None when no case of
    it has finished an evaluation yet.
  """
  fig = config.sweep_figures[name]
  panels = _panels(workdir, config, fig)
  if not any(p["runs"] for p in panels):
    return None
  return curves.panels_figure(panels, fig.title, mark=tables.sweep_mark(config))


def write_figures(workdir: str, config) -> list[str]:
  """Draws every figure of ``config.sweep_figures``; returns their paths.

  A case without a finished evaluation yet is left out of its panel.
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
