"""Tests for resflax.metrics: TF-free TensorBoard writer and progress logging."""

import glob
import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from resflax.training import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _event_files(logdir):
  return sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))


# Runs in a fresh interpreter: writing must not import TensorFlow. The files
# are then read back with TensorBoard's EventAccumulator while TF is made
# unimportable (as on an accelerator host without it), so the reader uses
# TensorBoard's TF-free stub; this also keeps the slow TF import out of the
# test run.
_NO_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from resflax.training import metrics

    logdir = sys.argv[1]
    w = metrics.create_writer(logdir)
    for step in (1, 2, 3):
      w.write_scalars(step, {'train/loss': 1.0 / step, 'lr': np.float32(0.1)})
    for step in range(0, 500, 100):
      w.write_scalars(step, {'top1_err': step / 10})
    w.flush()
    w.write_images(3, {'samples': np.random.RandomState(0).rand(2, 8, 6, 3)})
    w.write_texts(3, {'note': 'hello *tensorboard*'})
    w.write_histograms(3, {'weights': np.arange(100.0)})
    w.write_hparams({'model': {'depth': 110, 'preact': True}, 'lr': 0.1,
                     'schedule': (32000, 48000)})
    w.close()
    tf_imported = 'tensorflow' in sys.modules
    sys.modules['tensorflow'] = None  # from here on, importing TF fails

    from tensorboard.backend.event_processing import event_accumulator
    ea = event_accumulator.EventAccumulator(logdir, size_guidance={'tensors': 0})
    ea.Reload()
    tags = ea.Tags()
    out = {
        'tf_imported_by_writer': tf_imported,
        'scalars': {t: [[e.step, e.value] for e in ea.Scalars(t)]
                    for t in tags['scalars']},
        'tensors': sorted(tags['tensors']),
        'histograms': sorted(tags['histograms']),
        'image_strings': len(ea.Tensors('samples')[0].tensor_proto.string_val),
        'text': ea.Tensors('note')[0].tensor_proto.string_val[0].decode(),
    }
    print('RESULT' + json.dumps(out))
