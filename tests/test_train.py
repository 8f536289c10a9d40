"""Training pipeline: end to end, CLI, resume, multi-device, real data."""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, final_state, tiny_config

from resflax import data as data_lib
from resflax import training
from resflax.config import base_config, load_experiment
from resflax.training import formats


def test_train_and_evaluate_writes_results(tmp_path):
  result = training.train_and_evaluate(tiny_config(), str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  for key in (
      "test_error",
      "steps",
      "wall_seconds",
      "images_per_second",
      "config",
      "versions",
      "devices",
  ):
    assert key in saved
  assert saved["steps"] == 8 and result["steps"] == 8
  assert 0.0 <= saved["test_error"] <= 1.0
  assert saved["config"]["train"]["batch_size"] == 16
  assert len(saved["devices"]) == jax.device_count()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert (tmp_path / "checkpoints" / "8").exists()
  # The train state's format, recorded when the run started.
  assert json.loads((tmp_path / "format.jsonl").read_text()) == {
      "from_step": 0,
      "version": formats.CURRENT,
  }


def test_fast_compile_reaches_every_program_and_keeps_the_math(
    tmp_path, monkeypatch
):
  """``train.fast_compile`` sets XLA's backend optimisation level 0 on the
  initialiser, the step and evaluation; parameters match the optimised
  programs' to float32 noise."""
  real_jit, seen = jax.jit, []

  def spy(fn, *args, **kwargs):
    name = getattr(getattr(fn, "func", fn), "__name__", "?")
    seen.append((name, kwargs.get("compiler_options")))
    return real_jit(fn, *args, **kwargs)

  monkeypatch.setattr(jax, "jit", spy)
  training.train_and_evaluate(
      tiny_config(fast_compile=True), str(tmp_path / "fast")
  )
  monkeypatch.setattr(jax, "jit", real_jit)
  fast = {"xla_backend_optimization_level": 0}
  names = {n for n, options in seen if options == fast}
  assert {"<lambda>", "step_on_dataset", "evaluate_split"} <= names, seen
  training.train_and_evaluate(tiny_config(), str(tmp_path / "default"))
  a = final_state(tiny_config(), str(tmp_path / "fast"))
  b = final_state(tiny_config(), str(tmp_path / "default"))
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
      a.variables,
      b.variables,
  )


def test_resume_gives_identical_parameters(tmp_path):
  full, part = tmp_path / "full", tmp_path / "part"
  training.train_and_evaluate(tiny_config(), str(full))
  # Stop after 4 steps, then run the same workdir to the end.
  training.train_and_evaluate(tiny_config(steps=4), str(part))
  resumed = tiny_config(allow_config_change=True)
  training.train_and_evaluate(resumed, str(part))
  a = final_state(tiny_config(), str(full))
  b = final_state(tiny_config(), str(part))
  assert int(a.step) == int(b.step) == 8
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)


LEGACY = os.path.join(REPO, "tests", "fixtures", "workdir_v0_1")


def test_workdir_of_previous_version_resumes(tmp_path):
  """A workdir that resflax 0.1.0 stopped at step 4 of 8 (one device, JAX's
  default random scheme) resumes to the parameters that version's own
  uninterrupted run reached (its final checkpoint is the second fixture)."""
  import shutil  # pylint: disable=g-import-not-at-top

  part = tmp_path / "legacy"
  shutil.copytree(LEGACY, part)
  jax.config.update("jax_threefry_partitionable", True)  # as it was written
  try:
    result = training.train_and_evaluate(tiny_config(), str(part))
  finally:
    jax.config.update("jax_threefry_partitionable", False)
  a = final_state(tiny_config(), LEGACY + "_finished")
  b = final_state(tiny_config(), str(part))
  assert result["steps"] == 8 and int(a.step) == int(b.step) == 8
  # 1 device then vs this suite's 4: equal to float32 rounding.
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, a.variables["params"], b.variables["params"])
  jax.tree.map(close, a.opt_state, b.opt_state)
  # Running variances of steps 5-8 are today's unbiased estimate.
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=0.05),
      a.variables["batch_stats"],
      b.variables["batch_stats"],
  )
  # Its metrics were plain sums then: the train error of the whole run.
  assert b.metrics.error.count == 8 * 16


FIXTURE_2026_12_05 = os.path.join(
    REPO, "tests", "fixtures", "workdir_2026_12_05"
)


def fixture_2026_12_05_config():
  """The config the fixture's run was started with (its README)."""
  return tiny_config(warmup_steps=0, warmup_until_error=0.5)


