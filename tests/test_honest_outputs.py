"""Nothing synthetic passes for a result, and the plots read correctly.

Every table, figure and summary of a smoke or synthetic-data run opens with
its mark (``curves.output_mark``); a real run's do not. Figures: errors in
percent, integer ticks on counts, a discrete colour bar for pairs swapped,
legends off the data, and the paper's values only beside the paper's
network. The notebooks' cells are executed one by one with stand-ins for
training and pyplot (the notebooks themselves run in test_notebooks.py):
what they print must match what they do.
"""

import io
import json
import math
import os
import pathlib
import types

import nbformat
import numpy as np
import pytest
from helpers import REPO, SHORTCUTS, FakeTrainer, lesion_config, small_sweep
from helpers import summary_inputs as _summary_inputs
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from resflax import fileio, training
from resflax.config import load_experiment
from resflax.experiment import (
    cases,
    figures,
    lesion_plots,
    lesion_study,
    lesion_summary,
    paper,
    sweep,
    tables,
)
from resflax.training import curves
from resflax.training import workdir as workdir_lib

NOTEBOOKS = pathlib.Path(REPO) / "notebooks"
SMOKE_MARK = curves.output_mark(synthetic=True, shrunk=True)
SYNTHETIC_MARK = curves.output_mark(synthetic=True)


# --------------------------------------------------------------------------
# Checks on figures


def png_title(path) -> str:
  """The ``Title`` text chunk of a PNG written by resflax."""
  with Image.open(path) as image:
    return image.text.get("Title", "")


def assert_legends_off_the_data(fig):
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  legends = 0
  for ax in fig.axes:
    legend = ax.get_legend()
    if legend is not None:
      legends += 1
      assert not legend.get_window_extent(renderer).overlaps(
          ax.get_window_extent(renderer)
      ), ax.get_title()
  assert legends, "no legend to check"


def assert_integer_ticks(axis):
  lo, hi = sorted(axis.get_view_interval())
  ticks = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
  assert ticks and all(float(t).is_integer() for t in ticks), ticks


def legend_labels(fig):
  return [
      label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]
  ]


def test_marks_say_what_is_synthetic_or_shrunk():
  assert curves.output_mark(synthetic=False) == ""
  assert SMOKE_MARK == "SMOKE (synthetic data, shrunk network) — not a result"
  assert SYNTHETIC_MARK == "SYNTHETIC DATA — not a result"
  assert curves.marked("t", "") == "t"
  assert curves.marked("t", SYNTHETIC_MARK, ": ") == f"{SYNTHETIC_MARK}: t"
  smoke = load_experiment(
      os.path.join(REPO, "experiments", "cifar_resnet.py"), "smoke"
  )
  real = load_experiment(
      os.path.join(REPO, "experiments", "cifar_resnet.py"), "20"
  )
  assert curves.config_mark(smoke) == SYNTHETIC_MARK
  assert curves.config_mark(real) == ""


# --------------------------------------------------------------------------
# The sweep: results.md, .csv, .png, declared figures, curves.png


def test_smoke_sweep_results_open_with_the_mark(tmp_path, monkeypatch):
  config = small_sweep()
  monkeypatch.setattr(
      training, "train_and_evaluate", FakeTrainer(fail={("dropout", 1)})
  )
  sweep.run(config, str(tmp_path))
  md = (tmp_path / "results.md").read_text().splitlines()
  assert md[0].startswith(f"# {SMOKE_MARK}: Identity Mappings Table 1")
  assert "Δ is left out" in "\n".join(md)
  with open(tmp_path / "results.csv") as f:
    assert f.readline().startswith("mark,case,")
  rows = fileio.read_csv(tmp_path / "results.csv")
  assert rows and all(r["mark"] == SMOKE_MARK for r in rows)
  assert png_title(tmp_path / "results.png").startswith(f"{SMOKE_MARK}: ")
  fig = tables.results_figure(
      tables.case_rows(str(tmp_path), config),
      config.sweep_title,
      tables.sweep_mark(config),
  )
  ax = fig.axes[0]
  assert ax.get_title().startswith(SMOKE_MARK)
  assert "%" in ax.get_xlabel()
  # The paper's numbers are a reference for another setting here.
  assert "paper" not in legend_labels(fig)
  assert any("full-size, real data" in x for x in legend_labels(fig))
  assert_legends_off_the_data(fig)


