"""Preemption, bad numbers, bad checkpoints and bad input (issue: reliability).

Each case drives the real CLI or ``train_and_evaluate`` on a tiny config.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, final_state, tiny_config

from resflax import data as data_lib
from resflax import fileio, training
from resflax.errors import ConfigError, TrainingError
from resflax.training import checkpoint
from resflax.training import workdir as workdir_lib


def assert_same_state(a, b):
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  assert int(a.step) == int(b.step)


@pytest.mark.slow
def test_sigterm_saves_and_resumes_exactly(tmp_path):
  env = {
      **os.environ,
      "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
      "PYTHONUNBUFFERED": "1",
  }
  cmd = [
      sys.executable,
      "-m",
      "resflax.main",
      "--config",
      os.path.join(REPO, "experiments/cifar_resnet.py:smoke"),
      "--workdir",
      str(tmp_path / "run"),
      "--config.train.steps=400",
      "--config.train.log_every=1",
      "--config.train.eval_every=0",
      "--config.train.checkpoint_every=0",
      "--config.train.scale_schedule=False",
  ]
  proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
  )
  for line in proc.stderr:  # wait until training is under way
    if "step 3/400" in line:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  assert proc.wait(timeout=300) == 143
  assert "received signal 15" in rest and "resume" in rest
  steps = [
      int(d)
      for d in os.listdir(tmp_path / "run" / "checkpoints")
      if d.isdigit()
  ]
  assert steps and 3 <= max(steps) < 400
  assert not (tmp_path / "run" / "results.json").exists()
  # Started again, it ends exactly where an uninterrupted run ends.
  done = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed" in done.stderr
  # The uninterrupted twin, in a 1-device subprocess like the CLI runs.
  twin = subprocess.run(
      cmd[:5] + ["--workdir", str(tmp_path / "twin")] + cmd[7:],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert twin.returncode == 0
  a = json.loads((tmp_path / "run" / "results.json").read_text())
  b = json.loads((tmp_path / "twin" / "results.json").read_text())
  assert a["test_error"] == b["test_error"] and a["steps"] == b["steps"] == 400
  check = subprocess.run(
      [
          sys.executable,
          "-c",
          (
              "import sys, numpy as np, jax; sys.path.insert(0, 'tests');"
              "from test_reliability import compare_workdirs;"
              f"compare_workdirs({str(tmp_path / 'run')!r}, "
              f"{str(tmp_path / 'twin')!r})"
          ),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert check.returncode == 0, check.stderr[-2000:]


def compare_workdirs(a, b):
  """Asserts two finished CLI runs saved identical final states."""
  from ml_collections import ConfigDict

  with open(os.path.join(a, "config.json")) as f:
    config = ConfigDict(json.load(f))
  config.model.widths = tuple(config.model.widths)
  config.train.lr_boundaries = tuple(config.train.lr_boundaries)
  config.train.run_overrides = tuple(config.train.run_overrides)
  assert_same_state(final_state(config, a), final_state(config, b))


def test_nonfinite_stops_naming_step_and_keeps_good_checkpoint(tmp_path):
  # Finite warm-up for 4 steps, then an infinite learning rate: the 5th
  # update (the log's "step 5") is the first non-finite one.
  config = tiny_config(
      warmup_steps=4,
      warmup_learning_rate=0.01,
      learning_rate=float("inf"),
      lr_boundaries=(),
      checkpoint_every=2,
      steps=8,
  )
  with pytest.raises(TrainingError, match=r"at step 5 \(loss = "):
    training.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()
  state = final_state(config, str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.variables))
  assert not (tmp_path / "results.json").exists()


def test_nonfinite_skip_option_finishes(tmp_path):
  config = tiny_config(
      warmup_steps=4,
      learning_rate=float("inf"),
      lr_boundaries=(),
      on_nonfinite="skip",
  )
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result["skipped_steps"] == 4 and result["steps"] == 8


def test_cli_nonfinite_exit_status(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "resflax.main",
          "--config",
          os.path.join(REPO, "experiments/cifar_resnet.py:smoke"),
          "--workdir",
          str(tmp_path),
          "--config.train.learning_rate=inf",
          "--config.train.steps=4",
          "--config.train.eval_every=0",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 1
  assert re.search(
      r"error: non-finite (loss|gradients|parameters)\b.* at " r"step \d+",
      proc.stderr,
  )


def test_workdir_with_other_config_is_refused(tmp_path):
  training.train_and_evaluate(tiny_config(steps=4), str(tmp_path))
  other = tiny_config(steps=4, learning_rate=0.05)
  with pytest.raises(ConfigError, match=r"train.learning_rate: 0.1 -> 0.05"):
    training.train_and_evaluate(other, str(tmp_path))
  other.train.allow_config_change = True
  training.train_and_evaluate(other, str(tmp_path))


def test_workdir_accepts_a_change_of_how_the_model_runs(tmp_path):
  # A run saved before model.scan_unroll existed, resumed unrolled and
  # rematerialised: same parameters, same numbers, so no refusal.
  saved = json.loads(tiny_config().to_json())
  del saved["model"]["scan_unroll"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  now = tiny_config()
  now.model.scan, now.model.remat = False, True
  workdir_lib.check_config(now, str(tmp_path))
  now.model.depth = 14
  with pytest.raises(ConfigError, match="model.depth"):
    workdir_lib.check_config(now, str(tmp_path))


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda c: setattr(c.train, "steps", 0), r"config.train.steps=0"),
        (
            lambda c: setattr(c.train, "batch_size", 18),
            r"batch_size=18.*device",
        ),
        (lambda c: setattr(c.model, "depth", 21), r"model.depth=21.*6n\+2"),
        (
            lambda c: setattr(c.model, "shortcut", "gated"),
            r"model.shortcut='gated'.*identity",
        ),
        (lambda c: setattr(c.train, "on_nonfinite", "ignore"), r"on_nonfinite"),
    ],
)
def test_bad_config_fails_before_data_or_compilation(
    tmp_path, monkeypatch, change, pattern
):
  def no_data(*a, **k):
    raise AssertionError("data loaded before the config was checked")

  monkeypatch.setattr(data_lib, "load_dataset", no_data)
  config = tiny_config()
  change(config)
  with pytest.raises(ConfigError, match=pattern) as e:
    training.train_and_evaluate(config, str(tmp_path / "w"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()


def test_cli_wrong_type_names_key(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "resflax.main",
          "--config",
          os.path.join(REPO, "experiments/cifar_resnet.py:smoke"),
          "--workdir",
          str(tmp_path),
          "--config.train.steps=abc",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0 and "steps" in proc.stderr


def _write_tree(root, classes, sizes=None, corrupt=None):
  from PIL import Image

  for split in ("train", "test"):
    for c in classes:
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(4):
        size = (sizes or {}).get((split, c, i), (32, 32))
        Image.new("RGB", size, (i * 40, 0, 0)).save(d / f"{i}.png")
  if corrupt:
    (root / corrupt).write_bytes(b"not an image")


@pytest.mark.parametrize(
    "setup,pattern",
    [
        (lambda r: None, r"does not exist|not found|missing"),
        (
            lambda r: (
                _write_tree(r, ["a", "b"]),
                shutil.rmtree(r / "train" / "b"),
                (r / "train" / "b").mkdir(),
            ),
            r"train/b",
        ),
        (
            lambda r: _write_tree(r, ["a", "b"], corrupt="train/a/1.png"),
            r"train/a/1.png",
        ),
        (
            lambda r: _write_tree(
                r, ["a", "b"], sizes={("train", "b", 2): (30, 32)}
            ),
            r"train/b/2.png",
        ),
    ],
)
def test_bad_data_names_file_and_writes_nothing(tmp_path, setup, pattern):
  root = tmp_path / "data"
  setup(root)
  config = tiny_config()
  config.data.name = "folder"
  config.data.path = str(root)
  config.data.cache_dir = (
      str(tmp_path / "cache") if "cache_dir" in config.data else ""
  )
  workdir = tmp_path / "w"
  with pytest.raises(data_lib.DataError, match=pattern):
    training.train_and_evaluate(config, str(workdir))
  leftovers = list(workdir.iterdir()) if workdir.exists() else []
  assert not leftovers, leftovers


def test_corrupt_latest_checkpoint_resumes_from_previous(tmp_path):
  full = tmp_path / "full"
  training.train_and_evaluate(tiny_config(), str(full))
  run = tmp_path / "run"
  training.train_and_evaluate(
      tiny_config(steps=6, checkpoint_every=2), str(run)
  )
  # Truncate every data file of the newest checkpoint (step 6).
  for dirpath, _, files in os.walk(run / "checkpoints" / "6"):
    for f in files:
      if f.endswith(".json"):
        continue
      p = os.path.join(dirpath, f)
      with open(p, "r+b") as fh:
        fh.truncate(max(os.path.getsize(p) // 2, 1))
  resumed = tiny_config(checkpoint_every=2, allow_config_change=True)
  training.train_and_evaluate(resumed, str(run))
  assert_same_state(
      final_state(tiny_config(), str(full)),
      final_state(tiny_config(), str(run)),
  )


def test_half_written_checkpoint_is_ignored(tmp_path):
  """What a SIGKILL during a save leaves must never be taken for good."""
  full = tmp_path / "full"
  training.train_and_evaluate(tiny_config(), str(full))
  run = tmp_path / "run"
  training.train_and_evaluate(tiny_config(steps=4), str(run))
  ckdir = run / "checkpoints"
  # A complete-looking copy under orbax's temporary name, as a kill leaves it.
  shutil.copytree(full / "checkpoints" / "8", ckdir / "8.orbax-checkpoint-tmp")
  training.train_and_evaluate(tiny_config(allow_config_change=True), str(run))
  assert_same_state(
      final_state(tiny_config(), str(full)),
      final_state(tiny_config(), str(run)),
  )


def test_disk_full_while_checkpointing_keeps_previous(tmp_path, monkeypatch):
  run = tmp_path / "run"
  training.train_and_evaluate(tiny_config(steps=4), str(run))
  real_save = checkpoint.Checkpointer.save

  def full_disk(self, step, state, **kw):
    raise checkpoint.CheckpointError(
        f"failed to save checkpoint step {step}: "
        f"{OSError(errno.ENOSPC, 'No space left on device')}"
    )

  monkeypatch.setattr(checkpoint.Checkpointer, "save", full_disk)
  with pytest.raises(checkpoint.CheckpointError, match="No space left"):
    training.train_and_evaluate(tiny_config(allow_config_change=True), str(run))
  monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
  ckpt = checkpoint.Checkpointer(run / "checkpoints")
  assert ckpt.latest_step() == 4
  ckpt.close()
  assert int(final_state(tiny_config(), str(run)).step) == 4


def test_results_written_atomically(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  fileio.write_json(path, {"test_error": 0.1})

  def killed(*a, **k):
    raise KeyboardInterrupt  # the process dies between write and rename

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    fileio.write_json(path, {"test_error": 0.2, "big": list(range(10000))})
  assert json.loads(path.read_text()) == {"test_error": 0.1}
