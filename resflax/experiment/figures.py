"""A sweep's training-curve figures (He et al. 2016 Fig. 1 and Fig. 6).

An experiment file declares them as data (``cases.Figure``: panels of
cases); after a sweep, ``write_figures`` draws each case's first seed from
its ``metrics.jsonl`` into ``DIR/<figure>.png``: thin lines train error,
bold lines test error, dashed lines the learning-rate drops.
"""

import os
from typing import List

from resflax import fileio
from resflax.experiment import cases
from resflax.training import curves
from resflax.training import workdir as workdir_lib
from resflax.training.state import lr_drop_steps


def write_figures(workdir: str, config) -> List[str]:
  """Draws every figure of ``config.sweep_figures``; returns their paths.

  A case without a finished evaluation yet is left out of its panel.
  """
  written = []
  figures = config.get("sweep_figures") or {}
  for name in sorted(figures):
    fig = figures[name]
    panels = []
    for title, members in zip(fig.panel_titles, fig.panel_cases):
      runs, drops = [], ()
      for case in members:
        path = cases.run_dir(workdir, case, config.seed)
        records = workdir_lib.RunLog(path).records()
        if any(r["kind"] == "eval" for r in records):
          runs.append((case, records))
          drops = lr_drop_steps(cases.case_config(config, case,
                                                  seed=config.seed).train)
      panels.append({"title": title, "runs": runs, "lr_drops": drops})
    if any(p["runs"] for p in panels):
      path = os.path.join(workdir, f"{name}.png")
      fileio.write_atomic(path, curves.plot_panels(panels))
      written.append(path)
  return written
