"""Tests for resflax.checkpoint: round trips, interrupted saves, corruption
versus errors that are not corruption, failed saves."""

import builtins
import errno
import gc
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from resflax.training import checkpoint as ckpt_lib
from resflax.training.checkpoint import Checkpointer, CheckpointError

# Orbax leaves abandoned read coroutines behind after a restore that fails (as
# several tests here make it do on purpose); they are reported when garbage
# collected, possibly during a later test.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


def _state(offset=0):
  return {
      "params": {
          "w": jnp.arange(256, dtype=jnp.float32).reshape(16, 16) + offset,
          "b": jnp.full((16,), offset, dtype=jnp.bfloat16),
      },
      "step": jnp.int32(offset),
      "rng": jax.random.key_data(jax.random.PRNGKey(offset)),
      "host_counter": np.arange(3, dtype=np.int64) + offset,
  }


def _assert_same(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _data_files(step_dir):
  """Array data files inside an OCDBT step directory (largest first)."""
  files = [
      p
      for p in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True)
      if os.path.isfile(p)
  ]
  return sorted(files, key=os.path.getsize, reverse=True)


@pytest.fixture(autouse=True)
def _collect_orbax_leftovers():
  yield
  # Keep the leftovers described above from surfacing in other test modules.
  gc.collect()


@pytest.fixture
def absl_warnings(caplog):
  caplog.set_level(logging.WARNING)
  return caplog


def test_round_trip_dtypes_and_retention(tmp_path):
  with Checkpointer(tmp_path / "ck", max_to_keep=2) as ckpt:
    assert ckpt.latest_step() is None
    for step in (10, 20, 30):
      assert ckpt.save(step, _state(step))
    assert ckpt.all_steps() == [20, 30]
    assert ckpt.latest_step() == 30
    # Saving a step that already exists (e.g. right after resuming) is a no-op.
    assert not ckpt.save(30, _state(0))

    step, restored = ckpt.restore(_state())
    assert step == 30
    _assert_same(restored, _state(30))
    assert isinstance(restored["params"]["w"], jax.Array)
    assert isinstance(restored["host_counter"], np.ndarray)

    step, restored = ckpt.restore(jax.eval_shape(_state), step=20)
    assert step == 20
    assert isinstance(restored["rng"], jax.Array)
    assert restored["rng"].dtype == jnp.uint32
    np.testing.assert_array_equal(
        restored["params"]["w"], _state(20)["params"]["w"]
    )

  # A new instance sees the same checkpoints (state is on disk, not in memory).
  with Checkpointer(tmp_path / "ck") as ckpt:
    assert ckpt.all_steps() == [20, 30]
    manifest = json.loads(
        (tmp_path / "ck" / "30" / ckpt_lib.CHECKSUM_FILE).read_text()
    )
    assert manifest["step"] == 30 and manifest["files"]


def test_async_save_then_close(tmp_path):
  ckpt = Checkpointer(tmp_path, max_to_keep=None)
  ckpt.save(1, _state(1), wait=False)
  ckpt.save(2, _state(2), wait=False)  # waits for step 1 first
  ckpt.close()
  assert os.path.exists(tmp_path / "2" / ckpt_lib.CHECKSUM_FILE)
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1, 2]
    _assert_same(ckpt.restore(_state())[1], _state(2))


def test_flax_train_state_round_trip(tmp_path):
  """The real use: a flax TrainState with optax state and batch statistics."""
  optax = pytest.importorskip("optax")
  train_state = pytest.importorskip("flax.training.train_state")

  class State(train_state.TrainState):
    batch_stats: dict
    rng: jax.Array

  tx = optax.chain(
      optax.add_decayed_weights(1e-4),
      optax.sgd(optax.piecewise_constant_schedule(0.1, {32000: 0.1}), 0.9),
  )

  def make(seed):
    params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (3, 4))}
    return State.create(
        apply_fn=None,
        params=params,
        tx=tx,
        batch_stats={"mean": jnp.full((4,), float(seed))},
        rng=jax.random.key_data(jax.random.PRNGKey(seed)),
    )

  saved = make(1)
  saved = saved.replace(step=jnp.int32(7))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, saved)
    # TrainState.create's step is a Python int, which would restore as one.
    target = make(2).replace(step=jnp.int32(0))
    step, restored = ckpt.restore_latest_good(target)
  assert step == 7 and isinstance(restored, State)
  assert restored.tx is tx  # static fields come from the target
  _assert_same(restored, saved)


