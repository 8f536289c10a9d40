"""Fault suite: kills, damage, full disks, bad inputs and config changes.

Each case injects one fault into a tiny run (``fault_helpers.tiny_config``,
12 steps, a checkpoint every 2) and checks what must hold after it: the
resumed parameters equal an uninterrupted twin's, results.json has the
twin's history (and a measured train time), no good checkpoint is renamed,
and every error is one line on stderr with a non-zero exit. The kill loops
are ``slow``; test_reliability.py and test_checkpoint.py cover SIGTERM, the
Checkpointer's own corruption handling and bad configs/data.
"""

import contextlib
import glob
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from fault_helpers import tiny_config
from helpers import REPO

from resflax import data as data_lib
from resflax import training
from resflax.errors import ConfigError, TrainingError, WorkdirError
from resflax.training import checkpoint
from resflax.training import workdir as workdir_lib

HELPERS = os.path.join(REPO, "tests", "fault_helpers.py")

pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


# ----------------------------------------------------------------------
# Helpers


def child_env(fault=""):
  """The environment of a CLI child that computes what this process does."""
  env = {
      **os.environ,
      "RESFLAX_FAULT": fault,
      "PYTHONUNBUFFERED": "1",
      "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
      # conftest's setting: the twin, trained here, draws with it.
      "JAX_THREEFRY_PARTITIONABLE": str(
          jax.config.jax_threefry_partitionable
      ).lower(),
  }
  env.pop("RESFLAX_TRACEBACK", None)
  return env


def cli(workdir, *flags, fault="", config=HELPERS, prefix=(), timeout=300):
  """Runs the command line on the tiny run (a fault first), like a user."""
  env = child_env(fault)
  cmd = [
      *prefix,
      sys.executable,
      HELPERS,
      "--config",
      config,
      "--workdir",
      str(workdir),
      *flags,
  ]
  return subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


def assert_one_line_error(proc, pattern=""):
  """A non-zero exit, one ``error:`` line on stderr, no traceback."""
  err = proc.stderr
  assert proc.returncode not in (0, None), err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[
      -3000:
  ]
  assert pattern in errors[0], errors[0]
  return errors[0]


def state_of(workdir, config=None):
  return jax.device_get(
      training.restore_state(config or tiny_config(), str(workdir))
  )


def assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  assert int(a.step) == int(b.step)


def results(workdir):
  return json.loads((workdir / "results.json").read_text())


def assert_like_twin(run, twin):
  """Parameters, history and steps of ``run`` equal the twin's."""
  assert_same_params(state_of(run), state_of(twin))
  a, b = results(run), results(twin)
  assert a["history"] == b["history"]
  assert a["test_error"] == b["test_error"] and a["steps"] == b["steps"]
  assert a["train_seconds"] > 0 and a["images_per_second"] is not None


def set_aside(workdir):
  return sorted(
      n for n in os.listdir(workdir / "checkpoints") if ".resflax-" in n
  )


@contextlib.contextmanager
def tmpfs(path, size):
  """A tmpfs of ``size`` mounted at ``path`` (skips where one cannot be)."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      capture_output=True,
  )
  if mounted.returncode:
    pytest.skip(
        "cannot mount a tmpfs here (needs root): "
        + mounted.stderr.decode().strip()
    )
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory):
  """Fills the filesystem of ``directory`` to the last byte."""
  fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
  with contextlib.suppress(OSError):
    while os.write(fd, b"\0" * 4096):
      pass
  with contextlib.suppress(OSError):
    while os.write(fd, b"\0"):
      pass
  os.close(fd)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
  """The uninterrupted run every resumed run must equal."""
  path = tmp_path_factory.mktemp("twin") / "run"
  training.train_and_evaluate(tiny_config(), str(path))
  return path


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A CLI run stopped by Ctrl-C during step 8's save: it stops at step 8."""
  path = tmp_path_factory.mktemp("stopped") / "run"
  proc = cli(path, fault=f"signal_after_save:8:{int(signal.SIGINT)}")
  return path, proc


def copy_of(src, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(src, dst)
  return dst


# ----------------------------------------------------------------------
# Kills and signals


def test_ctrl_c_saves_and_exits_130(stopped):
  path, proc = stopped
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "received signal 2: saved step 8" in proc.stderr
  steps = checkpoint.Checkpointer(path / "checkpoints")
  assert steps.all_steps() == [4, 6, 8]
  steps.close()
  assert not (path / "results.json").exists()


def test_kill_right_after_final_save_keeps_train_time(twin, tmp_path):
  run = tmp_path / "run"
  proc = cli(run, fault="kill_after_save:12")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert not (run / "results.json").exists()
  marks = [
      r
      for r in workdir_lib.RunLog(str(run)).records()
      if r["kind"] == "checkpoint" and r["step"] == 12
  ]
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)
  assert marks, "the final checkpoint's timing was never logged"
  assert results(run)["train_seconds"] == pytest.approx(
      marks[-1]["train_seconds"], rel=0.01
  )


