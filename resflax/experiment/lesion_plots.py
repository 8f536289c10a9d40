"""The figures of the lesion study (Veit et al. 2016, He et al. Fig. 7).

Each function draws one study's results (the dicts of
``resflax.experiment.lesion_study``) into a PNG and returns the Figure.
Figures are built with matplotlib's object API on an Agg canvas: no pyplot
state and no backend switch, so writing them from a notebook leaves its
inline plots alone.

What a figure claims is what it shows: titles say what is plotted, errors
are in percent, counts get integer ticks, and legends sit outside the axes.
A ``Setting`` says what the networks are: a synthetic-data run's figures
carry its mark (``resflax.training.curves.output_mark``) as their suptitle
and in the PNG's ``Title`` chunk, and Veit et al.'s numbers
(``resflax.experiment.paper``, table ``veit``) are drawn beside ours only
for their network (54 modules, CIFAR-10); for any other the legend says
they were left out.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resflax.experiment import figure_kit as kit
from resflax.experiment.figure_kit import Setting, study_setting, veit

__all__ = [
    "Setting",
    "count_scatter",
    "plot_gradients",
    "plot_k",
    "plot_paths",
    "plot_reorder",
    "plot_response",
    "plot_single",
    "response_figure",
    "setting_of",
    "study_setting",
    "veit",
]


def plot_single(
    path: str,
    studies: Mapping[str, dict[str, Any]],
    chance: float,
    *,
    setting: Setting = Setting(),
) -> Figure:
  """Veit Fig. 3: error with each module (ResNet) or layer (VGG) deleted.

  Args:
    path: the PNG to write.
    studies: role -> ``single_deletion_study`` result; one panel each.
    chance: the chance-level error (a fraction), drawn for reference.
    setting: the networks (``study_setting``).

  Returns:
    The Figure.
  """
  fig, axes = kit.new_figure((8 * len(studies), 4.2), 1, len(studies))
  for ax, (role, st) in zip(axes[0], studies.items()):
    rows = st["rows"]
    idx = np.array([r["module"] for r in rows]) + 1
    err = 100 * np.array([r["error"] for r in rows])
    down = np.array([r["downsampling"] for r in rows], bool)
    ax.plot(idx, err, "-", color="tab:blue", lw=1)
    what = "module" if role == "resnet" else "layer"
    ax.plot(
        idx[~down],
        err[~down],
        "o",
        color="tab:blue",
        ms=4,
        label=f"{what} deleted",
    )
    if down.any():
      ax.plot(
          idx[down],
          err[down],
          "s",
          color="tab:red",
          ms=6,
          label=f"downsampling {what} deleted",
      )
    kit.ref_line(ax, 100 * st["stats"]["intact_error"])
    ax.axhline(
        100 * chance,
        color="gray",
        ls=":",
        lw=1,
        label=f"chance ({100 * chance:.0f}%)",
    )
    if role == "resnet" and setting.paper:
      full = veit("full_model_error")
      ax.axhline(
          full,
          color=kit.PAPER_COLOR,
          ls="-.",
          lw=1.2,
          label=f"Veit et al.: intact ResNet-110 ({full:.2f}%)",
      )
    elif role == "resnet":
      kit.paper_note(ax, setting)
    ax.set_xlabel(f"deleted {what} (1 = first, forward order)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    kit.integer_ticks(ax.xaxis)
    ax.set_title(f"{role}: test error with one {what} deleted (Veit Fig. 3)")
    kit.legend(ax)
  return kit.save(
      fig,
      path,
      "Veit Fig. 3: test error with one module or " "layer deleted",
      setting,
  )


def plot_k(
    path: str,
    study: Mapping[str, Any],
    intact: float,
    *,
    setting: Setting = Setting(),
) -> Figure:
  """Veit Fig. 5a: error against the number of modules deleted.

  Args:
    path: the PNG to write.
    study: ``k_deletion_study``'s result (errors as fractions).
    intact: the intact network's error (a fraction).
    setting: the networks (``study_setting``).

  Returns:
    The Figure.
  """
  fig, axes = kit.new_figure((9, 4.2))
  ax = axes[0, 0]
  per = study["per_k"]
  ax.errorbar(
      [p["k"] for p in per],
      [100 * p["mean"] for p in per],
      yerr=[100 * p["std"] for p in per],
      fmt="o-",
      capsize=3,
      label="mean ± std over draws",
  )
  rows = study["rows"]
  if rows:
    ax.plot(
        [x["k"] for x in rows],
        [100 * x["error"] for x in rows],
        ".",
        color="gray",
        alpha=0.5,
        label="single draws",
    )
  kit.ref_line(ax, 100 * intact)
  if setting.paper:
    ax.plot(
        [10],
        [100 * veit("delete_10_modules_error")],
        "*",
        ms=12,
        color=kit.PAPER_COLOR,
        label="Veit et al.: 10 deleted, error about "
        f"{100 * veit('delete_10_modules_error'):.0f}%",
    )
    severe = veit("delete_severe_modules")
    ax.axvline(
        severe,
        color=kit.PAPER_COLOR,
        ls="-.",
        lw=1,
        label=f"Veit et al.: severe drop at {severe:.0f} deleted",
    )
  else:
    kit.paper_note(ax, setting)
  ax.set_xlabel("number of modules deleted (k)")
  ax.set_ylabel("test error (%)")
  kit.integer_ticks(ax.xaxis)
  ax.set_title(
      "test error against the number of random modules deleted "
      "(Veit Fig. 5a)",
      fontsize=10,
  )
  kit.legend(ax)
  return kit.save(
      fig,
      path,
      "Veit Fig. 5a: test error against the number of " "modules deleted",
      setting,
  )


def count_scatter(fig, ax, x, y, counts, label: str):
  """A scatter coloured by an integer count, with a discrete colour bar.

  One colour per count and a tick on each (no 1.25 "pairs swapped").

  Args:
    fig: the Figure (the colour bar takes room from ``ax``).
    ax: the axes to draw on.
    x, y: the points.
    counts: an integer per point (e.g. pairs swapped).
    label: the colour bar's label.

  Returns:
    The colour bar.
  """
  counts = np.asarray(counts).astype(int)
  levels = np.arange(counts.min(), counts.max() + 1)
  cmap = colormaps["viridis"].resampled(len(levels))
  norm = BoundaryNorm(np.append(levels, levels[-1] + 1) - 0.5, cmap.N)
  sc = ax.scatter(
      np.asarray(x), np.asarray(y), c=counts, cmap=cmap, norm=norm, s=14
  )
  ticks = levels if len(levels) <= 12 else MaxNLocator(integer=True)
  return fig.colorbar(sc, ax=ax, label=label, ticks=ticks)


def plot_reorder(
    path: str,
    study: Mapping[str, Any],
    intact: float,
    *,
    setting: Setting = Setting(),
) -> Figure:
  """Veit Fig. 5b: error against Kendall's tau after random swaps.

  The paper gives no number for this figure (only that the error rises
  smoothly as tau falls), so none is drawn.

  Returns:
    The Figure.
  """
  fig, axes = kit.new_figure((7.5, 4.8))
  ax = axes[0, 0]
  rows = study["rows"]
  if rows:
    count_scatter(
        fig,
        ax,
        [r["kendall_tau"] for r in rows],
        [100 * r["error"] for r in rows],
        [r["swaps"] for r in rows],
        "pairs swapped",
    )
  else:
    ax.text(
        0.5,
        0.5,
        study.get("skipped", "no swaps"),
        ha="center",
        transform=ax.transAxes,
    )
  kit.ref_line(ax, 100 * intact)
  ax.invert_xaxis()  # tau falls from 1 as the order is corrupted
  ax.set_xlabel(
      "Kendall's tau between new and original order (movable " "modules)"
  )
  ax.set_ylabel("test error (%)")
  ax.set_title(
      "test error after swapping random pairs of modules " "(Veit Fig. 5b)",
      fontsize=10,
  )
  kit.legend(ax, below=True)
  return kit.save(
      fig,
      path,
      "Veit Fig. 5b: test error against Kendall's tau " "after random swaps",
      setting,
  )


def _paper_span(ax, low: str, high: str, text: str) -> None:
  lo, hi = veit(low), veit(high)
  ax.axvspan(
      lo - 0.5,
      hi + 0.5,
      facecolor="none",
      edgecolor=kit.PAPER_COLOR,
      hatch="//",
      lw=1,
      label=f"Veit et al. (n = 54): {text} " f"{lo:.0f}-{hi:.0f}",
  )


def _gradient_panel(ax, g: Mapping[str, Any]) -> None:
  ax.errorbar(g["lengths"], g["mean"], yerr=g["std"], fmt="o", ms=3, capsize=2)
  ax.set_yscale("log")
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("gradient norm at the input")
  kit.integer_ticks(ax.xaxis)
  ax.set_title(
      f"(b) gradient norm per path length ({g['samples']} samples)", fontsize=10
  )


def plot_paths(
    path: str, study: Mapping[str, Any], *, setting: Setting = Setting()
) -> Figure:
  """Veit Fig. 6: path lengths, gradient per length, total per length.

  Returns:
    The Figure.
  """
  rows = study["rows"]
  n = study["num_modules"]
  k = np.arange(n + 1)
  fig, axes = kit.new_figure((20, 4.4), 1, 3)
  ax = axes[0, 0]
  ax.bar(
      k,
      [100 * r["path_fraction"] for r in rows],
      color="tab:blue",
      label="paths of each length",
  )
  if setting.paper:
    _paper_span(
        ax,
        "path_length_95pct_min_modules",
        "path_length_95pct_max_modules",
        f">{veit('path_length_bulk_pct'):.0f}% of paths in",
    )
  else:
    kit.paper_note(ax, setting)
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("paths (% of all 2^n)")
  kit.integer_ticks(ax.xaxis)
  ax.set_title(f"(a) path length distribution, n = {n}", fontsize=10)
  kit.legend(ax)
  _gradient_panel(axes[0, 1], study["gradients"])
  ax = axes[0, 2]
  eff = study["effective"]
  ax.plot(
      k,
      [100 * r["total_gradient_share"] for r in rows],
      "-o",
      ms=3,
      label="share of the total gradient",
  )
  ax.axvspan(
      eff["low"] - 0.5,
      eff["high"] + 0.5,
      color="tab:orange",
      alpha=0.25,
      label=f"{eff['gradient_share']:.0%} of the "
      f"gradient: {eff['low']}-{eff['high']}",
  )
  if setting.paper:
    _paper_span(
        ax,
        "effective_path_min_modules",
        "effective_path_max_modules",
        "effective paths",
    )
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("share of the total gradient (%)")
  kit.integer_ticks(ax.xaxis)
  ax.set_title("(c) total gradient per path length", fontsize=10)
  kit.legend(ax)
  return kit.save(
      fig,
      path,
      "Veit Fig. 6: path lengths and the gradient per " "path length",
      setting,
  )


def response_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
  """He et al. Fig. 7: response std per layer, in order and sorted.

  The lesion study's ``plot_response`` and a sweep's declared Fig. 7
  (``resflax.experiment.figures``) draw it.

  Args:
    rows: ``lesion_analysis.response_std_rows`` of every network, in layer
      order. Rows with a ``seed`` make one line per seed: every seed of a
      label in the label's colour, labelled once.

  Returns:
    The Figure, two panels: layer order (top) and sorted by magnitude.
  """
  fig, axes = kit.new_figure((9, 7), 2, 1)
  top, bottom = axes[0, 0], axes[1, 0]
  labels = list(dict.fromkeys(r["label"] for r in rows))
  for k, label in enumerate(labels):
    seeds = dict.fromkeys(r.get("seed") for r in rows if r["label"] == label)
    for j, seed in enumerate(seeds):
      std = np.array(
          [
              r["std"]
              for r in rows
              if r["label"] == label and r.get("seed") == seed
          ]
      )
      layers = np.arange(1, std.size + 1)
      style = {"color": f"C{k}", "label": label if j == 0 else None}
      top.plot(layers, std, "-", **style)
      bottom.plot(layers, np.sort(std)[::-1], "-", **style)
  top.set_xlabel("layer index (original)")
  bottom.set_xlabel("layer index (sorted by magnitude)")
  for ax in (top, bottom):
    ax.set_ylabel("std of response\n(after BN, before ReLU/add)")
    kit.integer_ticks(ax.xaxis)
    kit.legend(ax)
  top.set_title("std of each layer's response (He et al. 2016 Fig. 7)")
  return fig


def plot_response(
    path: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    setting: Setting = Setting(),
) -> Figure:
  """Writes ``response_figure(rows)`` to ``path``; returns the Figure."""
  return kit.save(
      response_figure(rows),
      path,
      "He et al. Fig. 7: std of each layer's response",
      setting,
  )


def plot_gradients(
    path: str,
    grad_rows: Sequence[Mapping[str, Any]],
    scale_rows: Sequence[Mapping[str, Any]],
    *,
    setting: Setting = Setting(),
) -> Figure:
  """Gradient norm at every module input, and the lambda^(L-l) factor.

  Returns:
    The Figure.
  """
  fig, axes = kit.new_figure((16, 4.2), 1, 2)
  ax = axes[0, 0]
  for label in dict.fromkeys(r["label"] for r in grad_rows):
    rs = [r for r in grad_rows if r["label"] == label]
    ax.plot(
        [r["position"] for r in rs],
        [r["grad_norm"] for r in rs],
        "-o",
        ms=3,
        label=label,
    )
  ax.set_yscale("log")
  ax.set_xlabel("module input (forward order; last = head input)")
  ax.set_ylabel("norm of d loss / d x")
  kit.integer_ticks(ax.xaxis)
  ax.set_title("gradient norm at every module input")
  kit.legend(ax)
  ax = axes[0, 1]
  if scale_rows:
    lam = scale_rows[0]["lambda"]
    pos = [r["position"] for r in scale_rows]
    ax.plot(
        pos,
        [r["predicted"] for r in scale_rows],
        "k--",
        label=f"lambda^(L-l), lambda = {lam}",
    )
    ax.plot(
        pos,
        [r["ratio_shortcut_only"] for r in scale_rows],
        "-o",
        ms=3,
        label="measured, shortcuts only",
    )
    ax.plot(
        pos,
        [r["ratio_full"] for r in scale_rows],
        "-s",
        ms=3,
        label="measured, whole network",
    )
    ax.set_yscale("log")
    kit.legend(ax)
  ax.set_xlabel("module input l")
  ax.set_ylabel("gradient at x_l / gradient at x_L")
  kit.integer_ticks(ax.xaxis)
  ax.set_title("scaled shortcut h(x) = lambda x (Identity Mappings eq. 7)")
  return kit.save(fig, path, "gradient norm at every module input", setting)


def setting_of(res: Mapping[str, Any]) -> Setting | None:
  """The ``Setting`` saved in a study's results (``res['setting']``)."""
  saved = res.get("setting")
  return None if saved is None else Setting(**saved)