def test_real_sweep_results_carry_no_mark(tmp_path, monkeypatch):
  config = load_experiment(SHORTCUTS, "original,dropout")
  config.seeds = 2
  monkeypatch.setattr(training, "train_and_evaluate", FakeTrainer())
  sweep.run(config, str(tmp_path))
  assert tables.sweep_mark(config) == ""
  md = (tmp_path / "results.md").read_text()
  assert md.splitlines()[0] == f"# {config.sweep_title}"
  assert curves.NOT_A_RESULT not in md
  assert all(r["mark"] == "" for r in fileio.read_csv(tmp_path / "results.csv"))
  assert png_title(tmp_path / "results.png") == config.sweep_title
  fig = tables.results_figure(
      tables.case_rows(str(tmp_path), config), config.sweep_title
  )
  assert "paper" in legend_labels(fig)


def _fig6_logs(workdir, config):
  for case in cases.case_names(config):
    log = workdir_lib.RunLog(cases.run_dir(str(workdir), case, config.seed))
    os.makedirs(os.path.dirname(log.path), exist_ok=True)
    for step in (2, 4, 6):
      log.append(step, "train", train_error=0.5, learning_rate=0.1)
      log.append(step, "eval", test_error=0.4)


def test_smoke_fig6_says_so(tmp_path):
  config = load_experiment(
      os.path.join(REPO, "experiments/cifar_resnet.py"), "fig6,smoke"
  )
  _fig6_logs(tmp_path, config)
  assert figures.write_figures(str(tmp_path), config) == [
      str(tmp_path / "fig6.png")
  ]
  declared = config.sweep_figures["fig6"].title
  assert png_title(tmp_path / "fig6.png") == f"{SMOKE_MARK}: {declared}"
  fig = figures.figure(str(tmp_path), config, "fig6")
  assert fig.get_suptitle() == f"{SMOKE_MARK}:\n{declared}"
  for ax in fig.axes:
    assert "%" in ax.get_ylabel()
    assert_integer_ticks(ax.xaxis)  # iterations 2..6, no 2.5
  assert_legends_off_the_data(fig)


def test_curves_png_title_says_synthetic():
  records = [
      {"step": s, "kind": k, "train_error": 0.5, "test_error": 0.4}
      for s in (1, 2, 3)
      for k in ("train", "eval")
  ]
  smoke = load_experiment(
      os.path.join(REPO, "experiments/cifar_resnet.py"), "smoke"
  )
  mark = curves.config_mark(smoke)
  fig = curves.run_figure(records, "cifar_resnet depth 8", mark=mark)
  assert fig.axes[0].get_title() == f"{SYNTHETIC_MARK}:\ncifar_resnet depth 8"
  assert "%" in fig.axes[0].get_ylabel()
  assert_integer_ticks(fig.axes[0].xaxis)
  assert_legends_off_the_data(fig)
  png = curves.plot_run(records, "cifar_resnet depth 8", mark=mark)
  with Image.open(io.BytesIO(png)) as image:
    assert image.text["Title"] == f"{SYNTHETIC_MARK}: cifar_resnet depth 8"
  real = curves.run_figure(records, "cifar_resnet depth 20")
  assert real.axes[0].get_title() == "cifar_resnet depth 20"


# --------------------------------------------------------------------------
# The lesion study


