"""Training curves (He et al. 2016 Fig. 1 and 6): error against iterations.

A run's ``metrics.jsonl`` holds every report and evaluation; this module
draws them: train error as a thin line, test (or validation) error as a
bold one, and the learning-rate drops as dashed verticals. ``draw`` puts one
run on a given matplotlib axis (the sweep's paper figures put several on
one panel); ``plot_run`` makes a run's ``curves.png``.

Plots use matplotlib's object API (``Figure`` + the Agg canvas) and never
pyplot, so a notebook's backend is left alone.
"""

import io
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np


def curve_points(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Steps and errors (in %) of a run's log.

  Args:
    records: the lines of ``metrics.jsonl`` (``RunLog.records()``).

  Returns:
    ``{'train': (steps, errors), 'eval': (steps, errors), 'eval_name':
    'test' | 'validation'}``.
  """
  train = [(r["step"], 100 * r["train_error"]) for r in records
           if r["kind"] == "train" and "train_error" in r]
  evals = [r for r in records if r["kind"] == "eval"]
  name = next((k[:-len("_error")] for r in evals for k in r
               if k.endswith("_error")), "test")
  points = [(r["step"], 100 * r[f"{name}_error"]) for r in evals
            if f"{name}_error" in r]
  as_arrays = lambda p: (np.asarray([s for s, _ in p]),
                         np.asarray([e for _, e in p]))
  return {"train": as_arrays(train), "eval": as_arrays(points),
          "eval_name": name}


def draw(ax, records: Sequence[Mapping[str, Any]], label: Optional[str] = None,
         color: Optional[str] = None, lr_drops: Sequence[int] = ()) -> None:
  """Draws one run's curves on ``ax``: thin train, bold test error, and the
  steps where the learning rate drops as dashed lines."""
  pts = curve_points(records)
  steps, errors = pts["train"]
  line = ax.plot(steps, errors, linewidth=0.7, alpha=0.8, color=color)[0]
  color = line.get_color()
  steps, errors = pts["eval"]
  ax.plot(steps, errors, linewidth=2.2, color=color, label=label,
          marker="o" if len(steps) < 3 else None)
  for s in lr_drops:
    ax.axvline(s, color="0.6", linestyle="--", linewidth=0.7)


def _finish(fig) -> bytes:
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=110)
  return buf.getvalue()


def _figure(width: float, height: float, panels: int = 1):
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, panels, k + 1) for k in range(panels)]


def plot_run(records: Sequence[Mapping[str, Any]], title: str,
             lr_drops: Sequence[int] = ()) -> bytes:
  """PNG bytes of one run's curves (its ``curves.png``)."""
  fig, (ax,) = _figure(6.4, 4.0)
  draw(ax, records, label=f"{curve_points(records)['eval_name']} error",
       lr_drops=lr_drops)
  ax.plot([], [], linewidth=0.7, color="0.3", label="train error")
  _style(ax, title)
  return _finish(fig)


def plot_panels(panels: Sequence[Mapping[str, Any]]) -> bytes:
  """PNG bytes of side-by-side panels of several runs each.

  Args:
    panels: each ``{'title': str, 'runs': [(label, records), ...],
      'lr_drops': [steps]}``.
  """
  fig, axes = _figure(5.2 * len(panels), 4.0, len(panels))
  top = 0.0
  for ax, panel in zip(axes, panels):
    for k, (label, records) in enumerate(panel["runs"]):
      draw(ax, records, label=label,
           lr_drops=panel.get("lr_drops", ()) if k == 0 else ())
      errors = curve_points(records)["eval"][1]
      top = max([top] + list(errors))
    _style(ax, panel["title"])
  for ax in axes:  # one scale, as in the paper's figures
    ax.set_ylim(0, min(100.0, max(top * 1.5, 5.0)))
  return _finish(fig)


def _style(ax, title: str) -> None:
  ax.set_xlabel("iterations")
  ax.set_ylabel("error (%)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
