"""Train-state format versions: recorded in the workdir, keyed on, upgraded.

``resflax.training.formats`` holds the table of versions and their
upgrades; ``resume.restore`` is the one restore path that uses it.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, tiny_config

from resflax import training
from resflax.errors import CheckpointError
from resflax.training import checkpoint, formats
from resflax.training import state as state_lib
from resflax.training import workdir as workdir_lib

FIXTURES = os.path.join(REPO, "tests", "fixtures")
# Each fixture workdir and the format version its checkpoint is in.
FIXTURE_VERSIONS = {"workdir_v0_1": 0, "workdir_2026_12_05": 1}


def _target(config):
  spec = training.build_run(config, 10, 128)
  return jax.eval_shape(lambda: training.init_state(spec, 0, (32, 32, 3)))


def test_every_older_version_has_an_upgrade():
  assert sorted(formats.UPGRADES) == list(range(formats.CURRENT))


@pytest.mark.parametrize("name", sorted(FIXTURE_VERSIONS))
def test_an_unrecorded_checkpoint_is_the_version_of_its_structure(name):
  """The fixtures record no version: each is the one its structure is."""
  workdir = os.path.join(FIXTURES, name)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.FORMAT_FILE))
  assert workdir_lib.format_version(workdir, 4) is None
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as c:
    stored = formats.structure(c.stored_tree(4))
  target = _target(tiny_config())
  assert formats.infer_version(stored, target) == FIXTURE_VERSIONS[name]
  # A state saved without a run (a test's, say) is today's.
  assert formats.infer_version(formats.structure(target), target) == (
      formats.CURRENT
  )
  # Another network is no version at all.
  deeper = tiny_config()
  deeper.model.depth = 14
  assert formats.infer_version(stored, _target(deeper)) is None


def test_format_lines_say_which_version_each_step_is(tmp_path):
  workdir = str(tmp_path)
  workdir_lib.record_format(workdir, 4)  # resumed an unrecorded run at 4
  assert workdir_lib.format_version(workdir, 4) is None
  assert workdir_lib.format_version(workdir, 5) == formats.CURRENT
  workdir_lib.record_format(workdir, 8)  # already current: nothing added
  lines = (tmp_path / workdir_lib.FORMAT_FILE).read_text().splitlines()
  assert [json.loads(x) for x in lines] == [
      {"from_step": 5, "version": formats.CURRENT}
  ]
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  workdir_lib.record_format(str(fresh), 0)
  assert workdir_lib.format_version(str(fresh), 0) == formats.CURRENT


def test_restore_follows_the_recorded_version(tmp_path):
  """A workdir that says its checkpoint is resflax 0.1's is restored as
  that, whatever the checkpoint holds: no guessing from Orbax's errors."""
  run = tmp_path / "run"
  shutil.copytree(os.path.join(FIXTURES, "workdir_2026_12_05"), run)
  config = tiny_config()
  good = training.restore_state(config, str(run))
  assert int(good.step) == 4
  (run / workdir_lib.FORMAT_FILE).write_text(
      json.dumps({"from_step": 0, "version": 0}) + "\n"
  )
  with pytest.raises(CheckpointError, match="cannot restore checkpoint"):
    training.restore_state(config, str(run))
  (run / workdir_lib.FORMAT_FILE).write_text("{not json\n")
  with pytest.raises(CheckpointError, match="format.jsonl cannot be read"):
    training.restore_state(config, str(run))


def test_both_fixture_versions_restore_to_todays_format():
  """resflax 0.1's plain sums become TrainMetrics; today's state as is."""
  config = tiny_config()
  today = jax.tree.structure(_target(config))
  old = jax.device_get(
      training.restore_state(config, os.path.join(FIXTURES, "workdir_v0_1"))
  )
  new = jax.device_get(
      training.restore_state(
          config, os.path.join(FIXTURES, "workdir_2026_12_05")
      )
  )
  for state in (old, new):
    assert jax.tree.structure(state) == today
    assert int(state.step) == 4
    assert int(state.metrics.error.count) == 4 * 16
    assert int(state.metrics.loss.count) == 4
  # resflax 0.1's run had no error-based warm-up; the 2026-12-05 run was
  # still warming at step 4 (its README) and keeps warming: its window
  # counts as all wrong, as a new run's does.
  assert not old.warm and new.warm
  np.testing.assert_array_equal(old.warm_errors, np.zeros(10))
  np.testing.assert_array_equal(new.warm_errors, np.ones(10))
  # The 2026-12-05 run logged its train error over those 4 steps.
  logged = json.loads(
      open(
          os.path.join(FIXTURES, "workdir_2026_12_05", "metrics.jsonl")
      ).readline()
  )
  np.testing.assert_allclose(
      new.metrics.error.total / 64, logged["train_error"], rtol=1e-6
  )


