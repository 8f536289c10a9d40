"""Parallel runs: R runs vmapped in one program equal R solo runs."""

import json

import jax
import numpy as np
import pytest
from helpers import engine_config

from resflax import training
from resflax.errors import ConfigError, TrainingError
from resflax.training import runs as runs_lib


def gated_config(**train_kw):
  """A gated net (so a per-run gate bias matters) that compiles quickly."""
  c = engine_config(steps=4, lr_boundaries=(3,), checkpoint_every=0)
  c.model.depth = 8
  c.model.shortcut = "exclusive_gate"
  c.model.gate_bias_init = -2.0
  for k, v in train_kw.items():
    setattr(c.train, k, v)
  return c


# Run 1 differs in everything a run may change.
OVERRIDES = (
    "",
    "train.learning_rate=0.05; train.weight_decay=5e-4; "
    "train.momentum=0.8; model.gate_bias_init=-1",
)


def solo_config(k):
  c = gated_config()
  c.seed = k
  if k == 1:
    c.train.learning_rate = 0.05
    c.train.weight_decay = 5e-4
    c.train.momentum = 0.8
    c.model.gate_bias_init = -1.0
  return c


def final_variables(config, workdir):
  """The variables of the last checkpoint (stacked for parallel runs)."""
  return jax.device_get(training.restore_state(config, workdir).variables)


def test_run_overrides_format_and_errors():
  c = gated_config(parallel_runs=2)
  c.train.run_overrides = OVERRIDES
  runs = runs_lib.run_configs(c)
  assert [r.seed for r in runs] == [0, 1]
  assert runs[1].train.learning_rate == 0.05
  assert runs[1].model.gate_bias_init == -1.0
  assert runs[0].train.learning_rate == c.train.learning_rate
  assert runs[1].train.parallel_runs == 1 and not runs[1].train.run_overrides
  hp = runs_lib.step_hparams(runs)
  assert set(hp) == {
      "train.learning_rate",
      "train.weight_decay",
      "train.momentum",
  }
  bad = [
      (("", "model.depth=20"), r"run_overrides\[1\].*'model.depth'.*allowed"),
      (("", "train.learning_rate"), "not key=value"),
      (("", "train.learning_rate=fast"), "not a valid float"),
      (("",), "needs one per run"),
      (("", "seed=0"), "both have seed 0"),
  ]
  for overrides, pattern in bad:
    c.train.run_overrides = overrides
    with pytest.raises(ConfigError, match=pattern):
      training.validate_config(c)  # before any data is loaded
  single = gated_config()
  single.train.run_overrides = ("train.learning_rate=0.05",)
  with pytest.raises(ConfigError, match="needs config.train.parallel"):
    training.validate_config(single)


@pytest.mark.slow
def test_parallel_runs_equal_solo_runs(tmp_path):
  """4 trainings of a tiny net: minutes of compilation on a cold cache."""
  config = gated_config(parallel_runs=2)
  config.train.run_overrides = OVERRIDES
  combined = training.train_and_evaluate(config, str(tmp_path / "par"))
  assert [r["status"] for r in combined["runs"]] == ["ok", "ok"]
  stacked = final_variables(config, str(tmp_path / "par"))
  for k in range(2):
    solo = solo_config(k)
    solo_dir = str(tmp_path / f"solo{k}")
    want = training.train_and_evaluate(solo, solo_dir)
    got = json.loads(
        (tmp_path / "par" / f"seed{k}" / "results.json").read_text()
    )
    assert got["config"] == json.loads(solo.to_json())
    assert got["test_error"] == pytest.approx(want["test_error"], abs=1e-6)
    assert [h["test_error"] for h in got["history"]] == pytest.approx(
        [h["test_error"] for h in want["history"]], abs=1e-6
    )
    mine = jax.tree.map(lambda x, k=k: x[k], stacked)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        mine,
        final_variables(solo, solo_dir),
    )
  # The runs really differ (own seed, data and hyper-parameters).
  a, b = (
      jax.tree.leaves(jax.tree.map(lambda x, k=k: x[k], stacked))
      for k in range(2)
  )
  assert any(not np.allclose(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_diverged_run_is_recorded_and_others_finish(tmp_path):
  config = gated_config(parallel_runs=2, steps=3, eval_every=0)
  config.train.run_overrides = ("", "train.learning_rate=inf")
  with pytest.raises(TrainingError, match="1 of 2 parallel runs.*seed 1"):
    training.train_and_evaluate(config, str(tmp_path))
  ok = json.loads((tmp_path / "seed0" / "results.json").read_text())
  assert ok["steps"] == 3 and np.isfinite(ok["test_error"])
  assert (
      "non-finite"
      in json.loads((tmp_path / "seed1" / "failed.json").read_text())["error"]
  )
  assert not (tmp_path / "seed1" / "results.json").exists()
  combined = json.loads((tmp_path / "results.json").read_text())
  assert [r["status"] for r in combined["runs"]] == ["ok", "failed"]