def test_restore_onto_named_sharding(tmp_path):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
    target = jax.tree.map(
        lambda x: jax.device_put(x, sharding)
        if isinstance(x, jax.Array)
        else x,
        _state(),
    )
    _, restored = ckpt.restore(target)
  assert restored["params"]["w"].sharding == sharding
  _assert_same(restored, _state(1))


def test_restore_errors(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
      ckpt.restore(_state())
    assert ckpt.restore_latest_good(_state()) is None  # fresh run
    ckpt.save(1, _state(1))
    bad_target = _state()
    bad_target["params"]["w"] = jnp.zeros((8, 8))
    with pytest.raises(CheckpointError, match=str(tmp_path / "1")):
      ckpt.restore(bad_target)


def test_fallback_on_truncated_and_bitflipped(tmp_path, absl_warnings):
  with Checkpointer(tmp_path, max_to_keep=5) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step))

  # Step 3: truncate every data file; step 2: flip one bit in the array data,
  # which Orbax itself does not notice (no checksum on array values).
  for f in _data_files(str(tmp_path / "3")):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  biggest = _data_files(str(tmp_path / "2"))[0]
  data = bytearray(open(biggest, "rb").read())
  data[len(data) // 3] ^= 0x01
  open(biggest, "wb").write(data)

  with Checkpointer(tmp_path, max_to_keep=5) as ckpt:
    step, restored = ckpt.restore_latest_good(_state())
    assert step == 1
    _assert_same(restored, _state(1))
    warnings = [
        r.getMessage()
        for r in absl_warnings.records
        if r.levelno == logging.WARNING
    ]
    assert any(str(tmp_path / "3") in m and "truncated" in m for m in warnings)
    assert any(str(tmp_path / "2") in m and "CRC-32" in m for m in warnings)
    # The broken ones are set aside, so saving those steps again works and
    # latest_step() does not point at garbage.
    assert ckpt.all_steps() == [1]
    assert os.path.isdir(str(tmp_path / "3") + ckpt_lib.CORRUPT_SUFFIX)
    assert ckpt.save(2, _state(22))
    assert ckpt.restore(_state())[0] == 2


def test_all_corrupted_raises(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
    ckpt.save(2, _state(2))
  for step in (1, 2):
    for f in _data_files(str(tmp_path / str(step))):
      open(f, "wb").close()
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointError) as excinfo:
      ckpt.restore_latest_good(_state())
  msg = str(excinfo.value)
  assert str(tmp_path / "1") in msg and str(tmp_path / "2") in msg
  assert "none can be restored" in msg
  # Nothing was renamed: a human decides what to do with the run.
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_unverified_checkpoint_still_restores(tmp_path):
  """Checkpoints without a checksum file (older writer, killed before it)."""
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
  os.remove(tmp_path / "1" / ckpt_lib.CHECKSUM_FILE)
  with Checkpointer(tmp_path) as ckpt:
    _assert_same(ckpt.restore_latest_good(_state())[1], _state(1))


def _big_state(offset=0):
  # Large enough for OCDBT to keep `w` in a data file of its own instead of
  # inline in a b-tree node.
  w = jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) + offset
  return {"w": w, "step": jnp.int32(offset)}


@pytest.fixture(scope="module")
def unsealed(tmp_path_factory):
  """Steps 1 and 2 without checksum files: only Orbax's own checks apply."""
  root = tmp_path_factory.mktemp("unsealed")
  with Checkpointer(root) as ckpt:
    ckpt.save(1, _big_state(1))
    ckpt.save(2, _big_state(2))
  for step in ("1", "2"):
    os.remove(root / step / ckpt_lib.CHECKSUM_FILE)
  return root


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _btree_node(step_dir):
  [path] = glob.glob(os.path.join(step_dir, "default", "d", "*"))
  return path


def _flip(path, bit, index):
  data = bytearray(open(path, "rb").read())
  data[index] ^= bit
  open(path, "wb").write(data)


