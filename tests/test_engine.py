"""The one training loop: stop, resume, divergence and re-runs, for a single
run (R=1) and three runs in one program (R=3)."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import engine_config as tiny_config

from resflax import training
from resflax.errors import ConfigError, TrainingError, WorkdirError
from resflax.training import preemption
from resflax.training import workdir as workdir_lib


def run_results(workdir, runs):
  """Each run's results.json."""
  dirs = (
      [workdir]
      if runs == 1
      else [os.path.join(workdir, f"seed{k}") for k in range(runs)]
  )
  return [
      json.loads(open(os.path.join(d, "results.json")).read()) for d in dirs
  ]


def stop_at(monkeypatch, step):
  """Makes the loop see a SIGTERM after ``step``."""
  monkeypatch.setattr(
      preemption.StopSignal, "should_stop", lambda self, s: s == step
  )


@pytest.mark.parametrize("runs", [1, 3])
def test_stop_resume_and_rerun(tmp_path, monkeypatch, runs):
  """A run stopped after step 3 and resumed ends as an uninterrupted one;
  its results cover both segments; a re-run of the finished run keeps them."""
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  training.train_and_evaluate(tiny_config(runs), full)
  with monkeypatch.context() as m:
    stop_at(m, 3)
    out = training.train_and_evaluate(tiny_config(runs), part)
  assert out == {"interrupted": True, "step": 3}
  assert not os.path.exists(os.path.join(part, "results.json"))
  training.train_and_evaluate(tiny_config(runs), part)
  a = jax.device_get(training.restore_state(tiny_config(runs), full))
  b = jax.device_get(training.restore_state(tiny_config(runs), part))
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
  want, got = run_results(full, runs), run_results(part, runs)
  for w, g in zip(want, got):
    # Evaluations at steps 2 (first segment), 4 and 6 (second segment).
    assert [h["step"] for h in g["history"]] == [2, 4, 6]
    assert [h["test_error"] for h in g["history"]] == pytest.approx(
        [h["test_error"] for h in w["history"]], abs=1e-6
    )
    assert g["test_error"] == pytest.approx(w["test_error"], abs=1e-6)
    assert g["images_per_second"] > 0 and g["train_seconds"] > 0
  before = [
      open(os.path.join(d, "results.json")).read()
      for d in (
          [part]
          if runs == 1
          else [os.path.join(part, f"seed{k}") for k in range(runs)]
      )
  ]
  again = training.train_and_evaluate(tiny_config(runs), part)
  assert again["steps"] == 6
  after = [
      open(os.path.join(d, "results.json")).read()
      for d in (
          [part]
          if runs == 1
          else [os.path.join(part, f"seed{k}") for k in range(runs)]
      )
  ]
  assert before == after


@pytest.mark.parametrize("runs", [1, 3])
def test_nonfinite_stops_without_saving_after_it(tmp_path, runs):
  """Finite warm-up for 2 steps, then an infinite learning rate: step 3 is
  the first non-finite one, so no checkpoint after step 2 is written."""
  config = tiny_config(
      runs,
      warmup_steps=2,
      warmup_learning_rate=0.01,
      learning_rate=float("inf"),
      lr_boundaries=(),
  )
  # The first non-finite quantity is named: the updated parameters (the
  # loss of step 3 is still finite; its infinite step broke them).
  pattern = (
      r"non-finite parameters \(in \d+ of \d+ arrays, e\.g\. "
      r"\['\w+'\].*\) at step 3 \(loss = \d"
      if runs == 1
      else r"all 3 parallel runs .* diverged"
  )
  with pytest.raises(TrainingError, match=pattern):
    training.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  dirs = (
      [tmp_path] if runs == 1 else [tmp_path / f"seed{k}" for k in range(runs)]
  )
  for d in dirs:
    failed = json.loads((d / "failed.json").read_text())
    assert "non-finite" in failed["error"]
    assert not (d / "results.json").exists()


