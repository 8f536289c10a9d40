"""The papers' figures come out of declared cases: He et al. 2016 Fig. 6 and
7 (cifar_resnet.py), Identity Mappings Fig. 3 (cifar_shortcuts.py), Fig. 6
(cifar_activations.py) and Fig. 1 (cifar_preact.py).

The curve figures are drawn from fake ``metrics.jsonl`` logs (nothing
trains): each (case, seed) gets its own error values, so the plotted data
say which run each line is. One test trains the five tiny networks of
Fig. 7 for real and measures their layer responses.
"""

import os

import numpy as np
import pytest
from helpers import REPO, random_variables

from resflax import data, fileio, models, training
from resflax.config import load_experiment
from resflax.errors import ConfigError
from resflax.experiment import cases, figures, lesion_analysis, sweep
from resflax.training import workdir as workdir_lib

STEPS = (2, 4, 6)
SEEDS = 2


def experiment(name, arg):
  return load_experiment(os.path.join(REPO, "experiments", name), arg)


def errors(config, case, seed):
  """(train, test) error in % of one fake run: unique per case and seed."""
  k = cases.case_names(config).index(case)
  return 40.0 + k + 0.25 * seed, 10.0 + k + 0.25 * seed


def fake_logs(workdir, config, finished=False):
  for case in cases.case_names(config):
    for seed in cases.seeds(config):
      path = cases.run_dir(str(workdir), case, seed)
      log = workdir_lib.RunLog(path)
      os.makedirs(os.path.dirname(log.path), exist_ok=True)
      train, test = errors(config, case, seed)
      for step in STEPS:
        log.append(step, "train", train_error=train / 100, learning_rate=0.1)
        log.append(step, "eval", test_error=test / 100)
      if finished:
        fileio.write_json(os.path.join(path, "results.json"), {})


def lines_of(ax, y):
  """The lines of ``ax`` plotting the constant ``y`` at every step."""
  return [
      line
      for line in ax.get_lines()
      if list(line.get_xdata()) == list(STEPS)
      and np.allclose(line.get_ydata(), y)
  ]


# (file, argument, figure, its panels: title -> cases), as the papers lay
# them out (see each file's docstring).
CURVE_FIGURES = [
    (
        "cifar_resnet.py",
        "fig6",
        "fig6",
        {
            "plain-20/32/44/56": ["plain20", "plain32", "plain44", "plain56"],
            "ResNet-20/32/44/56/110": [
                "resnet20",
                "resnet32",
                "resnet44",
                "resnet56",
                "resnet110",
            ],
            "ResNet-110 and ResNet-1202": ["resnet110", "resnet1202"],
        },
    ),
    (
        "cifar_shortcuts.py",
        "fig3",
        "fig3",
        {
            "constant scaling": [
                "original",
                "scale_0",
                "scale_half",
                "scale_half_residual_half",
            ],
            "exclusive gating": [
                "original",
                "exclusive_gate_b0",
                "exclusive_gate_b-6",
                "exclusive_gate_b-7",
            ],
            "shortcut-only gating": [
                "original",
                "shortcut_gate_b0",
                "shortcut_gate_b-6",
            ],
            "1x1 conv and dropout shortcuts": [
                "original",
                "conv1x1",
                "dropout",
            ],
        },
    ),
    (
        "cifar_activations.py",
        "fig6",
        "fig6",
        {
            "ResNet-110: BN after addition": [
                "original_110",
                "bn_after_add_110",
            ],
            "ResNet-164: pre-activation": ["original_164", "full_preact_164"],
        },
    ),
    (
        "cifar_preact.py",
        "fig1",
        "fig1",
        {"ResNet-1001": ["original_resnet1001", "preact_resnet1001"]},
    ),
]


