"""The lesion command (resflax.experiment.lesion_study), its analyses,
summary and figures, and the signal statistics."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, lesion_config, random_variables
from helpers import summary_inputs as _summary_inputs

from resflax import data as data_lib
from resflax import models, training
from resflax.errors import ConfigError
from resflax.experiment import (
    lesion_analysis,
    lesion_study,
    lesion_summary,
    paper,
    path_survival,
)
from resflax.lesion import signal_stats
from resflax.training import checkpoint


def fake_run(run_dir, cfg, seed=0):
  """A run directory (config.json + one checkpoint) with random weights,
  written without training or compiling anything."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    f.write(cfg.to_json())
  spec = training.build_run(cfg, 10, 256)
  target = jax.eval_shape(lambda: training.init_state(spec, 0, (32, 32, 3)))
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target)
  state = state.replace(variables=random_variables(spec.model, seed=seed))
  ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"))
  ckpt.save(1, state)
  ckpt.close()


def test_load_run_reads_the_workdir_of_2026_12_05():
  """A run stopped at step 4 by main of 2026-12-05 (tests/fixtures): its
  network evaluates to the test error that run logged at that step."""
  fixture = os.path.join(REPO, "tests", "fixtures", "workdir_2026_12_05")
  net = lesion_study.load_run(fixture)
  assert net.step == 4 and net.config.train.steps == 8
  assert net.model.num_modules == 3
  logged = [
      json.loads(line)
      for line in open(os.path.join(fixture, "metrics.jsonl"))
      if '"eval"' in line
  ]
  ds = net.dataset
  logits = net.model.apply(
      net.variables,
      data_lib.normalize(ds.test_images, ds.mean, ds.std),
  )
  error = float(np.mean(np.argmax(logits, -1) != ds.test_labels))
  assert logged[-1]["step"] == 4
  assert error == pytest.approx(logged[-1]["test_error"], abs=1e-6)


def test_config_and_unknown_keys():
  config = lesion_config("smoke")
  assert config.model.depth == 20 and config.data.name == "synthetic"
  full = lesion_config(None)
  assert full.model.depth == 110 and full.lesion.path_samples == 1000
  assert lesion_config("sd,56").model.stochastic_depth == 0.5
  with pytest.raises(ValueError, match="unknown arg 'x'"):
    lesion_config("x")
  config.lesion.max_k = -1
  with pytest.raises(ConfigError, match=r"config.lesion.max_k=-1"):
    lesion_study.check_config(config)
  config = lesion_config("smoke")
  config.lesion.checkpoint = "/nonexistent/run"
  with pytest.raises(ConfigError, match="not a resflax run directory"):
    lesion_study.check_config(config)
  assert "lesion" not in lesion_study.training_config(config)
  vgg = lesion_study.vgg_config(config)
  assert (vgg.model.name, vgg.model.depth, vgg.model.shortcut) == (
      "vgg",
      8,
      "none",
  )
  assert lesion_study.plain_config(config).model.shortcut == "none"


