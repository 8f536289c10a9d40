"""Sweeps: case configs, skip/resume, failures, parallel seeds, the tables."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, SHORTCUTS, FakeTrainer, small_sweep

from resflax import fileio, runner, training
from resflax.config import base_config, load_experiment
from resflax.errors import ConfigError
from resflax.experiment import cases, paper, sweep, tables
from resflax.training import workdir as workdir_lib


def test_case_config_applies_overrides_and_seed():
  config = load_experiment(SHORTCUTS)
  assert config.seeds == 5
  assert "exclusive_gate_b-6" in cases.case_names(config)
  c = cases.case_config(config, "exclusive_gate_b-7", seed=3)
  assert c.model.shortcut == "exclusive_gate"
  assert c.model.gate_bias_init == -7.0
  assert c.model.depth == 110 and c.train.warmup_steps == 400
  assert c.seed == 3 and c.seeds == 1 and c.train.parallel_runs == 1
  assert not any(k in c for k in cases.SWEEP_KEYS)
  training.validate_config(c, 2)  # the papers' 2 GPUs
  # The base config is untouched.
  assert config.model.shortcut == "identity"


def test_unknown_override_key_is_named():
  declared = {"x": cases.Case({"model.shortcutt": "none"})}
  with pytest.raises(ValueError, match="'model.shortcutt'.*model.shortcut"):
    cases.experiment("f.py", base_config(), declared, None, title="t")
  with pytest.raises(ValueError, match="no such number"):
    cases.paper_ref("identity_table1", "exclusive_gate_b-9")


def test_restarted_sweep_skips_finished_runs(tmp_path, monkeypatch):
  config = small_sweep()
  fake = FakeTrainer(fail={("dropout", 1)}, interrupt_at=3)
  monkeypatch.setattr(training, "train_and_evaluate", fake)
  # Stopped by SIGTERM in the 3rd run: the sweep stops and says so.
  assert runner.run(config, str(tmp_path)) == {"interrupted": True}
  assert len(fake.calls) == 3
  # Restarted: the interrupted run (no results.json) trains again, the two
  # finished ones do not.
  rows = runner.run(config, str(tmp_path))["rows"]
  assert len(fake.calls) == 3 + 4
  assert fake.calls[3][0] == fake.calls[2][0]
  by_case = {r["case"]: r for r in rows}
  assert by_case["dropout"]["diverged"] == 1 and by_case["dropout"]["runs"] == 2
  failed = json.loads(
      (tmp_path / "dropout" / "seed1" / "failed.json").read_text()
  )
  assert "non-finite" in failed["error"]
  # A third run trains nothing: finished and failed runs are both kept.
  runner.run(config, str(tmp_path))
  assert len(fake.calls) == 7
  # Each run trained in its own folder with its own seed.
  assert sorted({os.path.relpath(w, tmp_path) for w, _ in fake.calls}) == [
      f"{case}/seed{s}"
      for case in sorted(cases.case_names(config))
      for s in (0, 1)
  ]
  assert all(c.seed == int(w[-1]) for w, c in fake.calls)


def test_later_runs_are_brief_and_each_logs_one_line(
    tmp_path, monkeypatch, caplog
):
  config = small_sweep()
  fake = FakeTrainer(fail={("dropout", 1)}, interrupt_at=3)
  monkeypatch.setattr(training, "train_and_evaluate", fake)
  caplog.set_level(logging.INFO)
  runner.run(config, str(tmp_path))
  # Only the first run logs its start block and progress.
  assert fake.brief == [False, True, True]
  caplog.clear()
  runner.run(config, str(tmp_path))  # restarted: its first run shows all
  assert fake.brief[3:] == [False, True, True, True]
  lines = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert lines[0] == (
      f"sweep: 3 cases x 2 seeds in {tmp_path}, 4 of 6 runs " "to do"
  )
  runs = [l for l in lines if l.startswith("run ")]
  assert [l.split(":")[0] for l in runs] == [
      "run 3 of 6",
      "run 4 of 6",
      "run 5 of 6",
      "run 6 of 6",
  ]
  assert re.fullmatch(
      r"run 4 of 6: exclusive_gate_b-6, seed 1: test error "
      r"12\.80% \(\d+s\); sweep ETA \d+s",
      runs[1],
  ), runs[1]
  failed = [r for r in caplog.records if "dropout, seed 1" in r.getMessage()]
  assert len(failed) == 1 and failed[0].levelno == logging.WARNING
  assert re.fullmatch(
      r"run 6 of 6: dropout, seed 1: failed \(\d+s\); seed 1:"
      r" non-finite loss at step 3",
      failed[0].getMessage(),
  )
  assert "ETA" not in runs[-1]
  assert re.fullmatch(
      r"sweep done in \d+s; results: .*results\.md, .*", lines[-1]
  ), lines[-1]


@pytest.mark.parametrize("every,writes", [(3600.0, 1), (0.0, 6 + 1)])
def test_tables_are_redrawn_at_most_once_a_minute(
    tmp_path, monkeypatch, every, writes
):
  written = []
  write_tables = tables.write_tables
  monkeypatch.setattr(
      tables, "write_tables", lambda *a: written.append(1) or write_tables(*a)
  )
  monkeypatch.setattr(sweep, "OUTPUTS_EVERY_SECONDS", every)
  monkeypatch.setattr(training, "train_and_evaluate", FakeTrainer())
  sweep.run(small_sweep(), str(tmp_path))
  assert len(written) == writes
  assert (tmp_path / "results.md").exists()


def test_smoke_sweep_runs_every_case_once():
  config = load_experiment(SHORTCUTS, "smoke")
  shortcuts = load_experiment(SHORTCUTS)
  assert cases.case_names(config) == cases.case_names(shortcuts)
  assert len(cases.case_names(config)) == 11 and config.seeds == 1
  assert config.sweep_shrunk


def test_cli_sweep_prints_the_start_block_once(tmp_path):
  """Two shrunk cases for real: the first run's block, then one line each."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  env.pop("RESFLAX_VERBOSE", None)
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "resflax.main",
          "--config",
          SHORTCUTS + ":original,exclusive_gate_b-6,smoke",
          "--workdir",
          str(tmp_path),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stderr
  assert text.count("resflax run in") == 1, text
  assert text.count("parameters per module") == 1
  assert text.count("compiling the training step") == 1
  assert text.count("steps/s") == 2  # the first run's 6 steps, every 3
  assert text.count(f"results: {tmp_path / 'original' / 'seed0'}") == 1
  runs = re.findall(r"^\d\d:\d\d:\d\d (run \d of 2: .*)$", text, re.M)
  assert [r.split(":")[:2] for r in runs] == [
      ["run 1 of 2", " original, seed 0"],
      ["run 2 of 2", " exclusive_gate_b-6, seed 0"],
  ], text
  assert text.strip().splitlines()[-1].split(" ", 2)[1:] == [
      "sweep",
      f"done in {text.split('sweep done in ')[1].split(';')[0]}; "
      f"results: {tmp_path / 'results.md'}, {tmp_path / 'results.csv'}, "
      f"{tmp_path / 'results.png'}",
  ]
  assert len(text.strip().splitlines()) < 40


