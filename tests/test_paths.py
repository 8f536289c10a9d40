"""Paths and their gradients (Veit et al. 2016 sec. 5) and path training."""

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_variables

from resflax import config as config_lib
from resflax import lesion, models, training
from resflax.lesion import paths


@pytest.mark.parametrize("n", [0, 1, 3, 54, 110, 1202])
def test_path_length_distribution_is_exact(n):
  counts = paths.path_length_distribution(n)
  assert len(counts) == n + 1
  assert all(type(c) is int for c in counts)
  assert counts == [math.comb(n, k) for k in range(n + 1)]
  assert sum(counts) == 2**n
  with pytest.raises(ValueError, match="integer >= 0"):
    paths.path_length_distribution(-1)


@pytest.mark.parametrize("n", [0, 1, 4, 7])
def test_surviving_paths_match_a_brute_force_count(n):
  # Veit Fig. 7: enumerate every path (a subset of modules) and every set
  # of d deleted modules; a path survives when it avoids all of them.
  subsets = [
      frozenset(c)
      for k in range(n + 1)
      for c in itertools.combinations(range(n), k)
  ]
  for d in range(n + 1):
    for deleted in itertools.combinations(range(n), d):
      count = [0] * (n + 1)
      for path in subsets:
        count[len(path)] += not path & set(deleted)
      assert paths.surviving_paths(n, d) == count, (n, deleted)
      want = [c / math.comb(n, k) for k, c in enumerate(count)]
      np.testing.assert_allclose(
          paths.surviving_path_fractions(n, d), want, rtol=1e-15
      )
    assert sum(paths.surviving_paths(n, d)) == 2 ** (n - d)


def test_surviving_path_fractions_are_exact_for_deep_networks():
  # 54 modules (Veit's ResNet-110), 10 deleted: 2^44 paths remain.
  assert sum(paths.surviving_paths(54, 10)) == 2**44
  frac = paths.surviving_path_fractions(54, 10)
  assert frac[0] == 1.0 and frac[45] == 0.0
  assert frac[1] == pytest.approx(44 / 54, rel=1e-15)
  # C(1000, k) overflows a float from k near 150: the ratio must not.
  deep = paths.surviving_path_fractions(1000, 1)
  assert deep[500] == pytest.approx(0.5, rel=1e-15)
  with pytest.raises(ValueError, match=r"d=5 deleted.*0 <= d <= n"):
    paths.surviving_paths(4, 5)


def test_path_masks_pick_k_modules():
  f = jax.jit(lambda key, k: paths.path_masks(key, k, 12))
  for k in (0, 1, 5, 12):
    res, skip = f(jax.random.key(k), k)
    assert float(res.sum()) == k
    np.testing.assert_array_equal(res + skip, 1.0)
  assert f._cache_size() == 1  # k is data
  # The k lowest ranks of n uniform scores, the draw lesions use too.
  key = jax.random.key(4)
  ranks = np.argsort(np.argsort(np.asarray(jax.random.uniform(key, (12,)))))
  np.testing.assert_array_equal(f(key, 5)[0], (ranks < 5).astype(np.float32))


def _route(a, m):
  # The mask semantics of resflax.models.unit: value a, gradient scaled by m.
  return m * a + (1 - m) * jax.lax.stop_gradient(a)


def _linear_stack(a):
  """grad_norm for y_i = y_{i-1} + a_i y_{i-1}: d y_n / d y_0 through the
  masked branches is the product of a_i over the residual-only modules."""
  traces = []

  def grad_norm(residual, skip, key):
    del key
    traces.append(1)

    def forward(y0):
      y = y0
      for i in range(a.shape[0]):
        y = _route(y, skip[i]) + _route(a[i] * y, residual[i])
      return y

    return jnp.abs(jax.grad(forward)(jnp.float32(1.3)))

  return grad_norm, traces


def test_sampler_matches_closed_form_on_linear_residual_stack():
  n = 6
  # Equal branches: every path of length k carries exactly a^k.
  grad_norm, traces = _linear_stack(jnp.full((n,), 0.5))
  out = paths.sample_path_gradients(
      grad_norm, n, range(n + 1), 5, jax.random.key(0), chunk=2
  )
  np.testing.assert_allclose(out.mean, 0.5 ** np.arange(n + 1), rtol=1e-6)
  np.testing.assert_allclose(out.std, 0.0, atol=1e-7)
  assert len(traces) == 1  # one trace for every length and sample

  # Distinct branches: each sample is the product over one k-subset, and
  # the mean over subsets is e_k(a) / C(n, k).
  a = np.array([0.9, 0.5, 0.3, 0.7])
  grad_norm, _ = _linear_stack(jnp.asarray(a, jnp.float32))
  out = paths.sample_path_gradients(
      grad_norm, 4, [0, 1, 2, 3, 4], 600, jax.random.key(1), chunk=100
  )
  for row, k in zip(out.values, range(5)):
    subsets = [np.prod(a[list(s)]) for s in itertools.combinations(range(4), k)]
    assert all(np.min(np.abs(np.asarray(subsets) - v)) < 1e-6 for v in row)
    assert np.mean(row) == pytest.approx(np.mean(subsets), rel=0.05)


def _linear_regime_net():
  """A residual net whose ReLUs all see positive inputs (BN bias 5, scale
  0.05), so every branch is affine and gradients do not depend on the
  forward pass; placement (c) has nothing after the addition and a linear
  head."""
  model = models.create_model(depth=8, widths=(4, 8, 8), unit="relu_before_add")
  v = random_variables(model, seed=2, bn_bias=5.0, bn_scale=(0.04, 0.06))
  return model, v