@pytest.mark.slow
def test_study_from_checkpoints_writes_every_file(tmp_path):
  config = lesion_config("smoke")
  runs = {
      "checkpoint": ("resnet", lesion_study.training_config(config)),
      "vgg_checkpoint": ("vgg", lesion_study.vgg_config(config)),
      "plain_checkpoint": ("plain", lesion_study.plain_config(config)),
  }
  for i, (key, (name, cfg)) in enumerate(runs.items()):
    fake_run(str(tmp_path / name), cfg, seed=i)
    config.lesion[key] = str(tmp_path / name)
  config.lesion.path_lengths = (0, 2, 5, 9)
  config.lesion.path_samples = 2
  config.lesion.max_k = 3
  config.lesion.max_swaps = 2
  config.lesion.draws_per_k = config.lesion.swap_draws = 2
  out = tmp_path / "study"
  res = lesion_study.run(config, str(out))
  for name in lesion_study.OUTPUT_FILES:
    assert (out / "lesion" / name).stat().st_size > 0, name
  assert not (out / "resnet").exists()  # nothing was trained
  single = res["single_deletion"]
  assert [r["module"] for r in single["resnet"]["rows"]] == list(range(9))
  assert [r["downsampling"] for r in single["resnet"]["rows"]] == [
      False,
      False,
      False,
      True,
      False,
      False,
      True,
      False,
      False,
  ]
  assert len(single["vgg"]["rows"]) == 6
  assert res["evaluator_compilations"] == {"resnet": 1, "vgg": 1}
  assert [p["k"] for p in res["k_deletion"]["per_k"]] == [1, 2, 3]
  # Two random swaps can undo each other (tau = 1 again).
  assert all(-1 <= r["kendall_tau"] <= 1 for r in res["reorder"]["rows"])
  assert sum(r["paths"] for r in res["paths"]["rows"]) == 2**9
  labels = {r["network"] for r in res["signal"]["response_std"]}
  assert labels == {"resnet", "plain"}
  summary = (out / "lesion" / "summary.md").read_text()
  assert "downsampling module deleted: mean" in summary
  assert "Effective paths: lengths" in summary
  saved = json.loads((out / "lesion" / "results.json").read_text())
  assert saved["single_deletion"]["resnet"]["stats"]["num_modules"] == 9


def test_paths_remaining_study_and_figure(tmp_path):
  # Veit Fig. 7 as the study writes it: exact counts, d above n dropped.
  study = path_survival.survival_study(9, [0, 2, 9, 20])
  assert [s["deleted"] for s in study["deleted"]] == [0, 2, 9]
  rows = {(r["deleted"], r["length"]): r for r in study["rows"]}
  assert rows[(2, 3)]["surviving"] == 35 and rows[(2, 3)]["paths"] == 84
  assert rows[(2, 3)]["fraction"] == pytest.approx(35 / 84)
  assert rows[(2, 8)]["surviving"] == 0 and rows[(0, 8)]["fraction"] == 1.0
  assert rows[(9, 0)]["surviving"] == 1
  path = tmp_path / "paths_remaining.png"
  path_survival.plot_survival(str(path), study)
  assert path.stat().st_size > 0
  assert "paths_remaining.png" in lesion_study.OUTPUT_FILES


