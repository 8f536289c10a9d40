"""Lesions: deleting and reordering modules (Veit et al. 2016 sec. 4)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_variables

from resflax import lesion, models

X = jax.random.normal(jax.random.key(7), (4, 32, 32, 3))


@pytest.fixture(scope="module")
def net20():
  model = models.create_model(depth=20, widths=(4, 8, 8))
  return model, random_variables(model), jax.jit(model.apply)


def _take_units(tree, keep):
  """Stage tree with unit0 and the stacked units ``keep`` (indices 1..)."""
  idx = jnp.asarray([k - 1 for k in keep])
  return {
      "unit0": tree["unit0"],
      "units": jax.tree.map(lambda a: a[idx], tree["units"]),
  }


@pytest.mark.parametrize("unit", ["original", "full_preact"])
def test_deletion_equals_shallower_network(unit):
  deep = models.create_model(depth=20, widths=(4, 8, 8), unit=unit)
  shallow = models.create_model(depth=14, widths=(4, 8, 8), unit=unit)
  v = random_variables(deep, seed=3)
  # One module per stage deleted: stage 0 unit 1, stage 1 unit 2, stage 2
  # unit 1 (modules 1, 5, 7 in forward order).
  lesioned = lesion.delete_modules(v, indices=[1, 5, 7])
  keep = {"stage0": [2], "stage1": [1], "stage2": [2]}
  small = {"lesion": shallow.default_lesion()}
  for col in ("params", "batch_stats"):
    small[col] = {
        k: (_take_units(t, keep[k]) if k in keep else t)
        for k, t in v[col].items()
    }
  f = jax.jit(lambda m, vv: m.apply(vv, X), static_argnums=0)
  np.testing.assert_allclose(
      f(deep, lesioned), f(shallow, small), rtol=1e-5, atol=1e-5
  )
  assert not np.allclose(f(deep, lesioned), f(deep, v), atol=1e-3)


def test_k_zero_changes_nothing(net20):
  model, v, apply = net20
  same = lesion.delete_modules(v, 0, key=jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, same["lesion"], v["lesion"])
  np.testing.assert_array_equal(apply(same, X), apply(v, X))
  unswapped, tau = lesion.reorder_modules(v, 0, key=jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, unswapped["lesion"], v["lesion"])
  assert float(tau) == 1.0


def test_input_params_untouched(net20):
  _, v, _ = net20
  before = jax.tree.map(np.array, v)
  lesion_ids = jax.tree.map(id, v["lesion"])
  out = lesion.delete_modules(v, 4, key=jax.random.key(2))
  out2, _ = lesion.reorder_modules(out, 3, key=jax.random.key(3))
  out3 = lesion.swap_modules(out2, 1, 2)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, v))
  assert jax.tree.map(id, v["lesion"]) == lesion_ids
  assert (
      out["params"] is v["params"] and out3["batch_stats"] is v["batch_stats"]
  )
  assert (
      float(np.sum(out["lesion"]["stage0"]["active"]))
      + float(np.sum(out["lesion"]["stage1"]["active"]))
      + float(np.sum(out["lesion"]["stage2"]["active"]))
      == 9 - 4
  )


def test_random_deletions_vmap_and_traced_k(net20):
  _, v, _ = net20
  keys = jax.random.split(jax.random.key(0), 16)
  stacked = jax.vmap(lambda k: lesion.delete_modules(v, 3, key=k)["lesion"])(
      keys
  )
  flat = np.concatenate([stacked[f"stage{s}"]["active"] for s in range(3)], 1)
  assert flat.shape == (16, 9)
  np.testing.assert_array_equal((flat == 0).sum(1), 3)
  assert len({tuple(r) for r in flat}) > 5  # draws differ
  for i in (0, 7):  # vmapped == one at a time
    one = lesion.delete_modules(v, 3, key=keys[i])["lesion"]
    np.testing.assert_array_equal(
        np.concatenate([one[f"stage{s}"]["active"] for s in range(3)]), flat[i]
    )
  # k as data: one compiled function for every k.
  f = jax.jit(lambda k, key: lesion.delete_modules(v, k, key=key)["lesion"])
  for k in range(5):
    out = f(k, jax.random.key(k))
    total = sum(float(out[f"stage{s}"]["active"].sum()) for s in range(3))
    assert total == 9 - k
  assert f._cache_size() == 1
  # The draw is the k lowest ranks of n uniform scores (the same modules
  # as before models.masks became the one k-of-n mechanism).
  for k, seed in ((3, 0), (5, 9)):
    key = jax.random.key(seed)
    ranks = np.argsort(np.argsort(np.asarray(jax.random.uniform(key, (9,)))))
    got = lesion.delete_modules(v, k, key=key)["lesion"]
    np.testing.assert_array_equal(
        np.concatenate([got[f"stage{s}"]["active"] for s in range(3)]),
        (ranks >= k).astype(np.float32),
    )
  # Deleting from a lesioned net picks among the modules still active.
  partial = lesion.delete_modules(v, indices=[0, 1, 2, 3, 4, 5])
  rest = lesion.delete_modules(partial, 3, key=jax.random.key(4))
  assert (
      sum(float(rest["lesion"][f"stage{s}"]["active"].sum()) for s in range(3))
      == 0
  )
  spared = lesion.delete_modules(
      v,
      6,
      key=jax.random.key(5),
      candidates=[
          not m.downsampling
          for m in lesion.module_table(models.create_model(depth=20))
      ],
  )
  np.testing.assert_array_equal(
      [spared["lesion"][s]["active"][0] for s in ("stage1", "stage2")], 1.0
  )


def test_bad_arguments_name_the_problem(net20):
  _, v, _ = net20
  with pytest.raises(ValueError, match="exactly one of key"):
    lesion.delete_modules(v, 1)
  with pytest.raises(ValueError, match=r"in 0\.\.8"):
    lesion.delete_modules(v, indices=[9])
  with pytest.raises(ValueError, match="repeat"):
    lesion.delete_modules(v, indices=[1, 1])
  with pytest.raises(ValueError, match=r"k=10 must be in 0\.\.9"):
    lesion.delete_modules(v, 10, key=jax.random.key(0))
  with pytest.raises(ValueError, match="never moves"):
    lesion.swap_modules(v, 3, 4)  # stage 1's unit 0 downsamples
  with pytest.raises(ValueError, match="same stage"):
    lesion.swap_modules(v, 1, 4)
  with pytest.raises(ValueError, match="'lesion' collection"):
    lesion.delete_modules(v["params"], 1, key=jax.random.key(0))


def test_module_table_from_model_and_variables(net20):
  model, v, apply = net20
  from_vars = lesion.module_table(v)
  assert from_vars == [
      dataclasses.replace(m, changes_shape=m.downsampling)
      for m in lesion.module_table(model)
  ]
  assert [m.index for m in from_vars if m.downsampling] == [3, 6]
  assert lesion.stage_sizes(v) == (3, 3, 3) and lesion.num_modules(v) == 9
  vgg = models.create_model(name="vgg", depth=8, widths=(4, 8, 8))
  assert not any(m.downsampling for m in lesion.module_table(vgg))
  with pytest.raises(ValueError, match="9 modules"):
    lesion.module_table(v, downsampling=[True])


def test_swap_and_swap_back_restores_outputs_exactly(net20):
  model, v, apply = net20
  f = apply
  base = f(v, X)
  once = lesion.swap_modules(v, 4, 5)
  np.testing.assert_array_equal(
      lesion.module_order(once), [0, 1, 2, 3, 5, 4, 6, 7, 8]
  )
  assert not np.allclose(f(once, X), base, atol=1e-4)
  back = lesion.swap_modules(once, 4, 5)
  np.testing.assert_array_equal(f(back, X), base)
  # A random reordering, undone by swapping its pairs back in reverse.
  shuffled, tau = lesion.reorder_modules(v, 3, key=jax.random.key(11))
  order = np.asarray(lesion.module_order(shuffled))
  # Post-activation: stage 0's unit 0 keeps the shape and moves too.
  movable = [0, 1, 2, 4, 5, 7, 8]
  assert float(tau) == pytest.approx(_reference_tau(order[movable]), abs=1e-6)
  undo = shuffled
  for pos in range(9):
    cur = np.asarray(lesion.module_order(undo))
    if cur[pos] != pos:
      undo = lesion.swap_modules(undo, int(cur[pos]), pos)
  np.testing.assert_array_equal(lesion.module_order(undo), np.arange(9))
  np.testing.assert_array_equal(f(undo, X), base)
  assert f._cache_size() == 1


def test_reorder_only_moves_same_shape_units(net20):
  _, v, _ = net20
  taus, moved_first = [], False
  for s in range(8):
    new, tau = lesion.reorder_modules(v, s, key=jax.random.key(s))
    order = np.asarray(lesion.module_order(new))
    assert list(order[[3, 6]]) == [3, 6]  # the downsampling units stay
    moved_first = moved_first or order[0] != 0
    for stage in range(3):  # nothing leaves its stage
      assert sorted(order[3 * stage : 3 * stage + 3]) == list(
          range(3 * stage, 3 * stage + 3)
      )
    taus.append(float(tau))
  assert taus[0] == 1.0 and min(taus) < 1.0
  assert taus[1] < 1.0  # one swap always moves something
  # Veit's rule: stage 0's unit 0 (same shape in and out, post-activation)
  # has compatible dimensions, so reorderings move it.
  assert moved_first


def _brute_tau(order):
  n = len(order)
  s = sum(
      np.sign(order[j] - order[i])
      for i, j in itertools.combinations(range(n), 2)
  )
  return s / (n * (n - 1) / 2)


def _reference_tau(order):
  """Kendall's tau of ``order`` against its sorted order, outside resflax."""
  try:
    from scipy.stats import kendalltau  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _brute_tau(order)
  return kendalltau(np.sort(order), order)[0]