# What each kind of damage makes tensorstore/Orbax raise, as observed with
# orbax-checkpoint 0.12.8 / tensorstore 0.1.86 (the warning quotes it).
_DAMAGE = {
    "truncated array data": (
        lambda d: _truncate(_data_files(d)[0]),
        "OUT_OF_RANGE",
    ),
    "truncated b-tree node": (
        lambda d: _truncate(_btree_node(d)),
        "OUT_OF_RANGE",
    ),
    "b-tree node fails its CRC": (
        lambda d: _flip(_btree_node(d), 0x01, -1),
        "DATA_LOSS",
    ),
    "undecodable b-tree node": (  # tensorstore gives no status for this one
        lambda d: _flip(_btree_node(d), 0x01, 14),
        "Error decoding b-tree node",
    ),
    "damaged zstd frame": (
        lambda d: _flip(_data_files(d)[0], 0x01, 0),
        "FAILED_PRECONDITION",
    ),
    "truncated metadata": (
        lambda d: _truncate(os.path.join(d, "default", "_METADATA")),
        "JSONDecodeError",
    ),
    "non-UTF-8 metadata": (
        lambda d: _flip(os.path.join(d, "default", "_METADATA"), 0x80, 0),
        "UnicodeDecodeError",
    ),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_orbax_detected_corruption_falls_back(
    unsealed, tmp_path, absl_warnings, damage
):
  directory = tmp_path / "ck"
  shutil.copytree(unsealed, directory)
  corrupt, expected = _DAMAGE[damage]
  corrupt(str(directory / "2"))
  with Checkpointer(directory) as ckpt:
    step, restored = ckpt.restore_latest_good(_big_state())
    assert step == 1
    _assert_same(restored, _big_state(1))
  warning = next(
      r.getMessage()
      for r in absl_warnings.records
      if "is corrupt" in r.getMessage()
  )
  assert str(directory / "2") in warning and expected in warning
  assert sorted(os.listdir(directory)) == ["1", "2" + ckpt_lib.CORRUPT_SUFFIX]


def _deny(monkeypatch, layer, error, step_dir):
  """Makes reading checkpoint `step_dir` raise `error` at `layer`."""
  if layer == "our checksum check":
    real_open = builtins.open

    def open_(file, *args, **kwargs):
      if str(file).startswith(step_dir + os.sep):
        raise error
      return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
  else:  # Orbax, e.g. for errors raised inside tensorstore's C++ code.
    real_restore = ckpt_lib.ocp.CheckpointManager.restore

    def restore(self, step, *args, **kwargs):
      if str(step) == os.path.basename(step_dir):
        raise error
      return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, "restore", restore)


_DENIED = 'PERMISSION_DENIED: Error reading "w/0.0" in OCDBT database: Failed'
_OOM = 'RESOURCE_EXHAUSTED: Error reading "w/0.0": Out of memory'