def test_resume_after_ctrl_c_equals_twin(stopped, twin, tmp_path):
  run = copy_of(stopped[0], tmp_path)
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)
  assert not set_aside(run)


# ----------------------------------------------------------------------
# Damaged files


def test_damaged_metrics_line_keeps_the_rest(stopped, twin, tmp_path, caplog):
  run = copy_of(stopped[0], tmp_path)
  log = run / "metrics.jsonl"
  lines = log.read_text().splitlines(keepends=True)
  lines[4] = "{garbage\n"
  log.write_text("".join(lines))
  caplog.set_level(logging.WARNING)
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)
  warned = [
      r.getMessage() for r in caplog.records if "damaged" in r.getMessage()
  ]
  assert len(warned) == 1 and "line 5" in warned[0] and "\n" not in warned[0]


def test_cut_last_metrics_line_is_dropped(stopped, twin, tmp_path):
  run = copy_of(stopped[0], tmp_path)
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 10, "kind": "tra')  # a kill mid-write
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)


def test_unverified_step_is_not_restored(stopped, twin, tmp_path):
  """A step without checksums (a kill between commit and seal) whose values
  are wrong in a way Orbax cannot see: another run's step 8."""
  other = tmp_path / "other"
  training.train_and_evaluate(
      tiny_config(steps=8, learning_rate=0.05), str(other)
  )
  run = copy_of(stopped[0], tmp_path)
  shutil.rmtree(run / "checkpoints" / "8")
  shutil.copytree(other / "checkpoints" / "8", run / "checkpoints" / "8")
  os.remove(run / "checkpoints" / "8" / checkpoint.CHECKSUM_FILE)
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)
  assert set_aside(run) == ["8" + checkpoint.UNVERIFIED_SUFFIX]


