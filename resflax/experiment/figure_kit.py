"""What every figure of the lesion study shares: its setting and its style.

A ``Setting`` says what the networks are: a synthetic-data run's figures
carry its mark (``resflax.training.curves.output_mark``) as their suptitle
and in the PNG's ``Title`` chunk, and Veit et al.'s numbers
(``resflax.experiment.paper``, table ``veit``) are drawn beside ours only
for their network (54 modules, CIFAR-10). The helpers below build a figure
on an Agg canvas (no pyplot state), save it with that mark, and keep
legends off the data. ``lesion_plots`` and ``path_survival`` draw with them.
"""

import dataclasses
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resflax.experiment import paper
from resflax.training import curves

DPI = 120
PAPER_COLOR = "tab:green"  # Veit et al.'s values, in every figure


def veit(case: str) -> float:
  """A number of Veit et al. (``paper`` table ``veit``) as a float."""
  return float(paper.lookup("veit", case))


@dataclasses.dataclass(frozen=True)
class Setting:
  """What the study's networks are, for titles and the paper's values.

  Attributes:
    mark: ``curves.output_mark`` of the networks; '' for real data.
    num_modules: the ResNet's module count n.
    data: the ResNet's dataset name (``config.data.name``).
    paper: the ResNet is Veit et al.'s (n = 54, CIFAR-10): their numbers
      are drawn beside ours.
  """

  mark: str = ""
  num_modules: int = 0
  data: str = ""
  paper: bool = False

  def note(self) -> str:
    """Why the paper's values are not drawn ('' when they are)."""
    if self.paper or not self.num_modules:  # Veit's net, or nothing known
      return ""
    n_paper = int(veit("num_modules"))
    # Three short lines: a legend this wide would squeeze the axes.
    return (
        f"Veit et al.'s values not drawn:\nthey are for n = {n_paper}, "
        f"CIFAR-10;\nthis network: n = {self.num_modules}, "
        f"{self.data or '?'}"
    )


def study_setting(
    num_modules: int, data: str, other_data: Sequence[str] = ()
) -> Setting:
  """The ``Setting`` of a study.

  Args:
    num_modules: the ResNet's module count.
    data: the ResNet's ``config.data.name``.
    other_data: the other networks' (VGG, plain twin) dataset names.
  """
  synthetic = "synthetic" in (data, *other_data)
  return Setting(
      mark=curves.output_mark(synthetic=synthetic),
      num_modules=num_modules,
      data=data,
      paper=(
          not synthetic
          and data == "cifar10"
          and num_modules == int(veit("num_modules"))
      ),
  )


def new_figure(figsize, nrows: int = 1, ncols: int = 1):
  """A Figure on its own Agg canvas and its axes, always a 2-D array."""
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Figure, path: str, title: str, setting: Setting) -> Figure:
  """Writes the PNG (its Title chunk: the marked title); returns ``fig``."""
  if setting.mark:
    fig.suptitle(setting.mark, color="tab:red", fontsize=11, fontweight="bold")
  fig.tight_layout()
  fig.savefig(
      path,
      dpi=DPI,
      metadata={"Title": curves.marked(title, setting.mark, ": ")},
  )
  return fig


def integer_ticks(axis) -> None:
  """Integer ticks on ``axis``."""
  # Module counts, indices and path lengths: no 1.5 between 1 and 2.
  axis.set_major_locator(MaxNLocator(integer=True))


def legend(ax, below: bool = False) -> None:
  """The legend off the data: right of the axes, or below its x label."""
  if below:
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=2,
        borderaxespad=0.0,
    )
  else:
    curves.legend_outside(ax, fontsize=8)


def paper_note(ax, setting: Setting) -> None:
  """A legend line saying why the paper's values are missing, if they are."""
  if setting.note():
    ax.plot([], [], " ", label=setting.note())


def ref_line(ax, value_pct: float, label: str = "intact network") -> None:
  """A dashed horizontal line at ``value_pct``, labelled with it."""
  ax.axhline(
      value_pct, color="k", ls="--", lw=1, label=f"{label} ({value_pct:.2f}%)"
  )