@pytest.mark.parametrize(
    "layer,error,expected",
    [
        (
            "our checksum check",
            PermissionError(13, "Permission denied"),
            "PermissionError",
        ),
        ("orbax", PermissionError(13, "Permission denied"), "PermissionError"),
        (
            "orbax",
            ValueError(_DENIED + " to open: Permission denied"),
            "PERMISSION_DENIED",
        ),
        ("orbax", MemoryError(), "MemoryError"),
        ("orbax", ValueError(_OOM), "RESOURCE_EXHAUSTED"),
        (
            "our checksum check",
            OSError(errno.EIO, "Input/output error"),
            "Input/output error",
        ),
    ],
)
def test_unreadable_is_not_corrupt(
    tmp_path, monkeypatch, layer, error, expected
):
  """Errors that say nothing about the data stop; nothing is set aside."""
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
    ckpt.save(2, _state(2))
  tried = []
  real_restore_step = Checkpointer._restore_step

  def spy(self, step, target):
    tried.append(step)
    return real_restore_step(self, step, target)

  monkeypatch.setattr(Checkpointer, "_restore_step", spy)
  _deny(monkeypatch, layer, error, str(tmp_path / "2"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(CheckpointError) as excinfo:
      ckpt.restore_latest_good(_state())
  message = str(excinfo.value)
  assert str(tmp_path / "2") in message and expected in message
  assert "\n" not in message
  assert tried == [2]  # no fallback to an older checkpoint
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


_RESTORE_CHILD = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from resflax.training.checkpoint import Checkpointer, CheckpointError

    for directory in sys.argv[1:]:
      with Checkpointer(directory) as ckpt:
        try:
          ckpt.restore_latest_good({'w': jnp.zeros((64, 64)),
                                    'step': jnp.int32(0)})
        except CheckpointError as e:
          print('ERROR', e, flush=True)
""")


def test_permission_denied_on_disk_is_not_corrupt(tmp_path):
  """A data file of the newest step really unreadable (chmod 000)."""
  dirs = {"sealed": tmp_path / "sealed", "unsealed": tmp_path / "unsealed"}
  for name, directory in dirs.items():
    with Checkpointer(directory) as ckpt:
      ckpt.save(1, _big_state(1))
      ckpt.save(2, _big_state(2))
    if name == "unsealed":  # Then tensorstore is the first to read it.
      for step in ("1", "2"):
        os.remove(directory / step / ckpt_lib.CHECKSUM_FILE)
  cmd = [sys.executable, "-c", _RESTORE_CHILD, *map(str, dirs.values())]
  if os.geteuid() == 0:  # Root reads anything unless it drops that power.
    if not shutil.which("setpriv"):
      pytest.skip("running as root, and no setpriv to drop CAP_DAC_OVERRIDE")
    cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
  denied = [_data_files(str(d / "2"))[0] for d in dirs.values()]
  for path in denied:
    os.chmod(path, 0)
  try:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        ),
    )
  finally:
    for path in denied:
      os.chmod(path, 0o644)
  if cmd[0] == "setpriv" and "setpriv:" in proc.stderr:
    pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr}")
  errors = [l for l in proc.stdout.splitlines() if l.startswith("ERROR ")]
  assert len(errors) == 2, proc.stdout + proc.stderr[-3000:]
  for error, directory, expected in zip(
      errors, dirs.values(), ["PermissionError", "PERMISSION_DENIED"]
  ):
    assert f'cannot restore checkpoint {directory / "2"}: ' in error
    assert expected in error, error
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_newest_not_matching_target_is_not_corrupt(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
    ckpt.save(2, dict(_state(2), extra=jnp.zeros(3)))
    with pytest.raises(CheckpointError) as excinfo:
      ckpt.restore_latest_good(_state())
  assert str(tmp_path / "2") in str(excinfo.value)
  assert "do not match" in str(excinfo.value)
  assert "\n" not in str(excinfo.value)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


@pytest.mark.parametrize("elsewhere", ["failed", "corrupt"])
def test_processes_agree(tmp_path, monkeypatch, elsewhere):
  """What another process saw about step 2 decides for this one too."""
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1))
    ckpt.save(2, _state(2))
  other = {"failed": ckpt_lib._FAILED, "corrupt": ckpt_lib._CORRUPT}[elsewhere]
  others = iter([other])  # only for the first step tried, step 2
  monkeypatch.setattr(
      ckpt_lib,
      "_worst_outcome",
      lambda outcome: max(outcome, next(others, outcome)),
  )
  with Checkpointer(tmp_path) as ckpt:
    if elsewhere == "failed":
      with pytest.raises(CheckpointError, match="another process"):
        ckpt.restore_latest_good(_state())
      assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    else:
      assert ckpt.restore_latest_good(_state())[0] == 1
      assert ckpt.all_steps() == [1]


def _fail_commit(monkeypatch):
  atomicity = pytest.importorskip("orbax.checkpoint._src.path.atomicity")

  async def no_space(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (simulated)")

  for cls_name in ("AtomicRenameTemporaryPath", "CommitFileTemporaryPath"):
    cls = getattr(atomicity, cls_name, None)
    if cls is None:
      pytest.skip("orbax internals changed; cannot simulate a failing commit")
    monkeypatch.setattr(cls, "finalize", no_space)


@pytest.mark.parametrize("wait", [True, False])
def test_failed_save_keeps_previous(tmp_path, monkeypatch, caplog, capfd, wait):
  """Disk full: one error line, no Orbax tracebacks, last good step kept."""
  caplog.set_level(logging.DEBUG)
  ckpt = Checkpointer(tmp_path, max_to_keep=1)
  ckpt.save(1, _state(1))
  _fail_commit(monkeypatch)
  with pytest.raises(CheckpointError) as excinfo:
    ckpt.save(2, _state(2), wait=wait)
    ckpt.wait_until_finished()
  message = str(excinfo.value)
  assert str(tmp_path / "2") in message and "No space left" in message
  assert "\n" not in message
  formatter = logging.Formatter()
  loud = [
      formatter.format(r)
      for r in caplog.records
      if r.levelno >= logging.WARNING
  ]
  assert not any("Traceback (most recent call last)" in t for t in loud), loud
  assert "Traceback (most recent call last)" not in capfd.readouterr().err
  # Orbax's tracebacks are still there for whoever turns on DEBUG.
  assert any(
      r.levelno == logging.DEBUG
      and r.exc_info
      and "No space left" in formatter.format(r)
      for r in caplog.records
  )
  monkeypatch.undo()
  # max_to_keep=1 must not have deleted the last good checkpoint.
  assert ckpt.all_steps() == [1]
  _assert_same(ckpt.restore(_state())[1], _state(1))
  ckpt.close()


def test_other_orbax_tracebacks_become_one_line(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  Checkpointer(tmp_path).close()  # installs the filter
  try:
    raise OSError(errno.EIO, "Input/output error")
  except OSError:
    exc_info = sys.exc_info()
  # What orbax's storage backend logs (and swallows) if it cannot delete.
  record = logging.LogRecord(
      "absl",
      logging.ERROR,
      "/x/orbax/checkpoint/_src/path/storage_backend.py",
      172,
      "Failed to remove checkpoint (%s)",
      ("/ck/1",),
      exc_info,
      func="delete_checkpoint",
  )
  logging.getLogger("absl").handle(record)
  [kept] = caplog.records
  assert kept.levelno == logging.ERROR and not kept.exc_info
  assert kept.getMessage() == (
      "Failed to remove checkpoint (/ck/1) (OSError:"
      " [Errno 5] Input/output error)"
  )


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores directory permissions",
)
def test_unwritable_directory(tmp_path):
  ckpt = Checkpointer(tmp_path, max_to_keep=1)
  ckpt.save(1, _state(1))
  os.chmod(tmp_path, 0o500)
  try:
    with pytest.raises(CheckpointError, match=str(tmp_path / "2")):
      ckpt.save(2, _state(2))
  finally:
    os.chmod(tmp_path, 0o700)
  assert ckpt.all_steps() == [1]
  ckpt.close()


# One child process (interpreter start-up dominates the cost) that first checks
# restoring across shardings on two fake CPU devices, then saves step 1 and
# is SIGKILLed while committing step 2.
_CHILD_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from orbax.checkpoint._src.path import async_path
    from resflax.training.checkpoint import Checkpointer

    mesh = Mesh(np.array(jax.devices()), ('data',))
    split = NamedSharding(mesh, P('data'))
    repl = NamedSharding(mesh, P())
    x = jax.device_put(jnp.arange(32.0).reshape(8, 4), split)
    with Checkpointer(os.path.join(sys.argv[1], 'sharded')) as ckpt:
      ckpt.save(5, {'x': x})
      for sharding in (repl, split):
        target = {'x': jax.ShapeDtypeStruct((8, 4), jnp.float32,
                                            sharding=sharding)}
        step, out = ckpt.restore(target)
        assert out['x'].sharding == sharding, out['x'].sharding
        np.testing.assert_array_equal(out['x'], np.arange(32.0).reshape(8, 4))
    print('SHARDED_OK', len(jax.devices()), flush=True)

    ckpt = Checkpointer(os.path.join(sys.argv[1], 'killed'))
    ckpt.save(1, {'w': jnp.ones((64, 64)), 'step': jnp.int32(1)})

    original_rename = async_path.rename

    async def killed_before_commit(src, dst, *args, **kwargs):
      # Everything of step 2 (arrays, metadata, commit_success.txt) is
      # written; the process dies at the last moment, before the rename of
      # the step directory that commits it.
      if os.path.basename(str(dst)) == '2':
        os.kill(os.getpid(), signal.SIGKILL)
      return await original_rename(src, dst, *args, **kwargs)

    async_path.rename = killed_before_commit
    ckpt.save(2, {'w': jnp.zeros((64, 64)), 'step': jnp.int32(2)})
    print('not reached')
""")


@pytest.fixture(scope="module")
def child_run(tmp_path_factory):
  pytest.importorskip("orbax.checkpoint._src.path.async_path")
  root = tmp_path_factory.mktemp("child")
  env = dict(
      os.environ,
      PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  proc = subprocess.run(
      [sys.executable, "-c", _CHILD_SCRIPT, str(root)],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  return root, proc


def test_resharding_restore_two_devices(child_run):
  _, proc = child_run
  assert "SHARDED_OK 2" in proc.stdout, proc.stderr[-3000:]


def test_killed_save_is_never_taken(child_run, caplog):
  root, proc = child_run
  assert proc.returncode == -9, proc.stderr[-3000:]
  directory = root / "killed"
  names = sorted(os.listdir(directory))
  assert "1" in names
  partial = [n for n in names if n.startswith("2.orbax-checkpoint-tmp")]
  assert partial, names  # what Orbax leaves behind: data under a temp name
  assert "2" not in names
  assert os.path.isdir(directory / partial[0] / "default")  # fully written

  target = {"w": jnp.zeros((64, 64)), "step": jnp.int32(0)}
  caplog.set_level(logging.WARNING)
  with Checkpointer(directory) as ckpt:
    assert "unfinished checkpoint save" in caplog.text
    assert partial[0] in caplog.text
    assert ckpt.all_steps() == [1]
    step, restored = ckpt.restore_latest_good(target)
    assert step == 1 and int(restored["step"]) == 1
    np.testing.assert_array_equal(restored["w"], np.ones((64, 64)))
    # The interrupted step can be saved again.
    ckpt.save(2, {"w": jnp.full((64, 64), 2.0), "step": jnp.int32(2)})
    assert ckpt.restore(target)[0] == 2