def test_kendall_tau():
  assert float(lesion.kendall_tau(np.arange(54))) == 1.0
  assert float(lesion.kendall_tau(np.arange(54)[::-1])) == -1.0
  rng = np.random.default_rng(0)
  for n in (2, 5, 54):
    for _ in range(5):
      o = rng.permutation(n)
      assert float(lesion.kendall_tau(o)) == pytest.approx(
          _reference_tau(o), abs=1e-6
      )
      assert float(lesion.kendall_tau(o)) == pytest.approx(
          _brute_tau(o), abs=1e-6
      )
  assert float(jax.jit(lesion.kendall_tau)(jnp.asarray([1, 0, 2]))) == (
      pytest.approx(1 / 3)
  )


def _with_orders(variables, orders):
  return {
      **variables,
      "lesion": {
          s: {**l, "order": jnp.asarray(orders[s], jnp.int32)}
          for s, l in variables["lesion"].items()
      },
  }


def test_reorder_tau_counts_only_modules_that_can_move(net20):
  _, v, _ = net20
  # Stages 0 and 1 run units 2, 1 after their unit 0; stage 2 keeps its
  # order. The modules that can move are all of stage 0 (post-activation,
  # same shape) and units 1 and 2 of the others (0, 1, 2, 4, 5, 7, 8); at
  # their positions run 0, 2, 1, 5, 4, 7, 8: 2 of 21 pairs discordant.
  known = _with_orders(
      v, {"stage0": [0, 2, 1], "stage1": [1, 0], "stage2": [0, 1]}
  )
  movable = [0, 1, 2, 4, 5, 7, 8]
  np.testing.assert_array_equal(lesion.movable_modules(known), movable)
  _, tau = lesion.reorder_modules(known, 0, key=jax.random.key(0))
  running = np.asarray(lesion.module_order(known))[movable]
  np.testing.assert_array_equal(running, [0, 2, 1, 5, 4, 7, 8])
  assert float(tau) == pytest.approx(_reference_tau(running), abs=1e-6)
  assert float(tau) == pytest.approx(17 / 21, abs=1e-6)
  # All 9 modules would give (36 - 2 * 2) / 36: the fixed unit-0 modules
  # only add concordant pairs.
  assert float(lesion.kendall_tau(lesion.module_order(known))) == (
      pytest.approx(32 / 36, abs=1e-6)
  )
  # Random swaps, traced, against the same independent count.
  reorder = jax.jit(lambda s, k: lesion.reorder_modules(v, s, key=k))
  for seed in range(4):
    new, tau = reorder(seed + 1, jax.random.key(seed))
    running = np.asarray(lesion.module_order(new))[movable]
    assert float(tau) == pytest.approx(_reference_tau(running), abs=1e-6)