@pytest.mark.parametrize(
    "name,arg,fig,panels", CURVE_FIGURES, ids=[f[0] for f in CURVE_FIGURES]
)
def test_curve_figure_draws_every_seed_of_its_cases(
    tmp_path, name, arg, fig, panels
):
  config = experiment(name, f"{arg},smoke")
  assert fig in config.sweep_figures
  config.seeds = SEEDS  # smoke runs one; every seed must be drawn
  fake_logs(tmp_path, config)
  # (cifar_resnet.py's fig7 needs finished, restorable runs: not drawn.)
  assert figures.write_figures(str(tmp_path), config) == [
      str(tmp_path / f"{fig}.png")
  ]
  drawn = figures.figure(str(tmp_path), config, fig)
  assert [ax.get_title() for ax in drawn.axes] == list(panels)
  for ax, members in zip(drawn.axes, panels.values()):
    assert [t.get_text() for t in ax.get_legend().get_texts()] == members
    colours = []
    for case in members:
      runs = [errors(config, case, s) for s in cases.seeds(config)]
      seed_lines = [lines_of(ax, y) for run in runs for y in run]
      # Train and test line of each seed, once each.
      assert [len(found) for found in seed_lines] == [1] * 2 * SEEDS, case
      colour = {found[0].get_color() for found in seed_lines}
      assert len(colour) == 1, (case, colour)  # every seed: the case's
      colours += colour
    assert len(set(colours)) == len(members), colours
    # Nothing else is plotted: two lines per run, plus the lr drops.
    curves_drawn = [l for l in ax.get_lines() if len(l.get_xdata()) > 2]
    assert len(curves_drawn) == 2 * SEEDS * len(members)


def test_a_two_seed_case_draws_both_seeds(tmp_path):
  """Seed 1's test error reaches the figure, not only the first seed's."""
  config = experiment("cifar_preact.py", "fig1,smoke")
  config.seeds = 2
  fake_logs(tmp_path, config)
  (ax,) = figures.figure(str(tmp_path), config, "fig1").axes
  for case in ("original_resnet1001", "preact_resnet1001"):
    for seed in (0, 1):
      assert lines_of(ax, errors(config, case, seed)[1]), (case, seed)


def test_unfinished_seeds_are_left_out(tmp_path):
  config = experiment("cifar_preact.py", "fig1,smoke")
  config.seeds = 2
  fake_logs(tmp_path, config)
  unfinished = cases.run_dir(str(tmp_path), "preact_resnet1001", 1)
  os.remove(os.path.join(unfinished, workdir_lib.RunLog(unfinished).path))
  (ax,) = figures.figure(str(tmp_path), config, "fig1").axes
  assert lines_of(ax, errors(config, "preact_resnet1001", 0)[1])
  assert not lines_of(ax, errors(config, "preact_resnet1001", 1)[1])


def test_the_full_table_declares_its_figures():
  """Running a paper's whole table draws its figures."""
  expected = {
      "cifar_resnet.py": ["fig6", "fig7"],
      "cifar_shortcuts.py": ["fig3"],
      "cifar_activations.py": ["fig6"],
      "cifar_preact.py": ["fig1"],
  }
  for name, figs in expected.items():
    # cifar_resnet.py's "smoke" alone is a single run; its table shrunk:
    arg = "table6,plain,smoke" if name == "cifar_resnet.py" else "smoke"
    assert list(experiment(name, arg).sweep_figures) == figs, name
  # A sweep without every case of a figure does not draw it.
  assert not experiment("cifar_resnet.py", "resnet110,smoke").sweep_figures


FIG7 = ["plain20", "plain56", "resnet20", "resnet56", "resnet110"]


def test_fig7_draws_every_seed_in_order_and_sorted(tmp_path):
  """From rows measured before (DIR/fig7.json): nothing is restored."""
  config = experiment("cifar_resnet.py", "fig7,smoke")
  assert cases.case_names(config) == FIG7
  config.seeds = SEEDS
  fake_logs(tmp_path, config, finished=True)
  stds = {
      (case, seed): np.random.default_rng(7 * k + seed).uniform(0.1, 2, 6)
      for k, case in enumerate(FIG7)
      for seed in range(SEEDS)
  }
  rows = [
      {"case": c, "seed": s, "label": c, "layer": i + 1, "std": float(v)}
      for (c, s), std in stds.items()
      for i, v in enumerate(std)
  ]
  fileio.write_json(tmp_path / "fig7.json", {"rows": rows})
  assert figures.write_figures(str(tmp_path), config) == [
      str(tmp_path / "fig7.png")
  ]
  top, bottom = figures.figure(str(tmp_path), config, "fig7").axes
  assert [t.get_text() for t in top.get_legend().get_texts()] == FIG7
  for ax, order in ((top, lambda v: v), (bottom, lambda v: np.sort(v)[::-1])):
    for case in FIG7:
      found = [
          line
          for s in range(SEEDS)
          for line in ax.get_lines()
          if np.allclose(line.get_ydata(), order(stds[case, s]))
      ]
      assert len(found) == SEEDS, case
      assert len({line.get_color() for line in found}) == 1, case


def test_fig7_leaves_out_a_run_it_cannot_restore(tmp_path):
  """A finished run without checkpoints (a FakeTrainer's) is not drawn."""
  config = experiment("cifar_resnet.py", "fig7,smoke")
  fake_logs(tmp_path, config, finished=True)
  assert figures.figure(str(tmp_path), config, "fig7") is None
  assert figures.write_figures(str(tmp_path), config) == []


