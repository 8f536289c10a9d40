"""The figures of the lesion study (Veit et al. 2016, He et al. Fig. 7).

Each function draws one study's results (the dicts of
``resflax.experiment.lesion_study``) into a PNG. Figures are built with
matplotlib's object API on an Agg canvas: no pyplot state and no backend
switch, so writing them from a notebook leaves its inline plots alone.
"""

from typing import Any, Dict, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

__all__ = ["plot_gradients", "plot_k", "plot_paths", "plot_reorder",
           "plot_response", "plot_single"]

_DPI = 120


def _figure(figsize, nrows: int = 1, ncols: int = 1):
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)


def _ref_line(ax, value, label="intact network"):
  ax.axhline(value, color="k", ls="--", lw=1, label=f"{label} ({value:.3f})")


def plot_single(path: str, studies: Mapping[str, Dict[str, Any]],
                chance: float) -> None:
  """Veit Fig. 3: error with each module (ResNet) or layer (VGG) deleted.

  Args:
    path: the PNG to write.
    studies: role -> ``single_deletion_study`` result; one panel each.
    chance: the chance-level error, drawn for reference.
  """
  fig, axes = _figure((6 * len(studies), 4), 1, len(studies))
  for ax, (role, st) in zip(axes[0], studies.items()):
    rows = st["rows"]
    idx = np.array([r["module"] for r in rows]) + 1
    err = np.array([r["error"] for r in rows])
    down = np.array([r["downsampling"] for r in rows], bool)
    ax.plot(idx, err, "-", color="tab:blue", lw=1)
    ax.plot(idx[~down], err[~down], "o", color="tab:blue", ms=4,
            label="module deleted")
    if down.any():
      ax.plot(idx[down], err[down], "s", color="tab:red", ms=6,
              label="downsampling module deleted")
    _ref_line(ax, st["stats"]["intact_error"])
    ax.axhline(chance, color="gray", ls=":", lw=1,
               label=f"chance ({chance:.2f})")
    what = "module" if role == "resnet" else "layer"
    ax.set_xlabel(f"deleted {what} (forward order)")
    ax.set_ylabel("test error")
    ax.set_ylim(0, 1)
    ax.set_title(f"{role}: one {what} deleted (Veit Fig. 3)")
    ax.legend(fontsize=8)
  _save(fig, path)


def plot_k(path: str, study: Mapping[str, Any], intact: float) -> None:
  """Veit Fig. 5a: error against the number of modules deleted."""
  fig, axes = _figure((6, 4))
  ax = axes[0, 0]
  per = study["per_k"]
  ax.errorbar([p["k"] for p in per], [p["mean"] for p in per],
              yerr=[p["std"] for p in per], fmt="o-", capsize=3,
              label="mean ± std over draws")
  rows = study["rows"]
  ax.plot([x["k"] for x in rows], [x["error"] for x in rows], ".",
          color="gray", alpha=0.5, label="single draws")
  _ref_line(ax, intact)
  ax.set_xlabel("number of modules deleted (k)")
  ax.set_ylabel("test error")
  ax.set_title("k random modules deleted (Veit Fig. 5a)")
  ax.legend(fontsize=8)
  _save(fig, path)


def plot_reorder(path: str, study: Mapping[str, Any], intact: float) -> None:
  """Veit Fig. 5b: error against Kendall's tau after random swaps."""
  fig, axes = _figure((6, 4))
  ax = axes[0, 0]
  rows = study["rows"]
  if rows:
    sc = ax.scatter([r["kendall_tau"] for r in rows],
                    [r["error"] for r in rows], c=[r["swaps"] for r in rows],
                    cmap="viridis", s=14)
    fig.colorbar(sc, ax=ax, label="pairs swapped")
  else:
    ax.text(0.5, 0.5, study.get("skipped", "no swaps"), ha="center",
            transform=ax.transAxes)
  _ref_line(ax, intact)
  ax.invert_xaxis()  # tau falls from 1 as the order is corrupted
  ax.set_xlabel("Kendall tau between new and original order (movable "
                "modules)")
  ax.set_ylabel("test error")
  ax.set_title("random pairs of modules swapped (Veit Fig. 5b)")
  ax.legend(fontsize=8)
  _save(fig, path)