def test_damaged_sealed_step_falls_back(stopped, twin, tmp_path):
  run = copy_of(stopped[0], tmp_path)
  for f in glob.glob(
      str(run / "checkpoints" / "8" / "**" / "d" / "*"), recursive=True
  ):
    data = bytearray(open(f, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(f, "wb").write(data)
  training.train_and_evaluate(tiny_config(), str(run))
  assert_like_twin(run, twin)
  assert set_aside(run) == ["8" + checkpoint.CORRUPT_SUFFIX]


def test_damaged_results_json_is_rewritten(twin, tmp_path, caplog):
  run = copy_of(twin, tmp_path)
  (run / "results.json").write_text('{"test_error": 0.')
  caplog.set_level(logging.WARNING)
  training.train_and_evaluate(tiny_config(), str(run))
  assert "results.json cannot be read" in caplog.text
  a, b = results(run), results(twin)
  assert a["history"] == b["history"] and a["test_error"] == b["test_error"]
  assert a["train_seconds"] == pytest.approx(b["train_seconds"], rel=0.01)


def test_damaged_config_json_is_one_line(twin, tmp_path):
  run = copy_of(twin, tmp_path)
  (run / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="config.json cannot be read") as e:
    training.train_and_evaluate(tiny_config(), str(run))
  assert "\n" not in str(e.value) and "config_history.jsonl" in str(e.value)


# ----------------------------------------------------------------------
# Permissions and full disks (command line: one line on stderr)


def test_unreadable_checkpoints_one_line(stopped, tmp_path):
  if not shutil.which("setpriv"):
    pytest.skip("setpriv missing: cannot drop root's file capabilities")
  run = copy_of(stopped[0], tmp_path)
  before = sorted(os.listdir(run / "checkpoints"))
  os.chmod(run / "checkpoints", 0)
  try:
    proc = cli(
        run,
        prefix=[
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--",
        ],
    )
  finally:
    os.chmod(run / "checkpoints", 0o755)
  assert_one_line_error(proc, str(run / "checkpoints"))
  assert sorted(os.listdir(run / "checkpoints")) == before


def test_full_disk_fresh_run_one_line(tmp_path):
  with tmpfs(tmp_path / "fs", "256k") as fs:
    fill(fs)
    proc = cli(fs / "run")
    assert_one_line_error(proc, "No space left on device")
    assert not os.path.exists(fs / "run" / workdir_lib.LOCK_FILE)


def test_full_disk_finishing_again_one_line(twin, tmp_path):
  with tmpfs(tmp_path / "fs", "2m") as fs:
    shutil.copytree(twin, fs / "run")
    os.remove(fs / "run" / "results.json")
    fill(fs)
    proc = cli(fs / "run")
    assert_one_line_error(proc, "No space left on device")


def test_full_disk_while_checkpointing_one_line(tmp_path):
  run = tmp_path / "run"
  with tmpfs(run / "checkpoints", "64k"):
    proc = cli(run)
    assert_one_line_error(proc, "No space left on device")


def test_low_space_for_curves_one_line(tmp_path):
  with tmpfs(tmp_path / "fs", "48k") as fs:
    proc = cli(fs / "run")
    assert_one_line_error(proc, "No space left on device")


# ----------------------------------------------------------------------
# Two processes, config changes, messages


def test_lock_is_taken_before_the_data_loads(tmp_path, monkeypatch):
  def no_data(*a, **k):
    raise AssertionError("data loaded while another run held the workdir")

  monkeypatch.setattr(data_lib, "load_dataset", no_data)
  os.makedirs(tmp_path / "run")
  with workdir_lib.WorkdirLock(str(tmp_path / "run")):
    with pytest.raises(WorkdirError, match="in use by another run"):
      training.train_and_evaluate(tiny_config(), str(tmp_path / "run"))


def test_config_change_recorded_from_the_resumed_step(tmp_path):
  run = tmp_path / "run"
  training.train_and_evaluate(tiny_config(steps=9), str(run))
  changed = tiny_config(steps=12, checkpoint_every=4, allow_config_change=True)
  training.train_and_evaluate(changed, str(run))
  history = [
      json.loads(l)
      for l in (run / workdir_lib.CONFIG_HISTORY_FILE).read_text().splitlines()
  ]
  assert [h["from_step"] for h in history] == [0, 9]
  assert json.loads((run / "config.json").read_text())["train"]["steps"] == 12


def test_fewer_steps_than_trained_is_refused(twin, tmp_path):
  run = copy_of(twin, tmp_path)
  before = {
      f: (run / f).read_bytes()
      for f in ("results.json", "config.json", "metrics.jsonl")
  }
  with pytest.raises(ConfigError, match=r"train.steps=6 is below step 12") as e:
    training.train_and_evaluate(
        tiny_config(steps=6, allow_config_change=True), str(run)
    )
  assert "\n" not in str(e.value)
  assert {f: (run / f).read_bytes() for f in before} == before


def test_model_change_is_named(twin, tmp_path):
  run = copy_of(twin, tmp_path)
  deeper = tiny_config(steps=14, allow_config_change=True)
  deeper.model.depth = 14
  with pytest.raises(ConfigError, match=r"model.depth: 8 -> 14") as e:
    training.train_and_evaluate(deeper, str(run))
  assert "metrics" not in str(e.value) and "\n" not in str(e.value)
  assert not set_aside(run)


def test_divergence_without_checkpoint_says_so(tmp_path):
  config = tiny_config(
      learning_rate=float("inf"),
      warmup_steps=0,
      lr_boundaries=(),
      checkpoint_every=4,
  )
  with pytest.raises(TrainingError) as e:
    training.train_and_evaluate(config, str(tmp_path / "run"))
  assert "no checkpoint was saved" in str(e.value)
  assert "keeps the last good checkpoint" not in str(e.value)


# ----------------------------------------------------------------------
# Kill loops (slow)


@pytest.mark.slow
def test_kill_before_seal_resumes_identically(twin, tmp_path):
  run = tmp_path / "run"
  proc = cli(run, fault="kill_before_seal:10")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert not os.path.exists(
      run / "checkpoints" / "10" / checkpoint.CHECKSUM_FILE
  )
  done = cli(run)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_like_twin(run, twin)
  assert set_aside(run) == ["10" + checkpoint.UNVERIFIED_SUFFIX]


KILLS = 10


@pytest.mark.slow
def test_random_kills_resume_identically(tmp_path):
  """SIGKILL, SIGTERM, Ctrl-C and SIGTERM-then-SIGKILL at random moments."""
  steps = 120
  twin = tmp_path / "twin"
  training.train_and_evaluate(tiny_config(steps=steps), str(twin))
  run = tmp_path / "run"
  rng = random.Random(19)
  kinds = ["kill", "term", "int", "term+kill"]
  env = child_env()
  cmd = [
      sys.executable,
      HELPERS,
      "--config",
      f"{HELPERS}:{steps}",
      "--workdir",
      str(run),
  ]
  survived = 0
  for k in range(KILLS):
    kind = kinds[k % len(kinds)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(rng.uniform(0.5, 7.0))  # start-up, compilation or training
    if proc.poll() is not None:
      break  # finished before the kill
    if kind == "kill":
      proc.kill()
    else:
      proc.send_signal(signal.SIGINT if kind == "int" else signal.SIGTERM)
      if kind == "term+kill":
        time.sleep(0.05)
        proc.kill()
    proc.wait(timeout=300)
    survived += 1
  done = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  config = tiny_config(steps=steps)
  assert_same_params(state_of(run, config), state_of(twin, config))
  assert results(run)["history"] == results(twin)["history"]
  assert not set_aside(run) or all(
      ".resflax-unverified" in n for n in set_aside(run)
  )
  print(f"\nkills survived: {survived} of {KILLS}")
  assert survived == KILLS