def test_workdir_of_2026_12_05_resumes_and_finishes(tmp_path):
  """The run that main of 2026-12-05 stopped after its step-4 checkpoint
  (tests/fixtures/make_workdir_2026_12_05.py) trains on to step 8."""
  import shutil  # pylint: disable=g-import-not-at-top

  part = tmp_path / "run"
  shutil.copytree(FIXTURE_2026_12_05, part)
  before = (part / "metrics.jsonl").read_text().splitlines()
  result = training.train_and_evaluate(fixture_2026_12_05_config(), str(part))
  saved = json.loads((part / "results.json").read_text())
  assert result["steps"] == saved["steps"] == 8
  assert [h["step"] for h in saved["history"]] == [4, 8]
  records = [json.loads(line) for line in (part / "metrics.jsonl").open()]
  # The stopped run's lines are kept (a fresh start would rewind them) ...
  assert [json.dumps(r, sort_keys=True) for r in records[: len(before)]] == [
      json.dumps(json.loads(line), sort_keys=True) for line in before
  ]
  # ... and the resumed segment times steps 6-8 (its first step compiles)
  # on top of the fixture's 3 timed steps; a run from step 0 would time 7.
  ckpt = [r for r in records if r["kind"] == "checkpoint"]
  assert [(r["step"], r["timed_steps"]) for r in ckpt] == [(4, 3), (8, 6)]
  # Checkpoints after step 4 are in today's format; step 4 stays unrecorded.
  assert json.loads((part / "format.jsonl").read_text()) == {
      "from_step": 5,
      "version": formats.CURRENT,
  }
  state = final_state(fixture_2026_12_05_config(), str(part))
  assert int(state.step) == 8
  assert int(state.metrics.error.count) == 8 * 16
  # Still warming at step 4, it was upgraded to a window of all wrong
  # batches; steps 4-7 filled their slots with their batch errors (~84%,
  # over 50%), so it still warms.
  assert bool(state.warm)
  errors = state.warm_errors
  np.testing.assert_array_equal(errors[[0, 1, 2, 3, 8, 9]], np.ones(6))
  assert (errors[4:8] < 1).any() and (errors[4:8] > 0.5).all()
  # The log's train error of steps 5-8 is those four batches' mean.
  (last,) = [r for r in records if r["kind"] == "train" and r["step"] == 8]
  np.testing.assert_allclose(errors[4:8].mean(), last["train_error"], rtol=1e-6)


def run_steps(config, devices, steps):
  dataset = data_lib.load_dataset(config.data, seed=0)
  spec = training.build_run(
      config,
      dataset.num_classes,
      dataset.num_train,
      training.make_mesh(devices),
  )
  rep = spec.replicated
  state = jax.jit(
      functools.partial(training.init_state, spec, 0, dataset.image_shape),
      out_shardings=rep,
  )()
  args = [
      jax.device_put(a, rep)
      for a in (
          dataset.train_images,
          dataset.train_labels,
          dataset.mean,
          dataset.std,
      )
  ]
  step = jax.jit(functools.partial(training.step_on_dataset, spec))
  for _ in range(steps):
    state = step(state, *args)
  return jax.device_get(state)


@pytest.mark.slow  # test_bn_groups_spanning_devices_equal_one_device covers it
def test_one_and_four_devices_give_same_parameters():
  assert jax.device_count() >= 4, "conftest sets 4 fake CPU devices"
  config = tiny_config()
  one = run_steps(config, jax.devices()[:1], 3)
  four = run_steps(config, jax.devices()[:4], 3)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
      one.variables,
      four.variables,
  )


def test_bn_groups_spanning_devices_equal_one_device():
  """Groups of 8 of the 16 images over 4 devices of 4 images each: the
  statistics, loss and parameters equal one device's (float32 noise)."""
  config = tiny_config()
  config.model.bn_group_size = 8
  one = run_steps(config, jax.devices()[:1], 2)
  four = run_steps(config, jax.devices()[:4], 2)
  close = functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5)
  jax.tree.map(close, one.variables, four.variables)
  close(one.metrics.loss.total, four.metrics.loss.total)
  # Groups really differ from whole-batch statistics.
  config.model.bn_group_size = 0
  whole = run_steps(config, jax.devices()[:4], 2)
  assert not np.allclose(whole.metrics.loss.total, four.metrics.loss.total)


def test_any_eval_batch_on_any_device_count(tmp_path):
  config = tiny_config(steps=2, eval_batch_size=27, batch_size=16)
  result = training.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= result["test_error"] <= 1.0
  config = tiny_config(steps=2, eval_batch_size=64, batch_size=16)
  again = training.train_and_evaluate(config, str(tmp_path / "b"))
  # The masked padding leaves the error of the same 64 test images alone.
  assert again["test_error"] == pytest.approx(result["test_error"], abs=1e-6)