def plot_paths(path: str, study: Mapping[str, Any]) -> None:
  """Veit Fig. 6: path lengths, gradient per length, total per length."""
  rows = study["rows"]
  n = study["num_modules"]
  k = np.arange(n + 1)
  fig, axes = _figure((16, 4), 1, 3)
  ax = axes[0, 0]
  ax.bar(k, [r["path_fraction"] for r in rows], color="tab:blue")
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("fraction of all 2^n paths")
  ax.set_title(f"(a) path length distribution, n = {n}")
  ax = axes[0, 1]
  g = study["gradients"]
  ax.errorbar(g["lengths"], g["mean"], yerr=g["std"], fmt="o", ms=3,
              capsize=2)
  ax.set_yscale("log")
  ax.set_xlabel("path length k")
  ax.set_ylabel("gradient norm at the input")
  ax.set_title(f"(b) gradient per path length ({g['samples']} samples)")
  ax = axes[0, 2]
  eff = study["effective"]
  ax.plot(k, [r["total_gradient_share"] for r in rows], "-o", ms=3)
  ax.axvspan(eff["low"] - 0.5, eff["high"] + 0.5, color="tab:orange",
             alpha=0.25, label=f"{eff['gradient_share']:.0%} of the "
                               f"gradient: {eff['low']}-{eff['high']}")
  ax.set_xlabel("path length k")
  ax.set_ylabel("share of the total gradient")
  ax.set_title("(c) total gradient per path length")
  ax.legend(fontsize=8)
  _save(fig, path)


def plot_response(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """He et al. Fig. 7: response std per layer, in order and sorted."""
  fig, axes = _figure((7, 7), 2, 1)
  top, bottom = axes[0, 0], axes[1, 0]
  for label in dict.fromkeys(r["label"] for r in rows):
    std = np.array([r["std"] for r in rows if r["label"] == label])
    layers = np.arange(1, std.size + 1)
    top.plot(layers, std, "-", label=label)
    bottom.plot(layers, np.sort(std)[::-1], "-", label=label)
  top.set_xlabel("layer index (original)")
  bottom.set_xlabel("layer index (sorted by magnitude)")
  for ax in (top, bottom):
    ax.set_ylabel("std of response (after BN, before ReLU/add)")
    ax.legend(fontsize=8)
  top.set_title("layer responses (He et al. 2016 Fig. 7)")
  _save(fig, path)


def plot_gradients(path: str, grad_rows: Sequence[Mapping[str, Any]],
                   scale_rows: Sequence[Mapping[str, Any]]) -> None:
  """Gradient norm at every module input, and the lambda^(L-l) factor."""
  fig, axes = _figure((13, 4), 1, 2)
  ax = axes[0, 0]
  for label in dict.fromkeys(r["label"] for r in grad_rows):
    rs = [r for r in grad_rows if r["label"] == label]
    ax.plot([r["position"] for r in rs], [r["grad_norm"] for r in rs], "-o",
            ms=3, label=label)
  ax.set_yscale("log")
  ax.set_xlabel("module input (forward order; last = head input)")
  ax.set_ylabel("norm of d loss / d x")
  ax.set_title("gradient at every module input")
  ax.legend(fontsize=8)
  ax = axes[0, 1]
  if scale_rows:
    lam = scale_rows[0]["lambda"]
    pos = [r["position"] for r in scale_rows]
    ax.plot(pos, [r["predicted"] for r in scale_rows], "k--",
            label=f"lambda^(L-l), lambda = {lam}")
    ax.plot(pos, [r["ratio_shortcut_only"] for r in scale_rows], "-o", ms=3,
            label="measured, shortcuts only")
    ax.plot(pos, [r["ratio_full"] for r in scale_rows], "-s", ms=3,
            label="measured, whole network")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
  ax.set_xlabel("module input l")
  ax.set_ylabel("gradient at x_l / gradient at x_L")
  ax.set_title("scaled shortcut h(x) = lambda x (Identity Mappings eq. 7)")
  _save(fig, path)