def test_a_lone_unit_cannot_move():
  # Stage 1 has one unit besides unit 0: no partner of its shape, so it is
  # left out of tau along with both unit-0 modules.
  v = {
      "lesion": {
          "stage0": {"active": jnp.ones(3), "order": jnp.arange(2)},
          "stage1": {"active": jnp.ones(2), "order": jnp.arange(1)},
      }
  }
  np.testing.assert_array_equal(lesion.movable_modules(v), [1, 2])
  new, tau = lesion.reorder_modules(v, 1, key=jax.random.key(3))
  np.testing.assert_array_equal(lesion.module_order(new), [0, 2, 1, 3, 4])
  assert float(tau) == -1.0


def test_ten_lesions_one_compilation(net20):
  model, v, apply = net20
  jitted = jax.jit(model.apply)  # a fresh one, to count its compilations
  outs = []
  for i in range(10):
    lv = lesion.delete_modules(v, i % 4, key=jax.random.key(i))
    lv, _ = lesion.reorder_modules(lv, i % 3, key=jax.random.key(100 + i))
    outs.append(np.asarray(jitted(lv, X)))
  assert jitted._cache_size() == 1
  assert len({round(float(o.sum()), 4) for o in outs}) >= 6


def test_evaluator_one_compilation_matches_apply(net20):
  model, v, apply = net20
  rng = np.random.default_rng(0)
  # As many images as X, so the fixture's compiled apply is reused below.
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 4)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  ev = lesion.LesionEvaluator(
      model, images, labels, mean, std, batch_size=3, lesions_per_call=3
  )
  stacked = lesion.single_deletion_lesions(v)
  out = ev(v, stacked)  # 10 lesions: chunks of 3, last one padded
  x = (images / 255.0 - mean) / std
  for i in (0, 4, 9):
    lv = {**v, "lesion": jax.tree.map(lambda a: a[i], stacked)}
    logits = apply(lv, jnp.asarray(x, jnp.float32))
    assert out["error"][i] == pytest.approx(
        float(np.mean(np.argmax(logits, -1) != labels))
    )
  # Chunks whose orders differ take the sequential branch of the same
  # program; other counts reuse it too.
  mixed = [
      lesion.swap_modules(v, 1, 2),
      lesion.delete_modules(v, 2, key=jax.random.key(0)),
      lesion.reorder_modules(
          lesion.delete_modules(v, 1, key=jax.random.key(1)),
          2,
          key=jax.random.key(2),
      )[0],
  ]
  got = ev(v, mixed)
  for i, lv in enumerate(mixed):
    logits = apply(lv, jnp.asarray(x, jnp.float32))
    assert got["error"][i] == pytest.approx(
        float(np.mean(np.argmax(logits, -1) != labels))
    )
    assert got["loss"][i] == pytest.approx(
        float(
            np.mean(
                optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            )
        ),
        rel=1e-5,
    )
  ev(v)
  assert ev.compilations == 1


