"""The model's numbers against hand-written numpy: the papers' math, pinned.

Every expectation here is computed in this file, in float64 numpy, from the
variables' own arrays (convolutions as sums of shifted matrix products,
BN from its running or per-example statistics, option A as slicing and zero
channels); none calls a resflax helper. Each test also checks that a
plausible *wrong* rule gives a clearly different answer, so it could fail.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax import lesion, models
from resflax.models import unit as unit_lib
from resflax.models.config import resolve

KEY = jax.random.key(0)
EPS = 1e-5  # BatchNorm epsilon, the papers' frameworks' default


# ----------------------------------------------------- numpy reference


def np_conv(x, k, stride=1):
  """NHWC x HWIO convolution, symmetric zero padding (k - 1) // 2."""
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  kh, kw = k.shape[:2]
  p = (kh - 1) // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho = (x.shape[1] + 2 * p - kh) // stride + 1
  wo = (x.shape[2] + 2 * p - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
  for a in range(kh):
    for b in range(kw):
      patch = xp[
          :,
          a : a + stride * (ho - 1) + 1 : stride,
          b : b + stride * (wo - 1) + 1 : stride,
          :,
      ]
      out += patch @ k[a, b]
  return out


def np_bn(x, p, s):
  """Evaluation-mode BN from a module's params p and batch_stats s."""
  f = lambda a: np.asarray(a, np.float64)
  return (x - f(s["mean"])) / np.sqrt(f(s["var"]) + EPS) * f(p["scale"]) + f(
      p["bias"]
  )


def np_bn_per_example(x, p):
  """Training-mode BN over each example alone (model.bn_group_size=1)."""
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  f = lambda a: np.asarray(a, np.float64)
  return (x - mean) / np.sqrt(var + EPS) * f(p["scale"]) + f(p["bias"])


def relu(x):
  return np.maximum(x, 0.0)


def option_a(x, features, stride):
  """He et al. option A: keep every stride-th pixel, append zero channels."""
  x = x[:, ::stride, ::stride, :]
  zeros = np.zeros(x.shape[:-1] + (features - x.shape[-1],))
  return np.concatenate([x, zeros], axis=-1)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def randomized(variables, seed=1):
  """Random BN vectors (and biases) so no BN or gate is an identity.

  Kernels keep their He initialisation; everything else that is 0 or 1 at
  initialisation is drawn from a range that keeps the network stable.
  """
  rng = np.random.RandomState(seed)

  def draw(path, a):
    name = getattr(path[-1], "key", "")
    n = a.shape
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, n), a.dtype)
    if name == "bias":
      return jnp.asarray(rng.normal(0.0, 0.5, n), a.dtype)
    if name == "mean":
      return jnp.asarray(rng.normal(0.0, 0.3, n), a.dtype)
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, n), a.dtype)
    return a

  out = dict(variables)
  for col in ("params", "batch_stats"):
    out[col] = jax.tree_util.tree_map_with_path(draw, variables[col])
  return out