def fake_studies(n: int):
  """Study results of the shapes ``lesion_analysis`` returns, for n modules."""
  down = (n // 3, 2 * n // 3)
  rows = [
      {
          "network": "resnet",
          "module": i,
          "downsampling": i in down,
          "error": 0.1 + 0.01 * i,
      }
      for i in range(n)
  ]
  single = {
      "rows": rows,
      "stats": {
          "intact_error": 0.1,
          "mean_error": 0.15,
          "max_error": 0.2,
          "min_error": 0.1,
          "num_modules": n,
      },
  }
  draws = [
      {"k": k, "draw": d, "error": 0.1 + 0.02 * k + 0.01 * d, "loss": 1.0}
      for k in (1, 2, 3)
      for d in (0, 1)
  ]
  per_k = [
      {
          "k": k,
          "mean": 0.1 + 0.02 * k,
          "std": 0.01,
          "min": 0.1,
          "max": 0.2,
          "draws": 2,
      }
      for k in (1, 2, 3)
  ]
  swaps = [
      {
          "swaps": s,
          "draw": d,
          "kendall_tau": 1 - 0.1 * s - 0.01 * d,
          "error": 0.1 + 0.01 * s,
          "loss": 1.0,
      }
      for s in (1, 2, 3)
      for d in (0, 1)
  ]
  share = np.array([math.comb(n, k) * 0.6**k for k in range(n + 1)])
  share /= share.sum()
  path_rows = [
      {
          "length": k,
          "paths": math.comb(n, k),
          "path_fraction": math.comb(n, k) / 2**n,
          "total_gradient_share": float(share[k]),
      }
      for k in range(n + 1)
  ]
  paths = {
      "rows": path_rows,
      "num_modules": n,
      "gradients": {
          "lengths": [0, 2, 4],
          "mean": [1.0, 0.5, 0.25],
          "std": [0.1, 0.05, 0.02],
          "samples": 2,
      },
      "effective": {
          "low": 1,
          "high": 3,
          "gradient_share": 0.9,
          "path_share": 0.2,
      },
      "paths_95": {"low": 2, "high": 7, "path_share": 0.95},
      "decay_per_module": 0.7,
      "samples": 2,
      "batch": 8,
      "pool": 64,
  }
  return (
      single,
      {"rows": draws, "per_k": per_k},
      {"rows": swaps, "pearson_tau_error": -0.9},
      paths,
  )


def fake_signal(n: int):
  where = {"module": 0, "stage": 0, "unit": 0, "downsampling": False}
  out = {"response_std": [], "gradients": [], "scale": [], "gates": []}
  for net in ("resnet", "plain"):
    label = f"{net} (cifar_resnet-20)"
    out["response_std"] += [
        {
            "network": net,
            "label": label,
            "layer": j,
            "position": j,
            "conv": 0,
            "std": 1.0 / (j + 1),
            **where,
        }
        for j in range(2 * n)
    ]
    out["gradients"] += [
        {
            "network": net,
            "label": label,
            "position": p,
            "grad_norm": 0.5**p,
            **where,
        }
        for p in range(n + 1)
    ]
  out["scale"] = [
      {
          "network": "resnet",
          "position": p,
          "module": p,
          "stage": 0,
          "downsampling": False,
          "lambda": 0.5,
          "predicted": 0.5 ** (n - p),
          "ratio_full": 0.6 ** (n - p),
          "ratio_shortcut_only": 0.5 ** (n - p),
      }
      for p in range(n + 1)
  ]
  return out


def draw_all(tmp_path, setting, n):
  """Every lesion figure of the fake studies; name -> Figure."""
  single, k, reorder, paths = fake_studies(n)
  sig = fake_signal(n)
  vgg = {
      "rows": [dict(r, network="vgg") for r in single["rows"][:6]],
      "stats": single["stats"],
  }
  out = lambda name: str(tmp_path / name)
  return {
      "single_deletion.png": lesion_plots.plot_single(
          out("single_deletion.png"),
          {"resnet": single, "vgg": vgg},
          0.9,
          setting=setting,
      ),
      "k_deletion.png": lesion_plots.plot_k(
          out("k_deletion.png"), k, 0.1, setting=setting
      ),
      "reorder.png": lesion_plots.plot_reorder(
          out("reorder.png"), reorder, 0.1, setting=setting
      ),
      "path_lengths.png": lesion_plots.plot_paths(
          out("path_lengths.png"), paths, setting=setting
      ),
      "signal_response_std.png": lesion_plots.plot_response(
          out("signal_response_std.png"), sig["response_std"], setting=setting
      ),
      "signal_gradients.png": lesion_plots.plot_gradients(
          out("signal_gradients.png"),
          sig["gradients"],
          sig["scale"],
          setting=setting,
      ),
  }


def test_lesion_figures_of_synthetic_data_are_marked(tmp_path):
  setting = lesion_plots.study_setting(9, "synthetic")
  assert setting.mark == SYNTHETIC_MARK and not setting.paper
  figs = draw_all(tmp_path, setting, 9)
  for name, fig in figs.items():
    assert fig.get_suptitle() == SYNTHETIC_MARK, name
    assert png_title(tmp_path / name).startswith(f"{SYNTHETIC_MARK}: "), name
    assert "grows smoothly" not in png_title(tmp_path / name)
    assert_legends_off_the_data(fig)
    for ax in fig.axes:
      if "error" in ax.get_ylabel():
        assert "%" in ax.get_ylabel(), (name, ax.get_ylabel())
  # Veit's values are not drawn for a 9-module net; the legend says why.
  labels = legend_labels(figs["k_deletion.png"])
  assert not any(x.startswith("Veit et al.:") for x in labels)
  assert any("not drawn" in x and "n = 9" in x for x in labels)


def test_lesion_figures_count_in_integers(tmp_path):
  figs = draw_all(tmp_path, lesion_plots.study_setting(9, "synthetic"), 9)
  for name in (
      "single_deletion.png",
      "k_deletion.png",
      "path_lengths.png",
      "signal_response_std.png",
      "signal_gradients.png",
  ):
    for ax in figs[name].axes:
      assert_integer_ticks(ax.xaxis)
  ax, colour_bar = figs["reorder.png"].axes
  assert colour_bar.get_ylabel() == "pairs swapped"
  assert list(colour_bar.yaxis.get_majorticklocs()) == [1, 2, 3]
  # One colour per count: 1, 2 and 3 swaps, three colours.
  colours = {tuple(c) for c in ax.collections[0].get_facecolors()}
  assert len(colours) == 3
  assert figs["k_deletion.png"].axes[0].get_ylim()[1] > 1  # percent


def test_veit_values_beside_veits_network_only(tmp_path):
  paper_net = lesion_plots.study_setting(54, "cifar10")
  assert paper_net.paper and paper_net.mark == ""
  figs = draw_all(tmp_path, paper_net, 54)
  ten = 100 * paper.lookup("veit", "delete_10_modules_error")
  k_labels = legend_labels(figs["k_deletion.png"])
  assert f"Veit et al.: 10 deleted, error about {ten:.0f}%" in k_labels
  star = [
      line
      for line in figs["k_deletion.png"].axes[0].lines
      if line.get_label().startswith("Veit et al.: 10")
  ][0]
  assert list(star.get_xydata()[0]) == [10, ten]
  full = paper.lookup("veit", "full_model_error")
  assert f"Veit et al.: intact ResNet-110 ({full:.2f}%)" in legend_labels(
      figs["single_deletion.png"]
  )
  path_labels = legend_labels(figs["path_lengths.png"])
  assert "Veit et al. (n = 54): effective paths 5-17" in path_labels
  assert "Veit et al. (n = 54): >95% of paths in 19-35" in path_labels
  assert not figs["k_deletion.png"].get_suptitle()
  assert png_title(tmp_path / "k_deletion.png").startswith("Veit Fig. 5a")
  # The same depth on other data is not the paper's setting.
  assert not lesion_plots.study_setting(54, "cifar100").paper
  assert not lesion_plots.study_setting(54, "cifar10", ["synthetic"]).paper


def test_summary_first_line_and_paper_reference(tmp_path):
  res = _summary_inputs()
  res["setting"] = {
      "mark": SYNTHETIC_MARK,
      "num_modules": 9,
      "data": "synthetic",
      "paper": False,
  }
  text = lesion_summary.write_summary(str(tmp_path / "s.md"), res)
  assert text.splitlines()[0] == (
      f"# {SYNTHETIC_MARK}: Lesion and path study (Veit et al. 2016)"
  )
  assert "reference for a different network" in text
  res["setting"] = {
      "mark": "",
      "num_modules": 54,
      "data": "cifar10",
      "paper": True,
  }
  text = lesion_summary.write_summary(str(tmp_path / "s.md"), res)
  assert text.splitlines()[0] == "# Lesion and path study (Veit et al. 2016)"
  assert "different network" not in text
  assert f"{paper.lookup('veit', 'full_model_error'):.2f}%" in text


def _fake_net(role, n, data):
  return types.SimpleNamespace(
      role=role,
      config=types.SimpleNamespace(data=types.SimpleNamespace(name=data)),
      model=types.SimpleNamespace(num_modules=n),
      dataset=types.SimpleNamespace(num_classes=10),
      describe=lambda: f"{role}: a stand-in with {n} modules",
  )


@pytest.mark.parametrize(
    "n,data,mark", [(9, "synthetic", SYNTHETIC_MARK), (54, "cifar10", "")]
)
def test_lesion_study_writes_marked_outputs(
    tmp_path, monkeypatch, n, data, mark
):
  """The command's outputs, with stand-ins for the networks and analyses."""
  single, k, reorder, paths = fake_studies(n)
  nets = (
      _fake_net("resnet", n, data),
      _fake_net("vgg", 6, data),
      _fake_net("plain", n, data),
  )
  fakes = {
      "_networks": lambda *a: (*nets, []),
      "make_evaluator": lambda net, config: types.SimpleNamespace(
          num_images=64, compilations=1
      ),
      "single_deletion_study": lambda net, ev: single,
      "k_deletion_study": lambda *a: dict(k),
      "reorder_study": lambda *a: dict(reorder),
      "path_study": lambda *a: paths,
      "signal_study": lambda *a: fake_signal(n),
  }
  for name, fake in fakes.items():
    monkeypatch.setattr(lesion_study, name, fake)
  res = lesion_study.run(lesion_config("smoke"), str(tmp_path))
  out = tmp_path / "lesion"
  assert res["setting"]["mark"] == mark
  assert res["setting"]["paper"] == (n == 54)
  pngs = [f for f in lesion_study.OUTPUT_FILES if f.endswith(".png")]
  assert len(pngs) == 7  # paths_remaining.png: Veit Fig. 7
  for name in pngs:
    title = png_title(out / name)
    assert title.startswith(f"{mark}: ") == bool(mark), (name, title)
  first = (out / "summary.md").read_text().splitlines()[0]
  assert first.startswith(f"# {mark}: ") == bool(mark), first
  saved = json.loads((out / "results.json").read_text())
  assert saved["setting"] == res["setting"]


# --------------------------------------------------------------------------
# The notebooks, cell by cell


class Pyplot:
  """Stands in for matplotlib.pyplot in executed cells: Agg figures."""

  def __init__(self):
    self.shown = []
    self._fig = None

  def subplots(self, nrows=1, ncols=1, **kwargs):
    self._fig = Figure(figsize=kwargs.get("figsize"))
    FigureCanvasAgg(self._fig)
    return self._fig, self._fig.subplots(nrows, ncols)

  def tight_layout(self):
    self._fig.tight_layout()

  def show(self):
    self.shown.append(self._fig)


def cell(nb, marker):
  """The source of the first code cell holding ``marker``."""
  return next(
      c.source for c in nb.cells if c.cell_type == "code" and marker in c.source
  )


def run_cells(nb, markers, ns):
  for marker in markers:
    exec(cell(nb, marker), ns)  # pylint: disable=exec-used
  return ns


def quickstart(tmp_path, capsys, smoke):
  """Runs the quickstart's cells but training; returns (namespace, text)."""
  nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
  ns = run_cells(nb, ["RESFLAX_SOURCE = ", "SMOKE = os.environ"], {})
  ns.update(
      SMOKE=smoke,
      plt=Pyplot(),
      tempfile=types.SimpleNamespace(mkdtemp=lambda prefix: str(tmp_path)),
  )
  run_cells(nb, ["USE_DRIVE = False"], ns)
  ns["RUNS_DIR"] = tmp_path
  capsys.readouterr()
  run_cells(nb, ["STEPS = 64_000", "load_experiment("], ns)
  config = ns["config"]
  workdir = pathlib.Path(ns["WORKDIR"])
  workdir.mkdir(parents=True, exist_ok=True)
  fileio.write_json(
      workdir / "results.json",
      {"steps": config.train.steps, "test_error": 0.875},
  )
  log = workdir_lib.RunLog(str(workdir))
  for step in range(1, config.train.steps + 1, max(1, config.train.steps // 6)):
    log.append(step, "train", train_error=0.9, learning_rate=0.1)
    log.append(step, "eval", test_error=0.875)
  run_cells(nb, ['"results.json"', '"metrics.jsonl"'], ns)
  return ns, capsys.readouterr().out


def test_quickstart_smoke_says_what_it_trains(tmp_path, capsys):
  ns, text = quickstart(tmp_path, capsys, smoke=True)
  steps = ns["config"].train.steps
  assert steps == 6 and ns["config"].data.name == "synthetic"
  assert f"training {steps:,} steps of" in text
  assert "2,000" not in text and "steps instead" not in text
  lines = [x for x in text.splitlines() if not x.startswith("WARNING")]
  assert lines and all(x.startswith(f"{SMOKE_MARK}: ") for x in lines)
  assert f"test error after {steps} steps" in text
  (fig,) = ns["plt"].shown
  assert fig.get_suptitle() == SMOKE_MARK
  assert "CIFAR" not in fig.axes[0].get_title()
  assert not any("paper" in x for x in legend_labels(fig))
  assert_integer_ticks(fig.axes[0].xaxis)
  assert_legends_off_the_data(fig)


def test_quickstart_real_run_draws_the_papers_number(
    tmp_path, capsys, monkeypatch
):
  # On a CPU the notebook trains 2,000 steps; it must say 2,000.
  import jax  # pylint: disable=g-import-not-at-top

  if jax.devices()[0].platform != "cpu":
    pytest.skip("the CPU shortening is what this test reads")
  ns, text = quickstart(tmp_path, capsys, smoke=False)
  assert ns["config"].train.steps == 2000
  assert "training 2,000 steps instead" in text
  assert "ResNet-20 on CIFAR-10: training 2,000 steps of 128" in text
  assert curves.NOT_A_RESULT not in text
  (fig,) = ns["plt"].shown
  assert not fig.get_suptitle()
  error = paper.lookup("cvpr_table6", "resnet20")
  assert f"paper, 64,000 steps ({error:.2f}%)" in legend_labels(fig)


def lesion_stand_ins(n, data):
  """The lesion notebook's tools, replaced by fast stand-ins."""
  model = types.SimpleNamespace(
      num_modules=n,
      modules=[
          types.SimpleNamespace(downsampling=i in (n // 3, 2 * n // 3))
          for i in range(n)
      ],
  )
  net = types.SimpleNamespace(
      model=model,
      variables={},
      describe=lambda: f"a {n}-module stand-in",
      dataset=types.SimpleNamespace(
          train_labels=np.zeros(256, int),
          test_images=None,
          test_labels=None,
          mean=0,
          std=1,
      ),
      config=types.SimpleNamespace(
          data=types.SimpleNamespace(name=data),
          train=types.SimpleNamespace(eval_batch_size=8),
      ),
  )
  evaluator = lambda v, lesions: {
      "error": 0.1 + 0.01 * np.asarray(lesions, np.float64)
  }
  lesion = types.SimpleNamespace(
      LesionEvaluator=lambda *a, **k: evaluator,
      single_deletion_lesions=lambda v: np.arange(n + 1),
      delete_modules=lambda v, k, key: {"lesion": k * 1.0},
      reorder_modules=lambda v, s, key: ({"lesion": s * 1.0}, 1.0 - 0.05 * s),
  )

  def gradients(*a, lengths, **k):
    lengths = np.asarray(lengths)
    return types.SimpleNamespace(
        lengths=lengths, mean=0.7**lengths, std=0.1 * 0.7**lengths
    )

  from resflax.lesion import paths  # pylint: disable=g-import-not-at-top

  return {
      "lesion": lesion,
      "lesion_study": types.SimpleNamespace(load_run=lambda *a, **k: net),
      "lesion_analysis": types.SimpleNamespace(
          path_pool=lambda *a, **k: (None, None)
      ),
      "paths": types.SimpleNamespace(
          path_length_distribution=paths.path_length_distribution,
          total_gradient_by_length=paths.total_gradient_by_length,
          effective_paths=paths.effective_paths,
          gradient_norm_by_path_length=gradients,
      ),
  }


def lesion_notebook(tmp_path, capsys, monkeypatch, smoke, n, data):
  nb = nbformat.read(NOTEBOOKS / "lesion_study.ipynb", as_version=4)
  monkeypatch.setenv("RESFLAX_LESION_WORKDIR", str(tmp_path))
  ns = run_cells(nb, ["RESFLAX_SOURCE = ", "SMOKE = os.environ"], {})
  ns.update(SMOKE=smoke, RUNS_DIR=tmp_path, plt=Pyplot())
  run_cells(nb, ["TRAIN_IF_MISSING = False"], ns)
  ns.update(lesion_stand_ins(n, data))
  capsys.readouterr()
  run_cells(
      nb,
      [
          "lesion_study.load_run(",
          "single_deletion_lesions",
          "reorder_modules(",
          "gradient_norm_by_path_length(",
      ],
      ns,
  )
  return ns, capsys.readouterr().out


def test_lesion_notebook_on_synthetic_data(tmp_path, capsys, monkeypatch):
  ns, text = lesion_notebook(
      tmp_path, capsys, monkeypatch, True, 9, "synthetic"
  )
  code = "\n".join(
      c.source
      for c in nbformat.read(
          NOTEBOOKS / "lesion_study.ipynb", as_version=4
      ).cells
      if c.cell_type == "code"
  )
  assert "grows smoothly" not in code
  results = [x for x in text.splitlines() if "%" in x and "paper:" not in x]
  assert results and all(x.startswith(f"{SMOKE_MARK}: ") for x in results)
  assert "not drawn" in text
  figs = ns["plt"].shown
  assert len(figs) == 3
  for fig in figs:
    assert fig.get_suptitle() == SMOKE_MARK
    assert not any(x.startswith("Veit et al.") for x in legend_labels(fig))
    assert_legends_off_the_data(fig)
    for ax in fig.axes:
      if "error" in ax.get_ylabel():
        assert "%" in ax.get_ylabel()
  fig5 = figs[1]
  assert_integer_ticks(fig5.axes[0].xaxis)  # modules deleted
  assert fig5.axes[-1].get_ylabel() == "pairs swapped"
  assert all(
      float(t).is_integer() for t in fig5.axes[-1].yaxis.get_majorticklocs()
  )
  for ax in figs[2].axes:
    assert_integer_ticks(ax.xaxis)  # path lengths


def test_lesion_notebook_on_veits_network(tmp_path, capsys, monkeypatch):
  ns, text = lesion_notebook(
      tmp_path, capsys, monkeypatch, False, 54, "cifar10"
  )
  assert curves.NOT_A_RESULT not in text and "not drawn" not in text
  fig3, fig5, fig6 = ns["plt"].shown
  assert not fig3.get_suptitle()
  full = paper.lookup("veit", "full_model_error")
  assert f"Veit et al.: intact ({full:.2f}%)" in legend_labels(fig3)
  ten = 100 * paper.lookup("veit", "delete_10_modules_error")
  assert f"Veit et al.: 10 deleted, about {ten:.0f}%" in legend_labels(fig5)
  assert "Veit et al.: effective paths 5-17" in legend_labels(fig6)
