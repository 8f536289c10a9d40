"""Tests for resflax.training.metrics: TensorBoard events, progress, summary."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from helpers import REPO

from resflax.training import metrics

# Prepended to the scripts below: TensorFlow is hidden as if not installed,
# as on an accelerator host or a Colab TPU runtime. Finders that return None,
# not raise, because libraries probe with importlib.util.find_spec (etils'
# epath does, opening the checkpoint directory).
_NO_TENSORFLOW = textwrap.dedent("""
    import sys

    _HIDDEN = ('tensorflow', 'tensorflow_datasets')

    class _Hide:

      def __init__(self, finder):
        self._finder = finder

      def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in _HIDDEN:
          return None
        return self._finder.find_spec(name, path, target)

      def __getattr__(self, attr):
        return getattr(self._finder, attr)

    sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]

    def loaded_tensorflow():
      return sorted(m for m in sys.modules if m.partition('.')[0] in _HIDDEN)
""")

# Writes a run and a resumed run, then reads them back three ways: with
# TensorBoard's EventAccumulator (every event, as written), with
# read_scalars, and with TensorBoard's hparams plugin (what its HPARAMS tab
# shows).
_WRITE_AND_READ = _NO_TENSORFLOW + textwrap.dedent("""
    import json
    import jax.numpy as jnp
    import numpy as np
    from resflax.training import metrics

    logdir = sys.argv[1]
    w = metrics.create_writer(logdir)
    w.write_hparams({'model': {'depth': 110, 'preact': True}, 'lr': 0.1,
                     'schedule': (32000, 48000), 'note': None})
    for step in (1, 2, 3):
      w.write_scalars(step, {'train_loss': 1.0 / step, 'lr': np.float32(0.1),
                             'seen': jnp.int32(32 * step)})
    w.flush()
    w.close()
    w = metrics.create_writer(logdir)  # resumed from a checkpoint at step 2
    w.write_scalars(3, {'train_loss': 0.25})
    w.write_scalars(4, {'train_loss': 0.2})
    w.close()
    out = {'writer_imported': {'tensorflow': loaded_tensorflow(),
                               'torch': 'torch' in sys.modules}}

    from tensorboard.backend.event_processing import event_accumulator
    ea = event_accumulator.EventAccumulator(logdir,
                                            size_guidance={'scalars': 0})
    ea.Reload()
    out['events'] = [[e.step, e.value] for e in ea.Scalars('train_loss')]
    out['read_scalars'] = {tag: [s.tolist(), v.tolist()] for tag, (s, v)
                           in metrics.read_scalars(logdir).items()}

    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import backend_context
    from tensorboard.plugins.hparams import get_experiment
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=logdir, multiplexer=mux,
        data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
    experiment = get_experiment.Handler(
        context.RequestContext(), backend_context.Context(tb), '',
        api_pb2.GetExperimentRequest()).run()
    out['hparams'] = {}
    for h in experiment.hparam_infos:
      if h.HasField('domain_interval'):
        out['hparams'][h.name] = h.domain_interval.min_value
      else:
        v = h.domain_discrete.values[0]
        out['hparams'][h.name] = getattr(v, v.WhichOneof('kind'))
    out['metric_columns'] = sorted(m.name.tag for m in experiment.metric_infos)
    out['reader_imported'] = loaded_tensorflow()
    print('RESULT' + json.dumps(out))