def at(tree, i):
  """Unit i of a stacked ('units') subtree."""
  return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def assert_close(got, want, rel=1e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(
      got, want, rtol=0, atol=rel * max(1.0, np.abs(want).max())
  )


def assert_differs(got, wrong, rel=1e-2):
  """The wrong rule is far outside the tolerance of assert_close."""
  got, wrong = np.asarray(got, np.float64), np.asarray(wrong, np.float64)
  assert np.abs(got - wrong).max() > rel * max(1.0, np.abs(wrong).max())


# ----------------------------------- full pre-activation network (ECCV)

X = np.random.RandomState(0).randn(2, 8, 8, 3).astype(np.float32)
WIDTHS = (4, 8, 16)


@pytest.fixture(scope="module")
def preact_net():
  # Depth 14: two units per stage, so each stage has unit0 and one stacked
  # unit under 'units'.
  model = models.create_model(
      name="cifar_resnet", depth=14, unit="full_preact", widths=WIDTHS
  )
  return model, randomized(model.init(KEY, jnp.asarray(X)))


@pytest.fixture(scope="module")
def preact_apply(preact_net):
  # One compilation for every set of weights and lesions of the network.
  model, _ = preact_net
  return jax.jit(lambda v: model.apply(v, jnp.asarray(X)))


def np_preact_forward(
    v,
    x,
    *,
    split_after_preact=True,
    final_bn_relu=True,
    deleted=(),
    branch_scale=(1.0,) * 6,
    per_example_bn=False,
):
  """ResNet-14 with full pre-activation units (Identity Mappings Fig. 4e).

  Args:
    v: the network's variables.
    x: NHWC input.
    split_after_preact: the paper's edge rule: a stage's first unit applies
      BN-ReLU before the split, so its shortcut sees the activated input.
      False gives the shortcut the raw input (the rule left out).
    final_bn_relu: the extra BN-ReLU after the last addition.
    deleted: (stage, unit) pairs whose residual branch is deleted.
    branch_scale: a factor on each module's branch, in forward order.
    per_example_bn: training-mode BN with each example's own statistics
      instead of the running statistics.
  """
  p, s = v["params"], v["batch_stats"]
  bn = (lambda h, q, t: np_bn_per_example(h, q)) if per_example_bn else np_bn
  h = np_conv(x, p["stem"]["conv"]["kernel"])
  for st, width in enumerate(WIDTHS):
    stride = 1 if st == 0 else 2
    sp, ss = p[f"stage{st}"], s[f"stage{st}"]
    for u, (q, t) in enumerate(
        [(sp["unit0"], ss["unit0"]), (at(sp["units"], 0), at(ss["units"], 0))]
    ):
      a = relu(bn(h, q["bn_pre0"], t["bn_pre0"]))
      stride_u = stride if u == 0 else 1
      shortcut_in = a if (u == 0 and split_after_preact) else h
      short = option_a(shortcut_in, width, stride_u)
      if (st, u) in deleted:
        h = short
        continue
      f = np_conv(a, q["conv0"]["kernel"], stride_u)
      f = np_conv(relu(bn(f, q["bn_pre1"], t["bn_pre1"])), q["conv1"]["kernel"])
      h = short + branch_scale[2 * st + u] * f
  if final_bn_relu:
    h = relu(bn(h, p["head"]["bn"], s["head"]["bn"]))
  fc = p["head"]["fc"]
  return h.mean(axis=(1, 2)) @ np.asarray(
      fc["kernel"], np.float64
  ) + np.asarray(fc["bias"], np.float64)


def test_preact_edge_rules_match_hand_forward(preact_net, preact_apply):
  _, v = preact_net
  got = preact_apply(v)
  assert_close(got, np_preact_forward(v, X))
  # Each edge rule matters for these weights: leaving either out is wrong.
  assert_differs(got, np_preact_forward(v, X, split_after_preact=False))
  assert_differs(got, np_preact_forward(v, X, final_bn_relu=False))


def test_preact_with_zero_branches_is_closed_form(preact_net, preact_apply):
  # With every last conv zero, F = 0 and the network reduces to the
  # activations that sit outside the residual branches: per stage
  # option_A(ReLU(BN(h))) (the first unit's split), then the identities,
  # then the final BN-ReLU.
  _, v = preact_net
  zero = lambda path, a: (
      jnp.zeros_like(a)
      if any(getattr(k, "key", None) == "conv1" for k in path)
      else a
  )
  v0 = {**v, "params": jax.tree_util.tree_map_with_path(zero, v["params"])}
  p, s = v0["params"], v0["batch_stats"]
  h = np_conv(X, p["stem"]["conv"]["kernel"])
  for st, width in enumerate(WIDTHS):
    q, t = p[f"stage{st}"]["unit0"], s[f"stage{st}"]["unit0"]
    h = option_a(
        relu(np_bn(h, q["bn_pre0"], t["bn_pre0"])), width, 1 if st == 0 else 2
    )
  h = relu(np_bn(h, p["head"]["bn"], s["head"]["bn"]))
  want = h.mean(axis=(1, 2)) @ np.asarray(
      p["head"]["fc"]["kernel"]
  ) + np.asarray(p["head"]["fc"]["bias"])
  assert_close(preact_apply(v0), want)


@pytest.mark.parametrize("stage", [0, 1])
def test_deleting_unit0_of_preact_stage_leaves_its_preactivation(
    preact_net, preact_apply, stage
):
  # Module numbers: two units per stage, so stage s's unit 0 is module 2 s.
  model, v = preact_net
  assert model.modules[2 * stage].unit == 0
  deleted = lesion.delete_modules(v, indices=[2 * stage])
  got = preact_apply(deleted)
  # What is left of unit 0 is its shortcut, fed by the BN-ReLU that precedes
  # the split: option_A(ReLU(BN(x))), not x itself.
  assert_close(got, np_preact_forward(v, X, deleted={(stage, 0)}))
  assert_differs(
      got,
      np_preact_forward(v, X, deleted={(stage, 0)}, split_after_preact=False),
  )


# ------------------------------------------------ option A, by hand


@pytest.mark.parametrize("unit", ["original", "full_preact"])
def test_option_a_downsampling_unit_by_hand(unit):
  # x[0, h, w, c] = 8 h + 2 w + c on a 4x4x2 image. With every kernel zero
  # the branch is 0 (BN at its initial mean 0, var 1, scale 1, bias 0), so
  # the unit is its option A shortcut; the inputs are >= 0, so the
  # post-activation ReLU after the addition changes nothing.
  x = jnp.arange(32, dtype=jnp.float32).reshape(1, 4, 4, 2)
  cfg = resolve(name="cifar_resnet", unit=unit)
  u = unit_lib.ResidualUnit(cfg, 4, 2, unit_lib.PREACT)
  v = u.init(KEY, x)
  v = {
      **v,
      "params": jax.tree_util.tree_map_with_path(
          lambda path, a: jnp.zeros_like(a) if path[-1].key == "kernel" else a,
          v["params"],
      ),
  }
  want = np.array(
      [[[[0, 1, 0, 0], [4, 5, 0, 0]], [[16, 17, 0, 0], [20, 21, 0, 0]]]],
      np.float32,
  )
  np.testing.assert_array_equal(u.apply(v, x), want)


# ------------------------------------- every shortcut, from its params

# Each shortcut with its defaults, then a non-default lambda that also scales
# F, and option B projections.
SHORTCUT_CASES = [(name, {}) for name in models.SHORTCUTS.names()] + [
    ("scale", dict(shortcut_scale=0.3, scale_residual=True)),
    ("identity", dict(projection="B")),
]
# (placement, input channels, width, stride, unit mode)
UNIT_CASES = [
    ("original", 4, 8, 2, unit_lib.PREACT),  # downsampling, post-activation
    ("original", 8, 8, 1, unit_lib.PREACT),  # same shape, post-activation
    ("full_preact", 4, 8, 2, unit_lib.BOTH_PREACT),  # a stage's first unit
    ("full_preact", 8, 8, 1, unit_lib.PREACT),
]


def np_branch(placement, q, t, x, stride):
  """F(x) of a basic block (Identity Mappings Fig. 4 a and e)."""
  if placement == "original":
    f = relu(
        np_bn(
            np_conv(x, q["conv0"]["kernel"], stride),
            q["bn_post0"],
            t["bn_post0"],
        )
    )
    return np_bn(np_conv(f, q["conv1"]["kernel"]), q["bn_post1"], t["bn_post1"])
  a = relu(np_bn(x, q["bn_pre0"], t["bn_pre0"]))
  f = relu(
      np_bn(
          np_conv(a, q["conv0"]["kernel"], stride), q["bn_pre1"], t["bn_pre1"]
      )
  )
  return np_conv(f, q["conv1"]["kernel"])


def np_shortcut(name, kw, q, t, x, width, stride, preact):
  """(skip, residual factor, deleted output) of Identity Mappings Fig. 2."""
  sq, sv = q.get("shortcut", {}), t.get("shortcut", {})
  same = stride == 1 and x.shape[-1] == width

  def h():
    if kw.get("projection") == "B" and not same:
      y = np_conv(x, sq["proj"]["kernel"], stride)
      # Post-activation projections carry a BN; pre-activation ones see an
      # already normalised input (fb.resnet.torch preresnet).
      return y if preact else np_bn(y, sq["proj_bn"], sv["proj_bn"])
    return x if same else option_a(x, width, stride)

  if name in ("identity", "dropout"):  # dropout: identity in evaluation
    return h(), 1.0, h()
  if name == "scale":
    lam = kw.get("shortcut_scale", 0.5)
    f = 1.0 - lam if kw.get("scale_residual") else 1.0
    return lam * h(), f, lam * h()
  if name in ("exclusive_gate", "shortcut_gate"):
    gate = sq["gate"]
    g = sigmoid(
        np_conv(x, gate["kernel"], stride)
        + np.asarray(gate["bias"], np.float64)
    )
    f = g if name == "exclusive_gate" else 1.0
    return (1 - g) * h(), f, (1 - g) * h()
  if name == "conv1x1":
    y = np_bn(
        np_conv(x, sq["proj"]["kernel"], stride), sq["proj_bn"], sv["proj_bn"]
    )
    return y, 1.0, y
  if name == "none":  # a deleted plain layer passes its input on
    return 0.0, 1.0, x if same else option_a(x, width, stride)
  raise AssertionError(f"no numpy reference for shortcut {name!r}")


@pytest.mark.parametrize(
    "case", UNIT_CASES, ids=lambda c: f"{c[0]}-{c[1]}to{c[2]}-s{c[3]}"
)
@pytest.mark.parametrize(
    "shortcut,kw",
    SHORTCUT_CASES,
    ids=lambda a: a
    if isinstance(a, str)
    else "-".join(f"{k}={v}" for k, v in a.items()) or "",
)
def test_every_shortcut_matches_its_formula(shortcut, kw, case):
  placement, cin, width, stride, mode = case
  x = jnp.asarray(np.random.RandomState(2).randn(2, 8, 8, cin), jnp.float32)
  cfg = resolve(name="cifar_resnet", unit=placement, shortcut=shortcut, **kw)
  u = unit_lib.ResidualUnit(cfg, width, stride, mode)
  v = randomized(u.init(KEY, x), seed=3)
  q = jax.tree.map(np.asarray, v["params"])
  t = jax.tree.map(np.asarray, v["batch_stats"])
  xn = np.asarray(x, np.float64)
  preact = placement == "full_preact"
  # The paper's edge rule: a stage's first pre-activation unit splits after
  # BN-ReLU, so the shortcut (and its gate) sees the activated input.
  x_short = (
      relu(np_bn(xn, q["bn_pre0"], t["bn_pre0"]))
      if mode == unit_lib.BOTH_PREACT
      else xn
  )
  f = np_branch(placement, q, t, xn, stride)
  skip, factor, left = np_shortcut(
      shortcut, kw, q, t, x_short, width, stride, preact
  )
  y = skip + factor * f
  want = y if preact else relu(y)
  got = u.apply(v, x)
  assert_close(got, want)
  if shortcut != "none":  # without the shortcut, F alone is a different value
    assert_differs(got, f if preact else relu(f))
  # Deleting the module zeroes F's contribution and f (the ReLU after the
  # addition) still applies: y = f(h(x)), as when stochastic depth drops F.
  deleted = u.apply(v, x, active=jnp.float32(0))
  assert_close(deleted, left if preact else relu(left))
  if shortcut != "none" and not preact:
    # The same value as a unit whose branch stochastic depth dropped.
    dropped = u.apply(v, x, survival=jnp.float32(0.0))
    assert_close(deleted, dropped)


# ------------------------------------------------ stochastic depth

P_LAST = 0.2


def survival(num_modules, p_last):
  """Huang et al. 2016: p_l = 1 - l / L (1 - p_L), l = 1..L."""
  l = np.arange(1, num_modules + 1)
  return 1.0 - l / num_modules * (1.0 - p_last)


@pytest.fixture(scope="module")
def sd_model():
  # The ResNet-14 above with stochastic depth: the same variables.
  return models.create_model(
      name="cifar_resnet",
      depth=14,
      unit="full_preact",
      widths=WIDTHS,
      stochastic_depth=P_LAST,
  )


def test_stochastic_depth_evaluation_scales_each_branch(preact_net, sd_model):
  # In evaluation Huang et al. scale module l's branch by p_l.
  _, v = preact_net
  got = jax.jit(sd_model.apply)(v, jnp.asarray(X))
  p = survival(6, P_LAST)
  assert_close(got, np_preact_forward(v, X, branch_scale=p))
  assert_differs(got, np_preact_forward(v, X))
  assert_differs(got, np_preact_forward(v, X, branch_scale=p[::-1]))


def _sd_train_logits(v, mode, key, copies):
  """Training-mode logits of `copies` copies of one image.

  model.bn_group_size=1 normalises each example with its own statistics, so
  the copies share nothing but the drawn survivals.
  """
  model = models.create_model(
      name="cifar_resnet",
      depth=14,
      unit="full_preact",
      widths=WIDTHS,
      stochastic_depth=P_LAST,
      stochastic_depth_mode=mode,
      bn_group_size=1,
  )
  images = jnp.asarray(np.repeat(X[:1], copies, axis=0))
  run = jax.jit(lambda k: model.apply(v, images, train=True, rng=k)[0])
  return np.asarray(run(key), np.float64), run


def _which_pattern(v, logits):
  """Each row's keep pattern (1 = branch survived), by the numpy forward.

  All 2^6 patterns of the six modules are computed by hand; every row must
  be one of them.
  """
  patterns = np.array(list(itertools.product([0.0, 1.0], repeat=6)))
  refs = np.stack(
      [
          np_preact_forward(v, X[:1], branch_scale=pat, per_example_bn=True)[0]
          for pat in patterns
      ]
  )
  scale = np.abs(refs).max()
  gaps = np.abs(refs[:, None] - refs[None]).max(-1) + np.eye(len(refs)) * scale
  assert gaps.min() > 1e-2 * scale  # every pattern has its own logits
  dist = np.abs(logits[:, None, :] - refs[None]).max(-1)
  assert dist.min(axis=1).max() < 1e-4 * scale, "a row matches no pattern"
  return patterns[dist.argmin(axis=1)]


def test_stochastic_depth_sample_mode_survival_frequencies(preact_net):
  # Sample mode: every example draws its own survivals, with p_l per module.
  _, v = preact_net
  draws = 2000
  logits, _ = _sd_train_logits(v, "sample", jax.random.key(6), draws)
  freq = _which_pattern(v, logits).mean(axis=0)
  p = survival(6, P_LAST)
  # 4.5 binomial standard deviations (at most 0.05); neighbouring p_l differ
  # by 0.133, so a shifted or reversed schedule fails.
  tol = 4.5 * np.sqrt(p * (1 - p) / draws)
  assert np.all(np.abs(freq - p) <= tol), (freq, p)


def test_stochastic_depth_batch_mode_draws_once_per_step(preact_net):
  # Batch mode: one draw per module for the whole batch.
  _, v = preact_net
  _, run = _sd_train_logits(v, "batch", jax.random.key(0), 4)
  seen = []
  for i in range(12):
    kept = _which_pattern(v, np.asarray(run(jax.random.key(i)), np.float64))
    assert (kept == kept[0]).all()
    seen.append(tuple(kept[0]))
  assert len(set(seen)) > 3  # and the draws differ between steps


@pytest.mark.parametrize("shortcut", ["exclusive_gate", "shortcut_gate"])
@pytest.mark.parametrize("bias", [-6.0, 6.0])
def test_gate_bias_init_sets_the_initial_gate(shortcut, bias):
  """Identity Mappings sec. 3.1: b_g = -6 starts the gate near 0, so the
  unit starts near its shortcut (1 - g ~ 1); +6 starts it near 1."""
  x = jnp.asarray(np.random.RandomState(4).randn(2, 8, 8, 4), jnp.float32)
  cfg = resolve(name="cifar_resnet", shortcut=shortcut, gate_bias_init=bias)
  u = unit_lib.ResidualUnit(cfg, 4, 1)
  v = u.init(KEY, x)
  gate = v["params"]["shortcut"]["gate"]
  np.testing.assert_array_equal(gate["bias"], np.full(4, bias, np.float32))
  # The gate's value from the initial weights, by hand: sigmoid(conv + b).
  g = sigmoid(
      np_conv(np.asarray(x, np.float64), np.asarray(gate["kernel"])) + bias
  )
  assert (g.mean() < 0.01) if bias < 0 else (g.mean() > 0.99)
  _, state = u.apply(v, x, mutable=["intermediates"])
  gate_mean = float(state["intermediates"]["shortcut"]["gate_mean"][0])
  np.testing.assert_allclose(gate_mean, g.mean(), rtol=1e-4)
