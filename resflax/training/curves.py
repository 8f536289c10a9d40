"""Training curves (He et al. 2016 Fig. 1 and 6): error against iterations.

A run's ``metrics.jsonl`` holds every report and evaluation; this module
draws them: train error as a thin line, test (or validation) error as a
bold one, and the learning-rate drops as dashed verticals. ``draw`` puts one
run on a given matplotlib axis (the sweep's paper figures put several on
one panel); ``plot_run`` makes a run's ``curves.png``.

Outputs of a smoke or synthetic-data run must not pass for results: every
title of such a run opens with ``output_mark`` ("SMOKE (synthetic data,
shrunk network) — not a result"), and every PNG written here carries its
full title in the PNG ``Title`` text chunk, so a reader (or a test) can
check it without looking at the pixels. The sweep's tables and the lesion
study use the same marks.

Plots use matplotlib's object API (``Figure`` + the Agg canvas) and never
pyplot, so a notebook's backend is left alone.
"""

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The words every marked output carries; tests and readers grep for them.
NOT_A_RESULT = "not a result"


def output_mark(*, synthetic: bool, shrunk: bool = False) -> str:
  """The words that open the title of an output that is not a result.

  Args:
    synthetic: the run trained or evaluated on synthetic data.
    shrunk: the networks were shrunk for a smoke run.

  Returns:
    '' for a real run, else e.g. "SMOKE (synthetic data, shrunk network)
    — not a result".
  """
  what = [
      w
      for w, on in (("synthetic data", synthetic), ("shrunk network", shrunk))
      if on
  ]
  if not what:
    return ""
  if shrunk:
    return f"SMOKE ({', '.join(what)}) — {NOT_A_RESULT}"
  return f"SYNTHETIC DATA — {NOT_A_RESULT}"


def config_mark(config) -> str:
  """``output_mark`` of one run's (or a sweep's) config.

  Synthetic when ``config.data.name`` is 'synthetic'; shrunk when the config
  is a smoke sweep's (``sweep_shrunk``).
  """
  return output_mark(
      synthetic=config.data.name == "synthetic",
      shrunk=bool(config.get("sweep_shrunk", False)),
  )


def marked(title: str, mark: str, sep: str = ":\n") -> str:
  """``title`` opened by ``mark`` (unchanged when ``mark`` is '')."""
  if not mark:
    return title
  return f"{mark}{sep}{title}" if title else mark


def png_bytes(fig, title: str, dpi: int = 110) -> bytes:
  """PNG bytes of ``fig`` with ``title`` in its ``Title`` text chunk."""
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=dpi, metadata={"Title": title})
  return buf.getvalue()


def legend_outside(ax, **kwargs):
  """A legend right of the axes, off the data; None when nothing is named."""
  if not ax.get_legend_handles_labels()[0]:
    return None
  kwargs.setdefault("fontsize", 7)
  return ax.legend(
      loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs
  )