def test_results_tables_have_every_case_and_paper_value(tmp_path, monkeypatch):
  config = small_sweep()
  monkeypatch.setattr(
      training, "train_and_evaluate", FakeTrainer(fail={("dropout", 1)})
  )
  sweep.run(config, str(tmp_path))
  csv_rows = {r["case"]: r for r in fileio.read_csv(tmp_path / "results.csv")}
  md = (tmp_path / "results.md").read_text()
  assert list(csv_rows) == cases.case_names(config)
  for case in cases.case_names(config):
    value = paper.lookup("identity_table1", case)
    assert csv_rows[case]["paper_error"] == str(value)
    assert f"| {case} |" in md
  assert "| 8.70 [V] |" in md  # exclusive gating, b_g = -6
  assert "fail (>20%)" in md  # dropout shortcut
  orig = csv_rows["original"]
  # Seeds 0 and 1: 10.8% and 11.8% test error (FakeTrainer).
  assert float(orig["median_error"]) == pytest.approx(11.3)
  assert float(orig["std_error"]) == pytest.approx(0.7071, abs=1e-3)
  assert orig["runs"] == "2" and orig["diverged"] == "0"
  assert csv_rows["dropout"]["diverged"] == "1"
  # One of two runs diverged: the median run failed, as the paper reads it.
  assert csv_rows["dropout"]["median_failed"] == "True"
  assert "dropout seed 1: non-finite" in md
  # A smoke sweep says so, explains the source tags, names no outside path.
  assert md.splitlines()[0].startswith(
      "# SMOKE (synthetic data, shrunk network) — not a result: "
  )
  assert "`[V]` read in the paper" in md and "shared/" not in md
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_parallel_sweep_runs_each_case_as_one_program(tmp_path, monkeypatch):
  config = small_sweep(parallel_runs=2)
  fake = FakeTrainer()
  monkeypatch.setattr(training, "train_and_evaluate", fake)
  rows = sweep.run(config, str(tmp_path))["rows"]
  assert [os.path.relpath(w, tmp_path) for w, _ in fake.calls] == (
      cases.case_names(config)
  )
  assert all(c.train.parallel_runs == 2 and c.seed == 0 for _, c in fake.calls)
  assert all(r["runs"] == 2 for r in rows)
  sweep.run(config, str(tmp_path))
  assert len(fake.calls) == 3


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("parallel_runs", 3, "parallel_runs=3.*config.seeds=2"),
        ("run_overrides", ("", ""), "run_overrides cannot be combined"),
    ],
)
def test_bad_sweep_settings_are_refused(tmp_path, key, value, pattern):
  config = small_sweep()
  setattr(config.train, key, value)
  with pytest.raises(ConfigError, match=pattern):
    sweep.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_learning_curves_read_without_tensorflow(tmp_path):
  from resflax.training import metrics

  w = metrics.create_writer(str(tmp_path))
  for step in (2, 4):
    w.write_scalars(step, {"train_error": 1.0 / step})
  w.close()
  steps, values = tables.read_scalars(str(tmp_path))["train_error"]
  assert steps.tolist() == [2, 4] and values.tolist() == [0.5, 0.25]