def test_path_pool_is_a_class_balanced_random_sample():
  # Class-sorted, as folder and archive loaders give them: pixel (0, 0)
  # holds the class, pixel (0, 1) the image's number within its class.
  labels = np.repeat(np.arange(10), 50)
  images = np.zeros((500, 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = labels
  images[:, 0, 1, 0] = np.tile(np.arange(50), 10)
  ds = types.SimpleNamespace(
      train_images=images,
      train_labels=labels,
      num_train=500,
      mean=np.zeros(3),
      std=np.full(3, 1 / 255),
  )
  picked = {}
  for size, seed in ((64, 0), (64, 1), (50, 0)):
    x, y = lesion_analysis.path_pool(ds, size, seed)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == np.float32 and x.shape == (size, 2, 2, 3)
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # labels match images
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == size
    assert counts.min() == size // 10 and counts.max() <= -(-size // 10)
    pairs = set(zip(y.tolist(), x[:, 0, 1, 0].astype(int).tolist()))
    assert len(pairs) == size  # without replacement
    picked[size, seed] = pairs
  assert picked[64, 0] != picked[64, 1]
  assert len(lesion_analysis.path_pool(ds, 5000, 0)[1]) == 500


def test_summary_quotes_the_papers_numbers_from_paper_py(tmp_path, monkeypatch):
  rows = paper.TABLES["veit"].rows
  for case, text in (
      ("num_modules", "154"),
      ("path_length_bulk_pct", "96"),
      ("path_length_95pct_min_modules", "119"),
      ("path_length_95pct_max_modules", "135"),
      ("effective_path_min_modules", "105"),
      ("effective_path_max_modules", "117"),
      ("effective_path_fraction_pct", "0.145"),
  ):
    monkeypatch.setitem(rows, case, {(): paper.PaperValue(text, paper.V2)})
  text = lesion_summary.write_summary(
      str(tmp_path / "summary.md"), _summary_inputs()
  )
  assert "96% of the paths have length 2 to 7 (Veit, n = 154: 119 to 135)" in (
      text
  )
  assert "(Veit, n = 154: 105 to 117, 0.145%)" in text
  assert (tmp_path / "summary.md").read_text() == text


def test_figures_leave_pyplot_and_the_backend_alone(tmp_path):
  # A notebook's inline backend must survive writing the study's PNGs: a
  # fresh process with the svg backend still has it afterwards.
  code = (
      "import sys, matplotlib\n"
      "from resflax.experiment import lesion_plots\n"
      "per = [{'k': 1, 'mean': 0.2, 'std': 0.01}]\n"
      "lesion_plots.plot_k(sys.argv[1], {'per_k': per, 'rows': []}, 0.1)\n"
      "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no-pyplot',"
      " matplotlib.rcParams['backend'])\n"
  )
  png = tmp_path / "k.png"
  proc = subprocess.run(
      [sys.executable, "-c", code, str(png)],
      cwd=REPO,
      env={**os.environ, "MPLBACKEND": "svg"},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["no-pyplot", "svg"]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaled_shortcut_gradient_factor_within_a_stage():
  # Full pre-activation: nothing after the addition, so through the
  # shortcuts alone the gradient shrinks by exactly lambda per module.
  model = models.create_model(depth=14, widths=(4, 8, 8), unit="full_preact")
  v = random_variables(model, seed=4)
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  y = jnp.arange(3)
  rows = signal_stats.scale_comparison(model, v, x, y, lam=0.5)
  assert len(rows) == model.num_modules + 1 == 7
  r = np.array([row["ratio_shortcut_only"] for row in rows])
  # Input of the last stage's unit 1 (position 5) vs the head input (6);
  # unit 0 (position 4) downsamples through a pre-activated shortcut.
  assert r[5] / r[6] == pytest.approx(0.5, rel=1e-4)
  assert r[6] == 1.0 and np.all(r[:5] < 0.5**1.5)
  assert rows[-1]["predicted"] == 1.0 and rows[0]["predicted"] == 0.5**6
  assert all(row["ratio_full"] > 0 for row in rows)


def test_response_stds_and_gates():
  highway = models.create_model(name="highway", depth=11, widths=(4, 8, 8))
  v = random_variables(highway, seed=1)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  gates = signal_stats.gate_statistics(highway, v, x)
  assert [g["module"] for g in gates] == list(range(9))
  assert all(0 < g["gate_mean"] < 1 for g in gates)
  stds = signal_stats.response_stds(highway, v, x)
  assert [r["layer"] for r in stds] == list(range(1, 10))  # 1 conv/module
  # Reordered: rows follow execution order and name the module that ran.
  from resflax import lesion  # pylint: disable=g-import-not-at-top

  swapped = lesion.swap_modules(v, 1, 2)
  rows = signal_stats.response_stds(highway, swapped, x)
  assert [r["module"] for r in rows[:3]] == [0, 2, 1]


@pytest.mark.slow
def test_cli_smoke_trains_and_writes_every_file(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "resflax-test-jax-cache"
  )
  workdir = tmp_path / "smoke"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "resflax.main",
          "--config",
          "experiments/cifar_lesion.py:smoke",
          "--workdir",
          str(workdir),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in lesion_study.OUTPUT_FILES:
    assert (workdir / "lesion" / name).stat().st_size > 0, name
  for net in ("resnet", "vgg", "plain"):
    assert (workdir / net / "config.json").exists(), net
    assert (workdir / net / "checkpoints").is_dir(), net