def test_all_skip_and_all_residual_match_networks_without_them():
  model, v = _linear_regime_net()
  n = model.num_modules
  x = jax.random.normal(jax.random.key(3), (3, 32, 32, 3))
  y = jnp.arange(3)
  c = jax.random.normal(jax.random.key(4), (10,))
  linear = lambda logits, labels: logits @ c

  @functools.partial(jax.jit, static_argnums=0)
  def input_grad_norm(m, variables):
    g = jax.grad(lambda xx: linear(m.apply(variables, xx), y).sum())(x)
    return jnp.mean(jnp.sqrt(jnp.sum(g**2, axis=(1, 2, 3))))

  got = paths.gradient_norm_by_path_length(
      model,
      v,
      x,
      y,
      lengths=[0, n],
      samples=2,
      key=jax.random.key(0),
      loss=linear,
  )
  assert got.values.shape == (2, 2) and got.num_modules == n == 3
  np.testing.assert_allclose(got.std, 0.0, atol=1e-5)
  # k = 0: shortcuts only == the network with every module deleted.
  deleted = lesion.delete_modules(v, indices=list(range(n)))
  assert got.mean[0] == pytest.approx(
      float(input_grad_norm(model, deleted)), rel=1e-4
  )
  # k = n: residual branches only == the plain twin with the same weights.
  plain = models.create_model(
      depth=8, widths=(4, 8, 8), unit="relu_before_add", shortcut="none"
  )
  assert got.mean[1] == pytest.approx(
      float(input_grad_norm(plain, v)), rel=1e-4
  )
  # Both differ from the ordinary gradient (all paths at once).
  full = float(input_grad_norm(model, v))
  assert abs(full - got.mean[0]) > 1e-3 * full
  assert abs(full - got.mean[1]) > 1e-3 * full


def test_path_lengths_outside_the_network_are_refused():
  model = models.create_model(depth=8, widths=(4, 8, 8))
  v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"in 0\.\.3"):
    paths.gradient_norm_by_path_length(
        model,
        v,
        jnp.zeros((1, 32, 32, 3)),
        jnp.zeros((1,), jnp.int32),
        lengths=[4],
        samples=1,
        key=jax.random.key(0),
    )


def test_effective_paths_on_exponential_decay():
  n, r = 54, 0.25
  lengths = np.arange(n + 1)
  mags = r**lengths
  total = paths.total_gradient_by_length(n, lengths, mags)
  # C(n, k) r^k is Binomial(n, r / (1 + r)) up to normalisation.
  p = r / (1 + r)
  binom = np.array(
      [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in lengths]
  )
  np.testing.assert_allclose(total, binom, rtol=1e-9, atol=1e-15)
  # Measuring every 4th length interpolates an exponential exactly.
  sparse = paths.total_gradient_by_length(n, lengths[::4], mags[::4])
  np.testing.assert_allclose(sparse, total, rtol=1e-9, atol=1e-15)
  eff = paths.effective_paths(n, lengths, mags, 0.9)
  assert eff.gradient_share >= 0.9
  width = eff.high - eff.low
  cum = np.concatenate([[0], np.cumsum(total)])
  narrower = width - 1  # no range one length shorter holds 90%
  assert (cum[narrower + 1 :] - cum[: n + 1 - narrower]).max() < 0.9
  assert eff.path_share == pytest.approx(
      sum(math.comb(n, k) for k in range(eff.low, eff.high + 1)) / 2**n
  )
  # Veit's count: more than 95% of the 2^54 paths have 19 to 35 modules.
  bulk = paths.effective_paths(n, lengths, np.ones(n + 1), 0.95)
  assert (bulk.low, bulk.high) == (20, 34) and bulk.path_share > 0.95
  assert sum(math.comb(n, k) for k in range(19, 36)) / 2**n > 0.95


class _FastInit:
  """A model whose ``init`` returns given variables (no init compilation)."""

  def __init__(self, model, variables):
    self._model, self._variables = model, variables

  def init(self, key, images):
    del key, images
    return self._variables

  def __getattr__(self, name):
    return getattr(self._model, name)


def test_effective_path_training_updates_only_sampled_modules():
  cfg = config_lib.base_config()
  cfg.model.depth, cfg.model.block = 8, "single"
  cfg.model.widths = (4, 8, 8)
  cfg.data.augment = False
  cfg.train.batch_size = 8
  cfg.train.gradient_modules = k = 2
  cfg.train.weight_decay = 0.0  # only the loss moves the weights
  cfg.train.momentum = 0.0
  spec = training.build_run(cfg, 10, num_train=16)
  model = spec.model
  v = random_variables(model, seed=5)
  task = dataclasses.replace(spec, model=_FastInit(model, v))
  state = training.init_state(task, 0, (32, 32, 3))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
  step = jax.jit(functools.partial(training.step_on_dataset, task))
  new = step(state, images, labels, jnp.full((3,), 0.5), jnp.full((3,), 0.25))
  before, after = v["params"], new.variables["params"]

  def changed(info):
    stage = f"stage{info.stage}"
    pick = (
        (lambda t: t[stage]["unit0"])
        if info.unit == 0
        else (
            lambda t: jax.tree.map(
                lambda a: a[info.unit - 1], t[stage]["units"]
            )
        )
    )
    diffs = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), pick(before), pick(after)
    )
    return any(jax.tree.leaves(diffs))

  moved = [m.index for m in model.modules if changed(m)]
  assert len(moved) == k, moved
  # The stem and head get gradient through the shortcuts as usual.
  assert bool(
      jnp.any(before["head"]["fc"]["kernel"] != after["head"]["fc"]["kernel"])
  )