@pytest.mark.parametrize("k", [2.5, 0.5, 9.5, "3", True, np.float32(2.0)])
def test_delete_modules_refuses_a_count_that_is_not_an_integer(k):
  model = models.create_model("resnet20")
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(TypeError, match="k must be an integer"):
    lesion.delete_modules(v, k, key=jax.random.key(1))

  # Integers of every kind still work, traced ones included.
  def deleted(variables):
    return int(
        sum(
            np.asarray(s["active"]).size - np.asarray(s["active"]).sum()
            for s in variables["lesion"].values()
        )
    )

  for ok in (2, np.int64(2), jnp.int32(2)):
    assert deleted(lesion.delete_modules(v, ok, key=jax.random.key(1))) == 2
  traced = jax.jit(lambda k: lesion.delete_modules(v, k, key=jax.random.key(1)))
  assert deleted(traced(jnp.int32(3))) == 3


@pytest.mark.parametrize("config", [123, 1.5, ["resnet20"]])
def test_create_model_names_its_argument_on_a_wrong_type(config):
  with pytest.raises(TypeError, match="create_model: config must be"):
    models.create_model(config)


def test_ops_take_the_whole_variables_tree_as_variables(net20):
  # One name for one thing: the whole tree (params, batch_stats, lesion).
  import inspect  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top

  from resflax.models import masks  # pylint: disable=g-import-not-at-top

  _, v, _ = net20
  for fn in (
      lesion.delete_modules,
      lesion.single_deletion_lesions,
      lesion.module_order,
      lesion.swap_modules,
      lesion.reorder_modules,
  ):
    first = next(iter(inspect.signature(fn).parameters))
    assert first == "variables", fn.__name__
  key = jax.random.key(0)
  new = lesion.delete_modules(variables=v, k=2, key=key)
  # The old keyword still works for a release, with a warning.
  with pytest.warns(DeprecationWarning, match=r"delete_modules\(params=.*"):
    old = lesion.delete_modules(params=v, k=2, key=key)
  np.testing.assert_array_equal(
      lesion.module_order(old), lesion.module_order(new)
  )
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with pytest.raises(TypeError, match="given twice"):
      lesion.module_order(v, params=v)
  # Positional use, as README and the notebooks write it, is unchanged.
  lesion.reorder_modules(v, 1, key=key)
  # masks keeps one k-of-n mechanism: the unused random_ranks is gone.
  assert not hasattr(masks, "random_ranks")