@pytest.mark.parametrize("warm", [True, False])
def test_version_1_upgrade_keeps_the_warm_up_where_it_was(warm):
  """Stacked runs too: a run that had switched stays switched however bad
  its next batches, one still warming needs a window of good ones."""
  config = tiny_config(warmup_until_error=0.8)
  target = _target(config)
  stacked = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((3,) + s.shape, s.dtype), target
  )
  old = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), formats.layout(stacked, 1)
  )
  old["warm"] = np.asarray([warm, not warm, warm])
  new = formats.upgrade(old, 1, stacked, 16)
  assert jax.tree.structure(new) == jax.tree.structure(stacked)
  np.testing.assert_array_equal(new.warm, old["warm"])
  fill = [[float(w)] * 10 for w in old["warm"]]
  np.testing.assert_array_equal(new.warm_errors, fill)
  # One perfect batch does not end a warm-up (0.9 > 0.8); an all-wrong one
  # does not restart a finished one.
  for error in (0.0, 1.0):
    w, _ = jax.vmap(
        lambda w, b, e=error: state_lib.warmup_update(
            w, b, jnp.int32(4), jnp.float32(e), 0.8
        )
    )(jnp.asarray(new.warm), jnp.asarray(new.warm_errors))
    np.testing.assert_array_equal(w, old["warm"])


def test_version_2_upgrade_puts_unit_0_first_in_the_order():
  """Post-activation stage 0 now orders all its units; a version 2 order
  (units 1..n-1) keeps meaning the same execution order."""
  config = tiny_config()
  config.model.depth = 20
  target = _target(config)
  stacked = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((2,) + s.shape, s.dtype), target
  )
  lesion = formats._field(stacked, "variables")["lesion"]
  assert [lesion[s]["order"].shape[-1] for s in sorted(lesion)] == [3, 2, 2]
  old = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), formats.layout(stacked, 2)
  )
  old_lesion = formats._field(old, "variables")["lesion"]
  assert [old_lesion[s]["order"].shape for s in sorted(old_lesion)] == [
      (2, 2)
  ] * 3
  old_lesion["stage0"]["order"] = np.asarray([[1, 0], [0, 1]], np.int32)
  new = formats.upgrade(old, 2, stacked, 16)
  assert jax.tree.structure(new) == jax.tree.structure(stacked)
  # Unit 0 first, where it always ran; units 2, 1 (run 0) and 1, 2 after.
  np.testing.assert_array_equal(
      formats._field(new, "variables")["lesion"]["stage0"]["order"],
      [[0, 2, 1], [0, 1, 2]],
  )
  for s in ("stage1", "stage2"):  # their unit 0 downsamples: unchanged
    np.testing.assert_array_equal(
        formats._field(new, "variables")["lesion"][s]["order"],
        old_lesion[s]["order"],
    )


def test_version_3_upgrade_keeps_the_momentum_and_the_next_step():
  """Version 3 was a dict whose momentum was ``optax.trace``'s state, the
  rate applied by hand; upgraded, the next SGD step is bit for bit the one
  version 3 would have made."""
  config = tiny_config()
  t = config.train
  target = _target(config)
  params = target.variables["params"]
  # Version 3's optimiser, as state.make_optimizer was.
  v3_tx = optax.chain(
      optax.add_decayed_weights(t.weight_decay),
      optax.trace(decay=t.momentum, nesterov=t.nesterov),
  )
  v3 = formats.layout(target, 3)
  assert isinstance(v3, dict) and set(v3) == {
      f.name for f in dataclasses.fields(state_lib.TrainState)
  }
  assert jax.tree.structure(v3["opt_state"]) == jax.tree.structure(
      jax.eval_shape(v3_tx.init, params)
  )
  rng = np.random.default_rng(0)
  old = jax.tree.map(
      lambda s: np.asarray(rng.normal(size=s.shape)).astype(s.dtype), v3
  )
  new = formats.upgrade(old, 3, target, t.batch_size)
  assert isinstance(new, state_lib.TrainState)
  assert jax.tree.structure(new) == jax.tree.structure(target)
  for f in dataclasses.fields(new):
    if f.name != "opt_state":
      jax.tree.map(
          np.testing.assert_array_equal, getattr(new, f.name), old[f.name]
      )
  p = old["variables"]["params"]
  g = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), params
  )
  rate = jnp.float32(0.1)
  d, _ = v3_tx.update(g, old["opt_state"], p)
  want = jax.tree.map(lambda a, b: a - rate * b, p, d)
  u, _ = state_lib.make_optimizer(t, rate).update(g, new.opt_state, p)
  jax.tree.map(np.testing.assert_array_equal, optax.apply_updates(p, u), want)


def test_the_state_still_reads_as_a_dict_with_a_warning():
  state = training.init_state(
      training.build_run(tiny_config(), 10, 128), 0, (32, 32, 3)
  )
  with pytest.warns(DeprecationWarning, match=r"read state\.warm"):
    assert state["warm"] is state.warm