""")


def test_writer_needs_no_tensorflow(tmp_path):
  env = dict(
      os.environ,
      PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
      JAX_PLATFORMS='cpu',
  )
  proc = subprocess.run(
      [sys.executable, '-c', _NO_TF_SCRIPT, str(tmp_path)],
      env=env, capture_output=True, text=True, timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][-1]
  out = json.loads(line[len('RESULT'):])
  assert out['tf_imported_by_writer'] is False
  assert out['scalars']['train/loss'] == [
      [1, 1.0], [2, 0.5], [3, pytest.approx(1 / 3, rel=1e-6)]
  ]
  assert out['scalars']['lr'] == [[s, pytest.approx(0.1, rel=1e-6)] for s in (1, 2, 3)]
  assert out['scalars']['top1_err'] == [[s, s / 10] for s in range(0, 500, 100)]
  assert 'samples' in out['tensors'] and 'note' in out['tensors']
  assert '_hparams_/session_start_info' in out['tensors']
  assert out['histograms'] == ['weights']
  assert out['image_strings'] == 2 + 2  # width, height, two PNGs
  assert out['text'] == 'hello *tensorboard*'


def test_scalars_are_logged(tmp_path, caplog):
  caplog.set_level('INFO')
  w = metrics.create_writer(tmp_path, just_logging=True, collection='eval')
  w.write_scalars(7, {'loss': np.float32(0.25), 'accuracy': 0.9375})
  w.close()
  assert '[7] eval: accuracy=0.9375, loss=0.25' in caplog.text
  assert not _event_files(tmp_path)


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics.jax, 'process_index', lambda: 1)
  w = metrics.create_writer(tmp_path)
  assert isinstance(w, metrics.NoOpWriter)
  w.write_scalars(1, {'loss': 1.0})
  w.write_hparams({'lr': 0.1})
  w.close()
  assert os.listdir(tmp_path) == []


def test_encode_png_is_valid():
  img = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
  png = metrics.encode_png(img)
  assert png.startswith(b'\x89PNG\r\n\x1a\n')
  # Decode the single IDAT chunk back and compare the pixels.
  idat_len = int.from_bytes(png[33:37], 'big')
  assert png[37:41] == b'IDAT'
  raw = zlib.decompress(png[41:41 + idat_len])
  rows = np.frombuffer(raw, np.uint8).reshape(4, 1 + 5 * 3)
  assert (rows[:, 0] == 0).all()
  np.testing.assert_array_equal(rows[:, 1:].reshape(4, 5, 3), img)


class _FakeClock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def test_progress_logger_intervals_and_rates():
  clock = _FakeClock()
  lines = []
  p = metrics.ProgressLogger(
      1000, every_steps=100, every_secs=None, clock=clock,
      log_fn=lambda fmt, *a: lines.append(fmt % a),
  )
  assert not p.should_report(1)
  assert not p.should_report(99)
  assert p.should_report(100)
  clock.t += 20.0
  info = p.report(100, images_per_step=128, extra={'loss': 0.5, 'lr': 0.1})
  assert info['steps_per_sec'] == pytest.approx(5.0)
  assert info['images_per_sec'] == pytest.approx(640.0)
  assert info['eta_secs'] == pytest.approx(180.0)
  assert lines[-1] == (
      'step 100/1000 (10.0%) | 5.00 steps/s | 640 img/s | ETA 3m00s'
      ' | loss=0.5 lr=0.1'
  )
  assert not p.should_report(100)  # already reported
  assert not p.should_report(150)
  assert p.should_report(1000)  # the last step always reports
  clock.t += 10.0
  info = p.report(1000)
  assert info['eta_secs'] == 0.0
  assert info['steps_per_sec'] == pytest.approx(90.0)


def test_progress_logger_time_based():
  clock = _FakeClock()
  p = metrics.ProgressLogger(
      10**6, every_secs=60, start_step=5000, clock=clock, log_fn=lambda *a: None
  )
  assert not p.should_report(5001)
  clock.t += 61
  assert p.should_report(5001)
  info = p.report(6220, images_per_step=None)
  assert info['steps_per_sec'] == pytest.approx(20.0)
  assert 'images_per_sec' not in info
  # An evaluation pause should not count against the training rate.
  clock.t += 300
  p.reset_timer()
  clock.t += 60
  assert p.report(7420)['steps_per_sec'] == pytest.approx(20.0)


def test_format_duration():
  assert metrics.format_duration(42.4) == '42s'
  assert metrics.format_duration(312) == '5m12s'
  assert metrics.format_duration(2 * 3600 + 3 * 60) == '2h03m'
  assert metrics.format_duration(86400 + 4 * 3600) == '1d04h'
  assert metrics.format_duration(float('nan')) == '?'


# --- resflax.results (atomic result files; it has no test module of its own)


def test_write_json_numpy_and_jax_values(tmp_path):
  import jax.numpy as jnp
  from resflax import fileio as results

  obj = {
      'z': np.float32(0.25),
      'a': {'int': np.int64(3), 'bool': np.bool_(True), 'arr': np.arange(3)},
      'jax_scalar': jnp.float32(1.5),
      'jax_array': jnp.ones((2, 2), jnp.bfloat16),
      'tuple': (1, 2.5, None),
      'path': tmp_path / 'x',
      7: 'int key',
  }
  path = tmp_path / 'sub' / 'r.json'
  results.write_json(path, obj)
  text = path.read_text()
  assert text.index('"7"') < text.index('"a"') < text.index('"z"')  # sorted
  back = results.read_json(path)
  assert back['z'] == 0.25 and back['jax_scalar'] == 1.5
  assert back['a'] == {'arr': [0, 1, 2], 'bool': True, 'int': 3}
  assert back['jax_array'] == [[1.0, 1.0], [1.0, 1.0]]
  assert back['tuple'] == [1, 2.5, None]
  assert back['path'] == str(tmp_path / 'x')
  assert os.listdir(path.parent) == ['r.json']  # no temp files left


def test_write_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
  from resflax import fileio as results

  path = tmp_path / 'table.csv'
  results.write_atomic(path, 'old\n')

  def broken_replace(src, dst):
    raise OSError(28, 'No space left on device (simulated)')

  monkeypatch.setattr(results.os, 'replace', broken_replace)
  with pytest.raises(OSError):
    results.write_atomic(path, 'new\n')
  monkeypatch.undo()
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['table.csv']


def test_write_csv_rows_with_different_keys(tmp_path):
  from resflax import fileio as results

  rows = [
      {'model': 'resnet20', 'error': np.float32(8.5), 'seed': 0},
      {'model': 'resnet110', 'error': 6.43, 'note': 'warm-up', 'seed': None},
  ]
  path = tmp_path / 'r.csv'
  results.write_csv(path, rows)
  assert path.read_text().splitlines() == [
      'model,error,seed,note',
      'resnet20,8.5,0,',
      'resnet110,6.43,,warm-up',
  ]
  assert results.read_csv(path)[1]['note'] == 'warm-up'