""")


def _run(script, *args, timeout=300, env=None):
  env = dict(
      env or os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  return subprocess.run(
      [sys.executable, "-c", script, *map(str, args)],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _result(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


def test_events_and_hparams_without_tensorflow(tmp_path):
  out = _result(_run(_WRITE_AND_READ, tmp_path))
  assert out["writer_imported"] == {"tensorflow": [], "torch": False}
  assert out["reader_imported"] == []
  third = pytest.approx(1 / 3, rel=1e-6)
  assert out["events"] == [
      [1, 1.0],
      [2, 0.5],
      [3, third],
      [3, 0.25],
      [4, pytest.approx(0.2, rel=1e-6)],
  ]
  scalars = out["read_scalars"]
  assert scalars["train_loss"] == [
      [1, 2, 3, 4],
      [1.0, 0.5, 0.25, pytest.approx(0.2, rel=1e-6)],
  ]
  assert scalars["lr"] == [[1, 2, 3], [pytest.approx(0.1, rel=1e-6)] * 3]
  assert scalars["seen"] == [[1, 2, 3], [32.0, 64.0, 96.0]]
  assert out["hparams"] == {
      "model.depth": 110,
      "model.preact": True,
      "lr": 0.1,
      "schedule": "(32000, 48000)",
      "note": "None",
  }
  # Taken from the run's scalars: the hparams need not name its metrics.
  assert out["metric_columns"] == ["lr", "seen", "train_loss"]


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
  w = metrics.create_writer(tmp_path)
  w.write_scalars(1, {"loss": 1.0})
  w.write_hparams({"lr": 0.1})
  w.flush()
  w.close()
  assert os.listdir(tmp_path) == []


def test_writer_refuses_bad_values_and_writes_after_close(tmp_path):
  w = metrics.create_writer(tmp_path / "run")
  with pytest.raises(ValueError):
    w.write_scalars(1, {"loss": np.array([1.0, 2.0])})
  w.close()
  w.close()
  with pytest.raises(ValueError, match="closed"):
    w.write_scalars(2, {"loss": 1.0})
  assert len(os.listdir(tmp_path / "run")) == 1


def test_model_summary_counts_per_module():
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  class Tiny(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.Dense(300, name="encoder")(x)
      return nn.Dense(2, name="head")(x)

  params = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.zeros((1, 4)))[
      "params"
  ]
  lines = metrics.model_summary(params).splitlines()
  rows = [
      [c.strip() for c in l.strip("|").split("|")]
      for l in lines
      if l.startswith("|")
  ]
  # encoder: 4 * 300 weights + 300 biases; head: 300 * 2 + 2.
  assert rows == [
      ["Module", "Parameters", "Share"],
      ["encoder", "1,500", "71.4%"],
      ["head", "602", "28.6%"],
  ]
  assert lines[-1] == "Total: 2,102 parameters"


class _FakeClock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def _progress(total, lines, **kwargs):
  clock = _FakeClock()
  logger = metrics.ProgressLogger(
      total, clock=clock, log_fn=lambda fmt, *a: lines.append(fmt % a), **kwargs
  )
  return logger, clock


def test_progress_logger_intervals_and_rates():
  lines = []
  p, clock = _progress(1000, lines, every_steps=100, every_secs=None)
  assert not p.should_report(1)
  assert not p.should_report(99)
  assert p.should_report(100)
  clock.t += 20.0
  info = p.report(100, images_per_step=128, extra={"loss": 0.5, "lr": 0.1})
  assert info == pytest.approx(
      {"steps_per_sec": 5.0, "images_per_sec": 640.0, "eta_secs": 180.0}
  )
  assert lines == [
      "step 100/1000 (10.0%) | 5.00 steps/s | 640 img/s |"
      " ETA 3m00s | loss=0.5 lr=0.1"
  ]
  assert not p.should_report(100)  # already reported
  assert not p.should_report(150)
  assert p.should_report(1000)  # the last step always reports
  clock.t += 10.0
  info = p.report(1000)
  assert info == pytest.approx({"steps_per_sec": 90.0, "eta_secs": 0.0})


def test_progress_rates_exclude_compilation():
  lines = []
  p, clock = _progress(1000, lines, every_steps=100, every_secs=None)
  clock.t += 45.0  # the first step: compilation
  p.reset_timer(1)
  clock.t += 9.9  # 99 steps at 10 steps/s
  info = p.report(
      100,
      images_per_step=128,
      extra={"train_loss": 2.302585, "train_error": 0.9, "learning_rate": 0.1},
  )
  assert info == pytest.approx(
      {"steps_per_sec": 10.0, "images_per_sec": 1280.0, "eta_secs": 90.0}
  )
  assert lines == [
      "step 100/1000 (10.0%) | 10.00 steps/s | 1280 img/s |"
      " ETA 1m30s | train_loss=2.303 train_error=0.9"
      " learning_rate=0.1"
  ]


def test_progress_rate_not_measured_yet():
  lines = []
  p, _ = _progress(10, lines, every_steps=1, every_secs=None)
  p.reset_timer(1)
  assert p.report(1, images_per_step=8) == {}
  assert lines == ["step 1/10 (10.0%) | ? steps/s | ? img/s | ETA ?"]


def test_progress_logger_time_based():
  p, clock = _progress(10**6, [], every_secs=60, start_step=5000)
  assert not p.should_report(5001)
  clock.t += 61
  assert p.should_report(5001)
  info = p.report(6220, images_per_step=None)
  assert info["steps_per_sec"] == pytest.approx(20.0)
  assert "images_per_sec" not in info
  # An evaluation pause should not count against the training rate.
  clock.t += 300
  p.reset_timer()
  clock.t += 60
  assert p.report(7420)["steps_per_sec"] == pytest.approx(20.0)


def test_format_duration():
  assert metrics.format_duration(42.4) == "42s"
  assert metrics.format_duration(312) == "5m12s"
  assert metrics.format_duration(2 * 3600 + 3 * 60) == "2h03m"
  assert metrics.format_duration(86400 + 4 * 3600) == "1d04h"
  assert metrics.format_duration(float("nan")) == "?"


# The command line in a process where TensorFlow cannot be imported; the
# events are read there too, so TensorBoard's TF-free reader is used.
_TRAIN_WITHOUT_TENSORFLOW = _NO_TENSORFLOW + textwrap.dedent("""
    import json
    import runpy

    workdir = sys.argv[sys.argv.index('--workdir') + 1]
    sys.argv = ['resflax.main'] + sys.argv[1:]
    try:
      runpy.run_module('resflax.main', run_name='__main__', alter_sys=True)
      code = 0
    except SystemExit as e:
      code = 0 if e.code is None else e.code
    if code == 0:
      from resflax.training import metrics
      print('RESULT' + json.dumps({
          'scalars': {tag: [s.tolist(), v.tolist()] for tag, (s, v)
                      in metrics.read_scalars(workdir).items()},
          'imported': loaded_tensorflow()}))
    sys.exit(code)