def test_fig7_names_why_a_parallel_sweep_is_not_measured(tmp_path, monkeypatch):
  config = experiment("cifar_resnet.py", "fig7,smoke")
  fake_logs(tmp_path, config, finished=True)
  for case in FIG7:  # the stacked state of each case's program
    os.makedirs(tmp_path / case / "checkpoints")
  warnings = []
  monkeypatch.setattr(
      figures.logging, "warning", lambda *a: warnings.append(a[0] % a[1:])
  )
  assert figures.write_figures(str(tmp_path), config) == []
  assert len(warnings) == len(FIG7)
  assert "--config.train.parallel_runs=1" in warnings[0]
  assert str(tmp_path / "plain20" / "checkpoints") in warnings[0]


def test_figure_kinds_are_checked():
  with pytest.raises(ValueError, match="unknown kind 'bars'; use one of"):
    cases.Figure("t", {"p": ("a",)}, kind="bars")
  with pytest.raises(ValueError, match="has one panel"):
    cases.Figure("t", {"p": ("a",), "q": ("b",)}, kind="response_std")
  config = experiment("cifar_preact.py", "fig1,smoke")
  config.sweep_figures.fig1.kind = "bars"
  with pytest.raises(ConfigError, match="kind='bars': use one of curves"):
    figures.figure("/nonexistent", config, "fig1")


def test_fig7_measures_each_finished_run_once(tmp_path, monkeypatch):
  """Restored networks (random variables here) measured layer by layer."""
  config = experiment("cifar_resnet.py", "fig7,smoke")
  fake_logs(tmp_path, config, finished=True)
  restored = []

  def load_run(path, role):
    assert path == cases.run_dir(str(tmp_path), role, 0)
    restored.append(role)
    run = cases.case_config(config, role, seed=0)
    model = models.create_model(training.model_config(run, 1))
    return lesion_analysis.Net(
        role,
        path,
        run,
        model,
        random_variables(model, image_shape=(run.data.image_size,) * 2 + (3,)),
        data.load_dataset(run.data, seed=0),
        run.train.steps,
    )

  monkeypatch.setattr(figures.lesion_study, "load_run", load_run)
  assert figures.write_figures(str(tmp_path), config) == [
      str(tmp_path / "fig7.png")
  ]
  assert restored == FIG7
  rows = fileio.read_json(tmp_path / "fig7.json")["rows"]
  for case in FIG7:
    mine = [r for r in rows if r["case"] == case]
    # Smoke shrinks each to one basic unit per stage: 3 units x 2 convs.
    assert [r["layer"] for r in mine] == list(range(1, 7)), case
    assert all(np.isfinite(r["std"]) and r["std"] > 0 for r in mine)
    assert {(r["seed"], r["label"]) for r in mine} == {(0, case)}
  figures.write_figures(str(tmp_path), config)
  assert restored == FIG7  # measured once: read back from fig7.json


@pytest.mark.slow
def test_fig7_smoke_sweep_trains_and_measures_five_networks(tmp_path):
  """The one test that trains: Fig. 7's five networks, shrunk (6 steps).

  About 35 s on a 2-core CPU, so slow; the measuring without training is
  in CI above.
  """
  config = experiment("cifar_resnet.py", "fig7,smoke")
  out = sweep.run(config, str(tmp_path))
  assert str(tmp_path / "fig7.png") in out["files"]
  rows = fileio.read_json(tmp_path / "fig7.json")["rows"]
  assert list(dict.fromkeys(r["case"] for r in rows)) == FIG7
  for case in FIG7:
    mine = [r for r in rows if r["case"] == case]
    run = cases.case_config(config, case, seed=0)
    # Smoke shrinks each to one basic unit per stage: 3 units x 2 convs.
    assert run.model.depth == 8 and len(mine) == 6, case
    assert [r["layer"] for r in mine] == list(range(1, 7))
    assert all(np.isfinite(r["std"]) and r["std"] > 0 for r in mine)
    assert {r["step"] for r in mine} == {run.train.steps}
  fileio.read_csv(tmp_path / "fig7.csv")  # the numbers beside the PNG
  # Measured once: a second pass reads them back.
  mtime = (tmp_path / "fig7.json").stat().st_mtime_ns
  figures.write_figures(str(tmp_path), config)
  assert (tmp_path / "fig7.json").stat().st_mtime_ns == mtime