@pytest.mark.slow
def test_cli_sweep_end_to_end_with_parallel_seeds(tmp_path):
  """One shrunk case, its 2 seeds in one program, through the CLI; again."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  cmd = [
      sys.executable,
      "-m",
      "resflax.main",
      "--config",
      SHORTCUTS + ":exclusive_gate_b-6,smoke",
      "--workdir",
      str(tmp_path),
      "--config.seeds=2",
      "--config.train.parallel_runs=2",
  ]
  proc = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(
      r"^\S+ results: .*results\.json; each run's results\.json "
      r"and curves\.png in .*seed<s>$",
      proc.stderr,
      re.M,
  )
  assert re.search(
      r"^\S+ run 1 of 1: exclusive_gate_b-6, seeds 0,1: test "
      r"error \d+\.\d\d%, \d+\.\d\d% \(",
      proc.stderr,
      re.M,
  )
  run_files = [
      tmp_path / "exclusive_gate_b-6" / f"seed{s}" / "results.json"
      for s in (0, 1)
  ]
  mtimes = [f.stat().st_mtime_ns for f in run_files]
  for f in run_files:
    saved = json.loads(f.read_text())
    assert saved["steps"] == 6 and 0 <= saved["test_error"] <= 1
    assert saved["config"]["model"]["gate_bias_init"] == -6.0
  row = fileio.read_csv(tmp_path / "results.csv")[0]
  assert row["case"] == "exclusive_gate_b-6" and row["runs"] == "2"
  assert row["paper_error"] == "8.7"
  proc = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [f.stat().st_mtime_ns for f in run_files] == mtimes


@pytest.mark.parametrize(
    "errors,diverged,median,failed",
    [
        ([6.0, 7.0, 8.0, 9.0, 10.0], 0, 8.0, False),
        ([6.0, 7.0, 8.0], 2, 8.0, False),  # 2 of 5 diverged: median still 8
        ([6.0, 7.0], 3, float("inf"), True),  # the median run diverged
        ([6.0, 25.0, 30.0], 0, 25.0, True),  # the median run ended above 20%
    ],
)
def test_diverged_runs_count_in_the_median(errors, diverged, median, failed):
  stats = tables.summarize(errors, diverged)
  assert stats["median"] == median and stats["median_failed"] == failed
  assert stats["mean"] == pytest.approx(sum(errors) / len(errors))


def test_fig6_draws_plain_and_resnet_panels(tmp_path):
  """The sweep's Fig. 6 from its cases' metrics.jsonl (every seed:
  tests/test_paper_figures.py)."""
  from resflax.experiment import figures  # pylint: disable=g-import-not-at-top

  config = load_experiment(
      os.path.join(REPO, "experiments/cifar_resnet.py"), "fig6,smoke"
  )
  # Fig. 6 runs the whole table, Fig. 7's networks too.
  assert list(config.sweep_figures) == ["fig6", "fig7"]
  for case in cases.case_names(config):
    log = workdir_lib.RunLog(cases.run_dir(str(tmp_path), case, config.seed))
    os.makedirs(os.path.dirname(log.path), exist_ok=True)
    for step in (2, 4, 6):
      log.append(step, "train", train_error=0.5, learning_rate=0.1)
      log.append(step, "eval", test_error=0.4)
  paths = figures.write_figures(str(tmp_path), config)
  # No run finished (results.json): Fig. 7 has nothing to measure yet.
  assert paths == [str(tmp_path / "fig6.png")]
  assert (tmp_path / "fig6.png").read_bytes()[:4] == b"\x89PNG"
  # A sweep without both groups draws nothing.
  assert not load_experiment(
      os.path.join(REPO, "experiments/cifar_resnet.py"), "plain,smoke"
  ).sweep_figures
