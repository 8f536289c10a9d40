"""Veit et al. Fig. 7: the paths that remain after deleting d modules.

A path of length k survives the deletion of d of n modules when none of its
k modules is deleted: C(n - d, k) of the C(n, k) paths of that length
(``resflax.lesion.paths.surviving_paths``). The fraction does not depend on
the network's weights, only on n, so it is drawn for the lesion study's
ResNet beside the measured error of k deletions (Fig. 5a): deleting d
modules removes long paths first, and the error follows.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import cm
from matplotlib.figure import Figure

from resflax.experiment import figure_kit
from resflax.lesion import paths as paths_lib

__all__ = ["survival_study", "plot_survival", "FIELDS"]

FIELDS = ["deleted", "length", "paths", "surviving", "fraction"]


def survival_study(n: int, deletions: Sequence[int]) -> dict[str, Any]:
  """The surviving paths per length for each number of deleted modules.

  Args:
    n: modules of the network.
    deletions: numbers of deleted modules d (those above n are dropped).

  Returns:
    ``{"num_modules", "deleted", "rows"}``: one row per (d, length k) with
    the paths of that length, the survivors (exact ints) and their
    fraction; ``deleted`` also gives each d's surviving share of all paths
    (2^-d).
  """
  counts = paths_lib.path_length_distribution(n)
  ds = sorted({int(d) for d in deletions if 0 <= d <= n})
  rows, summary = [], []
  for d in ds:
    alive = paths_lib.surviving_paths(n, d)
    frac = paths_lib.surviving_path_fractions(n, d)
    rows += [
        {
            "deleted": d,
            "length": k,
            "paths": counts[k],
            "surviving": alive[k],
            "fraction": frac[k],
        }
        for k in range(n + 1)
    ]
    summary.append({"deleted": d, "path_share": 2.0**-d})
  return {"num_modules": n, "deleted": summary, "rows": rows}


def plot_survival(
    path: str,
    study: Mapping[str, Any],
    *,
    setting: figure_kit.Setting | None = None,
) -> Figure:
  """Fraction of the paths of each length left after deleting d modules.

  Returns:
    The Figure.
  """
  setting = setting or figure_kit.Setting()
  n = study["num_modules"]
  ds = [s["deleted"] for s in study["deleted"]]
  fig, axes = figure_kit.new_figure((8, 4.4))
  ax = axes[0, 0]
  colors = cm.viridis(np.linspace(0.0, 0.9, max(len(ds), 1)))
  for d, color in zip(ds, colors):
    rows = [r for r in study["rows"] if r["deleted"] == d]
    ax.plot(
        [r["length"] for r in rows],
        [100 * r["fraction"] for r in rows],
        "-",
        color=color,
        label=f"{d} deleted ({100 * 2.0**-d:.3g}% of all paths left)",
    )
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("paths of that length remaining (%)")
  ax.set_xlim(0, n)
  figure_kit.integer_ticks(ax.xaxis)
  ax.set_title(
      f"paths remaining after deleting d of n = {n} modules "
      "(C(n-d, k) / C(n, k))",
      fontsize=10,
  )
  figure_kit.legend(ax)
  return figure_kit.save(
      fig, path, "Veit Fig. 7: paths remaining after deletions", setting
  )