def curve_points(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Steps and errors (in %) of a run's log.

  Args:
    records: the lines of ``metrics.jsonl`` (``RunLog.records()``).

  Returns:
    ``{'train': (steps, errors), 'eval': (steps, errors), 'eval_name':
    'test' | 'validation'}``.
  """
  train = [
      (r["step"], 100 * r["train_error"])
      for r in records
      if r["kind"] == "train" and "train_error" in r
  ]
  evals = [r for r in records if r["kind"] == "eval"]
  name = next(
      (k[: -len("_error")] for r in evals for k in r if k.endswith("_error")),
      "test",
  )
  points = [
      (r["step"], 100 * r[f"{name}_error"])
      for r in evals
      if f"{name}_error" in r
  ]
  as_arrays = lambda p: (
      np.asarray([s for s, _ in p]),
      np.asarray([e for _, e in p]),
  )
  return {
      "train": as_arrays(train),
      "eval": as_arrays(points),
      "eval_name": name,
  }


def draw(
    ax,
    records: Sequence[Mapping[str, Any]],
    label: str | None = None,
    color: str | None = None,
    lr_drops: Sequence[int] = (),
) -> None:
  """Draws one run's curves on ``ax``: thin train, bold test error, and the
  steps where the learning rate drops as dashed lines."""
  pts = curve_points(records)
  steps, errors = pts["train"]
  line = ax.plot(steps, errors, linewidth=0.7, alpha=0.8, color=color)[0]
  color = line.get_color()
  steps, errors = pts["eval"]
  ax.plot(
      steps,
      errors,
      linewidth=2.2,
      color=color,
      label=label,
      marker="o" if len(steps) < 3 else None,
  )
  for s in lr_drops:
    ax.axvline(s, color="0.6", linestyle="--", linewidth=0.7)


def _figure(width: float, height: float, panels: int = 1):
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, panels, k + 1) for k in range(panels)]


def run_figure(
    records: Sequence[Mapping[str, Any]],
    title: str,
    lr_drops: Sequence[int] = (),
    *,
    mark: str = "",
):
  """The Figure of one run's curves; ``mark`` opens its title."""
  fig, (ax,) = _figure(7.6, 4.0)
  draw(
      ax,
      records,
      label=f"{curve_points(records)['eval_name']} error",
      lr_drops=lr_drops,
  )
  ax.plot([], [], linewidth=0.7, color="0.3", label="train error")
  _style(ax, marked(title, mark), mark)
  return fig


def plot_run(
    records: Sequence[Mapping[str, Any]],
    title: str,
    lr_drops: Sequence[int] = (),
    *,
    mark: str = "",
) -> bytes:
  """PNG bytes of one run's curves (its ``curves.png``).

  Args:
    records: the run's ``metrics.jsonl`` lines.
    title: what the run is (network, seed, directory).
    lr_drops: steps where the learning rate drops.
    mark: ``config_mark`` of the run's config; '' for a real run.
  """
  fig = run_figure(records, title, lr_drops, mark=mark)
  return png_bytes(fig, marked(title, mark, ": "))


def panels_figure(
    panels: Sequence[Mapping[str, Any]], title: str = "", *, mark: str = ""
):
  """The Figure of side-by-side panels; see ``plot_panels``."""
  fig, axes = _figure(6.4 * len(panels), 4.4, len(panels))
  top = 0.0
  for ax, panel in zip(axes, panels):
    for k, (label, records, *color) in enumerate(panel["runs"]):
      draw(
          ax,
          records,
          label=label,
          color=color[0] if color else None,
          lr_drops=panel.get("lr_drops", ()) if k == 0 else (),
      )
      errors = curve_points(records)["eval"][1]
      top = max([top] + list(errors))
    _style(ax, panel["title"])
  for ax in axes:  # one scale, as in the paper's figures
    ax.set_ylim(0, min(100.0, max(top * 1.5, 5.0)))
  if title or mark:
    fig.suptitle(
        marked(title, mark), fontsize=10, color="tab:red" if mark else "black"
    )
  return fig


def plot_panels(
    panels: Sequence[Mapping[str, Any]], title: str = "", *, mark: str = ""
) -> bytes:
  """PNG bytes of side-by-side panels of several runs each.

  Args:
    panels: each ``{'title': str, 'runs': [(label, records), ...],
      'lr_drops': [steps]}``; a run may be ``(label, records, color)``
      (e.g. every seed of a case in its colour, labelled once).
    title: the figure's title (above the panels).
    mark: ``output_mark`` of the runs; '' for real runs.
  """
  fig = panels_figure(panels, title, mark=mark)
  return png_bytes(fig, marked(title, mark, ": "))


def _style(ax, title: str, mark: str = "") -> None:
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator

  ax.set_xlabel("iterations")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps count
  ax.set_ylabel("error (%)")
  ax.set_title(title, fontsize=9, color="tab:red" if mark else "black")
  ax.grid(alpha=0.3)
  legend_outside(ax)