def test_bn_per_device_differs_from_global():
  config = tiny_config(bn_sync=False)
  per_device = run_steps(config, jax.devices()[:4], 2)
  config = tiny_config(bn_sync=True)
  global_bn = run_steps(config, jax.devices()[:4], 2)
  diffs = jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()),
      per_device.variables["params"],
      global_bn.variables["params"],
  )
  assert max(jax.tree.leaves(diffs)) > 1e-4


def test_learning_rate_schedule():
  t = base_config().train
  t.warmup_steps = 400
  lr = lambda s: float(training.learning_rate(jnp.int32(s), False, t))
  assert lr(0) == pytest.approx(0.01) and lr(399) == pytest.approx(0.01)
  assert lr(400) == pytest.approx(0.1) and lr(31_999) == pytest.approx(0.1)
  assert lr(32_000) == pytest.approx(0.01) and lr(48_000) == pytest.approx(
      0.001
  )
  t.warmup_steps = 0
  t.warmup_until_error = 0.8
  assert float(
      training.learning_rate(jnp.int32(5000), True, t)
  ) == pytest.approx(0.01)
  assert float(
      training.learning_rate(jnp.int32(5000), False, t)
  ) == pytest.approx(0.1)


def test_cli_smoke_subprocess(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  cmd = [
      sys.executable,
      "-m",
      "resflax.main",
      "--config",
      os.path.join(REPO, "experiments/cifar_resnet.py:smoke"),
      "--workdir",
      str(tmp_path),
      "--config.train.steps=6",
      "--config.train.eval_every=3",
      "--verbose",
  ]
  proc = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == 6 and len(saved["devices"]) == 2
  # Quiet and informative: every log line comes from resflax itself (no
  # orbax or other library chatter), each report is printed once, and the
  # start block and compile time are there.
  ours = {p.name for p in pathlib.Path(REPO, "resflax").rglob("*.py")}
  sources = re.findall(
      r"^[IWE]\d{4} [\d:.]+ +\d+ (\S+?):\d+\]", proc.stderr, re.M
  )
  assert sources and set(sources) <= ours, set(sources) - ours
  assert proc.stderr.count("step 6/6 (100.0%)") == 1
  for expected in (
      "devices: 2 x",
      "data: synthetic",
      "model: cifar_resnet",
      "compiling the training step",
      "compiled and ran the " "first step in",
  ):
    assert expected in proc.stderr
  # A mistyped key is an error that names it.
  bad = subprocess.run(
      cmd[:-2] + ["--config.train.stepz=3"],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert bad.returncode != 0 and "stepz" in bad.stderr


@pytest.mark.slow
@pytest.mark.data
def test_resnet20_learns_real_cifar10(tmp_path, cifar_archive):
  """About 2 minutes of CPU: well above chance (10%) on the real test set."""
  config = load_experiment(
      os.path.join(REPO, "experiments/cifar_resnet.py"), "20"
  )
  config.data.path = str(cifar_archive)
  config.data.max_test_images = 2000
  config.model.bn_group_size = 0
  # Short runs learn fastest on unaugmented data; 300 x 64 images reached
  # 39% and 44% accuracy with two random streams, so train 450 steps.
  config.data.augment = False
  config.train.batch_size = 64
  config.train.steps = 450
  config.train.lr_boundaries = ()
  config.train.warmup_steps = 0
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  config.train.log_every = 50
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result["test_error"] <= 0.60, result["test_error"]


def test_streamed_imagenet_path(tmp_path, monkeypatch):
  """The host-streamed path (ImageNet) with a stand-in for the tfds reader."""
  calls = []

  def fake_iterator(
      config_data,
      split,
      batch_size,
      *,
      seed=0,
      process_index=0,
      process_count=1,
      training=None,
  ):
    calls.append((split, batch_size, seed))
    rng = np.random.default_rng(seed)
    size = config_data.image_size

    def batches():
      for i in range(10**6 if split == "train" else 2):
        labels = rng.integers(0, 1000, batch_size).astype(np.int32)
        out = {
            "image": rng.integers(
                0, 255, (batch_size, size, size, 3), dtype=np.uint8
            ),
            "label": labels,
        }
        if split != "train":
          out["mask"] = np.array(
              [1.0] * (batch_size - 3) + [0.0] * 3, np.float32
          )
        yield out

    return batches()

  monkeypatch.setattr(data_lib, "imagenet_iterator", fake_iterator)
  c = tiny_config(steps=3, eval_every=0)
  c.data.name = "imagenet2012"
  c.data.image_size = 16
  c.model.num_classes = 1000
  result = training.train_and_evaluate(c, str(tmp_path))
  assert result["steps"] == 3 and result["eval_split"] == "validation"
  assert 0.9 <= result["test_error"] <= 1.0
  assert ("train", 16, 0) in calls and ("validation", 32, 0) in calls