@pytest.mark.parametrize("runs", [1, 3])
def test_diverged_run_leaves_its_curves(tmp_path, runs):
  """No report, evaluation or checkpoint falls before the divergence at
  step 3, yet metrics.jsonl holds the training metrics of the two finite
  steps and curves.png is drawn."""
  config = tiny_config(
      runs,
      warmup_steps=2,
      warmup_learning_rate=0.01,
      learning_rate=float("inf"),
      lr_boundaries=(),
      log_every=100,
      eval_every=0,
      checkpoint_every=0,
  )
  with pytest.raises(TrainingError):
    training.train_and_evaluate(config, str(tmp_path))
  for d in (
      [tmp_path] if runs == 1 else [tmp_path / f"seed{k}" for k in range(runs)]
  ):
    train = [
        json.loads(line)
        for line in (d / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert [r["step"] for r in train] == [2]
    assert np.isfinite(train[0]["train_loss"])
    assert train[0]["learning_rate"] == pytest.approx(0.01)
    assert (d / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("runs", [1, 3])
def test_sigterm_after_divergence_does_not_save(tmp_path, monkeypatch, runs):
  """The stop path checks finiteness before saving, like every other save."""
  config = tiny_config(
      runs,
      warmup_steps=2,
      warmup_learning_rate=0.01,
      learning_rate=float("inf"),
      lr_boundaries=(),
      checkpoint_every=0,
      log_every=0,
      eval_every=0,
  )
  stop_at(monkeypatch, 4)
  with pytest.raises(TrainingError):
    training.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
  (tmp_path / "w").mkdir()
  with workdir_lib.WorkdirLock(str(tmp_path / "w")):
    with pytest.raises(
        WorkdirError,
        match=rf"in use by another run \(pid " rf"{os.getpid()} on ",
    ):
      training.train_and_evaluate(tiny_config(), str(tmp_path / "w"))
  # Released: the same run now goes ahead.
  assert (
      training.train_and_evaluate(tiny_config(steps=2), str(tmp_path / "w"))[
          "steps"
      ]
      == 2
  )


def test_changed_config_replaces_config_json_only_after_a_checkpoint(tmp_path):
  """A changed config that fails before its first checkpoint leaves the
  workdir's config as it was, so the original command still works."""
  workdir = str(tmp_path)
  training.train_and_evaluate(tiny_config(steps=2), workdir)
  original = (tmp_path / "config.json").read_text()
  bad = tiny_config(
      steps=6,
      learning_rate=float("inf"),
      warmup_steps=0,
      lr_boundaries=(),
      allow_config_change=True,
  )
  with pytest.raises(TrainingError):
    training.train_and_evaluate(bad, workdir)
  assert (tmp_path / "config.json").read_text() == original
  assert len((tmp_path / "config_history.jsonl").read_text().splitlines()) == 1
  good = tiny_config(steps=4, allow_config_change=True)
  training.train_and_evaluate(good, workdir)
  history = [
      json.loads(line)
      for line in (tmp_path / "config_history.jsonl").read_text().splitlines()
  ]
  # The new config is in force from the step it resumed (issue: not from
  # its first checkpoint's).
  assert [h["from_step"] for h in history] == [0, 2]
  assert (
      json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 4
  )
  with pytest.raises(ConfigError, match="train.steps: 4 -> 2"):
    training.train_and_evaluate(tiny_config(steps=2), workdir)


def test_processes_agree_on_the_stop_step(monkeypatch):
  """With several processes the flag is combined every ``check_every``
  steps, so a process that got no signal stops at the same step."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  gathered = []

  def allgather(flag):
    gathered.append(int(flag))
    return np.asarray([int(flag), 1])  # the other process got SIGTERM

  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  stop = preemption.StopSignal(check_every=5)
  assert [stop.should_stop(s) for s in range(1, 11)] == (
      [False] * 4 + [True] + [False] * 4 + [True]
  )
  assert gathered == [0, 0]  # only at steps 5 and 10, with no local signal


def test_schedule_past_the_end_is_warned_about(caplog):
  config = tiny_config(steps=6)
  config.train.lr_boundaries = (4, 10)
  config.train.warmup_steps = 8
  training.validate_config(config)
  text = caplog.text
  assert "lr_boundaries (10,) fall at or after the last step (6)" in text
  assert "warmup_steps=8 covers the whole run of 6 steps" in text


def test_sigterm_during_data_loading_stops_before_training(
    tmp_path, monkeypatch, caplog
):
  import signal  # pylint: disable=g-import-not-at-top

  from resflax import data as data_lib  # pylint: disable=g-import-not-at-top

  load = data_lib.load_dataset

  def load_then_preempted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while data loads
    return load(*args, **kwargs)

  monkeypatch.setattr(data_lib, "load_dataset", load_then_preempted)
  out = training.train_and_evaluate(tiny_config(), str(tmp_path))
  assert out == {"interrupted": True, "step": 0}
  assert "received signal 15 while loading data" in caplog.text
  assert not (tmp_path / "checkpoints").exists()


def test_off_the_main_thread_sigterm_is_not_caught_and_says_so(caplog):
  import threading  # pylint: disable=g-import-not-at-top

  def enter():
    with preemption.StopSignal():
      pass

  worker = threading.Thread(target=enter)
  worker.start()
  worker.join()
  assert caplog.text.count("SIGTERM is not caught") == 1