""")


def _image_folder(root):
  """train/ and test/ of two classes of 32x32 PNGs, told apart by colour."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, count in (("train", 24), ("test", 8)):
    for label, colour in (("blue", (20, 40, 200)), ("red", (200, 30, 20))):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = np.clip(
            np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255
        ).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
  return root


@pytest.mark.slow
def test_training_runs_without_tensorflow(tmp_path):
  """A smoke run on an image folder with TensorFlow unimportable."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), "resflax-test-jax-cache"
  )
  workdir = tmp_path / "run"
  folder = _image_folder(tmp_path / "images")
  proc = _run(
      _TRAIN_WITHOUT_TENSORFLOW,
      "--config",
      "experiments/cifar_resnet.py:smoke",
      "--workdir",
      workdir,
      "--config.data.name=folder",
      f"--config.data.path={folder}",
      "--config.train.steps=4",
      "--config.train.log_every=2",
      "--config.train.eval_every=4",
      "--config.train.checkpoint_every=0",
      timeout=900,
      env=env,
  )
  out = _result(proc)
  assert out["imported"] == []
  results = json.loads((workdir / "results.json").read_text())
  scalars = out["scalars"]
  assert scalars["train_loss"][0] == [2, 4]
  assert scalars["test_error"] == [
      [4],
      [pytest.approx(results["test_error"], abs=1e-6)],
  ]
  # One progress line per report, not a second copy from a logging writer.
  assert len([l for l in proc.stderr.splitlines() if "steps/s" in l]) == 2


# --- resflax.fileio (atomic result files; it has no test module of its own)


def test_write_json_numpy_and_jax_values(tmp_path):
  import jax.numpy as jnp

  from resflax import fileio

  obj = {
      "z": np.float32(0.25),
      "a": {"int": np.int64(3), "bool": np.bool_(True), "arr": np.arange(3)},
      "jax_scalar": jnp.float32(1.5),
      "jax_array": jnp.ones((2, 2), jnp.bfloat16),
      "tuple": (1, 2.5, None),
      "path": tmp_path / "x",
      7: "int key",
  }
  path = tmp_path / "sub" / "r.json"
  fileio.write_json(path, obj)
  text = path.read_text()
  assert text.index('"7"') < text.index('"a"') < text.index('"z"')  # sorted
  back = fileio.read_json(path)
  assert back["z"] == 0.25 and back["jax_scalar"] == 1.5
  assert back["a"] == {"arr": [0, 1, 2], "bool": True, "int": 3}
  assert back["jax_array"] == [[1.0, 1.0], [1.0, 1.0]]
  assert back["tuple"] == [1, 2.5, None]
  assert back["path"] == str(tmp_path / "x")
  assert os.listdir(path.parent) == ["r.json"]  # no temp files left


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
  from resflax import fileio

  path = tmp_path / "table.csv"
  fileio.write_atomic(path, "old\n")

  def broken_replace(src, dst):
    raise OSError(28, "No space left on device (simulated)")

  monkeypatch.setattr(fileio.os, "replace", broken_replace)
  with pytest.raises(OSError):
    fileio.write_atomic(path, "new\n")
  monkeypatch.undo()
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["table.csv"]


def test_write_csv_rows_with_different_keys(tmp_path):
  from resflax import fileio

  rows = [
      {"model": "resnet20", "error": np.float32(8.5), "seed": 0},
      {"model": "resnet110", "error": 6.43, "note": "warm-up", "seed": None},
  ]
  path = tmp_path / "r.csv"
  fileio.write_csv(path, rows)
  assert path.read_text().splitlines() == [
      "model,error,seed,note",
      "resnet20,8.5,0,",
      "resnet110,6.43,,warm-up",
  ]
  assert fileio.read_csv(path)[1]["note"] == "warm-up"
