"""Model zoo: published parameter counts, formulas, placements, scan, lesions,
common names, the CPU convolution gradient and BN statistics."""

import dataclasses
import functools
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax import models
from resflax.models import cpu_conv, layers
from resflax.models.config import resolve
from resflax.models.unit import ResidualUnit

KEY = jax.random.key(0)


def count(name=None, **kw):
  model = models.create_model(name, **kw)
  size = 64 if model.config.name == "imagenet_resnet" else 32
  shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, size, size, 3)))
  return models.num_params(shapes)


@pytest.mark.parametrize(
    "depth,expected",
    [
        (20, 269_722),
        (32, 464_154),
        (44, 658_586),
        (56, 853_018),
        (110, 1_727_962),
        (1202, 19_421_274),
    ],
)
@pytest.mark.parametrize("shortcut", ["identity", "none"])
def test_cifar_param_counts_match_paper(depth, expected, shortcut):
  assert count(name="cifar_resnet", depth=depth, shortcut=shortcut) == expected


@pytest.mark.parametrize("depth,paper", [(164, 1.7e6), (1001, 10.2e6)])
def test_preact_bottleneck_counts_within_2_percent(depth, paper):
  n = count(
      name="cifar_resnet",
      depth=depth,
      block="bottleneck",
      unit="full_preact",
      projection="B",
  )
  assert abs(n - paper) / paper < 0.02


@pytest.mark.parametrize(
    "depth,expected", [(18, 11_689_512), (50, 25_557_032), (152, 60_192_808)]
)
def test_imagenet_counts_equal_torchvision(depth, expected):
  assert count(name="imagenet_resnet", depth=depth) == expected


def test_wide_resnet_28_10_count():
  # Zagoruyko & Komodakis Table: WRN-28-10 has 36.5M parameters.
  assert abs(count(name="wide_resnet", depth=28, width=10) - 36.5e6) < 0.05e6


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet20", 269_722),
        ("resnet56", 853_018),
        ("plain20", 269_722),
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
    ],
)
def test_common_names_have_the_published_counts(name, expected):
  # He et al. Table 6 (CIFAR; the plain twin of option A has the same
  # parameters) and torchvision (ImageNet).
  assert count(name) == expected


def test_bad_names_list_valid_ones():
  with pytest.raises(ValueError, match="6n\\+2.*20, 26"):
    models.create_model(name="cifar_resnet", depth=21)
  with pytest.raises(ValueError, match="exclusive_gate.*identity"):
    models.create_model(shortcut="gate")
  with pytest.raises(ValueError, match="full_preact"):
    models.create_model(unit="preact")
  with pytest.raises(ValueError, match="cifar_resnet"):
    models.create_model(name="resnet")
  with pytest.raises(ValueError, match="unknown model key"):
    models.create_model(depht=20)
  with pytest.raises(ValueError, match="9n\\+2"):
    models.create_model(depth=25, block="bottleneck")
  with pytest.raises(ValueError, match="18, 34, 50"):
    models.create_model(name="imagenet_resnet", depth=20)


# ----------------------------------------------------------- one unit


def unit_apply(shortcut, x, *, variables=None, train=False, rng=None, **cfg):
  cfg = resolve(
      name="cifar_resnet", unit="full_preact", shortcut=shortcut, **cfg
  )
  u = ResidualUnit(cfg, x.shape[-1], 1)
  if variables is None:
    variables = u.init(KEY, x)
  rngs = None if rng is None else {"dropout": rng}
  out = u.apply(
      variables,
      x,
      train=train,
      rngs=rngs,
      mutable=["batch_stats"] if train else False,
  )
  return (out[0] if train else out), variables


def randomize(variables, seed=1):
  """Non-trivial BN statistics and parameters so formulas are not degenerate."""
  out = dict(variables)
  for col in ("params", "batch_stats"):
    leaves, tree = jax.tree.flatten(variables[col])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    # Only the BN vectors (and biases): random kernels would blow up.
    new = [
        l + 0.2 * jax.random.uniform(k, l.shape) if l.ndim == 1 else l
        for k, l in zip(keys, leaves)
    ]
    out[col] = jax.tree.unflatten(tree, new)
  return out


def test_shortcut_formulas():
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 16))
  f, base = unit_apply("none", x)  # F(x) alone, same branch weights
  base = randomize(base)
  f, _ = unit_apply("none", x, variables=base)

  y, _ = unit_apply("identity", x, variables=base)
  np.testing.assert_allclose(y, x + f, atol=1e-5)
  y, _ = unit_apply("scale", x, variables=base, shortcut_scale=0.3)
  np.testing.assert_allclose(y, 0.3 * x + f, atol=1e-5)
  y, _ = unit_apply(
      "scale", x, variables=base, shortcut_scale=0.3, scale_residual=True
  )
  np.testing.assert_allclose(y, 0.3 * x + 0.7 * f, atol=1e-5)

  for kind in ("exclusive_gate", "shortcut_gate"):
    _, v = unit_apply(kind, x)
    gate = {
        "kernel": 0.1 * jax.random.normal(jax.random.key(4), (1, 1, 16, 16)),
        "bias": jnp.full((16,), -1.5),
    }
    v = {
        "params": {**base["params"], "shortcut": {"gate": gate}},
        "batch_stats": base["batch_stats"],
    }
    g = jax.nn.sigmoid(
        jnp.einsum("nhwc,cd->nhwd", x, gate["kernel"][0, 0]) + gate["bias"]
    )
    y, _ = unit_apply(kind, x, variables=v)
    want = (1 - g) * x + (g * f if kind == "exclusive_gate" else f)
    np.testing.assert_allclose(y, want, atol=1e-5)

  _, v = unit_apply("conv1x1", x)
  w = jax.random.normal(jax.random.key(5), (1, 1, 16, 16))
  bn_p = {"scale": jnp.full((16,), 1.3), "bias": jnp.full((16,), 0.2)}
  bn_s = {"mean": jnp.full((16,), 0.1), "var": jnp.full((16,), 2.0)}
  v = {
      "params": {
          **base["params"],
          "shortcut": {"proj": {"kernel": w}, "proj_bn": bn_p},
      },
      "batch_stats": {**base["batch_stats"], "shortcut": {"proj_bn": bn_s}},
  }
  proj = jnp.einsum("nhwc,cd->nhwd", x, w[0, 0])
  want = (proj - 0.1) / jnp.sqrt(2.0 + 1e-5) * 1.3 + 0.2 + f
  y, _ = unit_apply("conv1x1", x, variables=v)
  np.testing.assert_allclose(y, want, atol=1e-4)

  y, _ = unit_apply("dropout", x, variables=base)  # evaluation: no dropout
  np.testing.assert_allclose(y, x + f, atol=1e-5)
  y_train, _ = unit_apply(
      "dropout", x, variables=base, train=True, rng=jax.random.key(9)
  )
  f_train, _ = unit_apply("none", x, variables=base, train=True)
  kept = np.asarray(y_train - f_train)
  # Each shortcut element is dropped (0) or kept and scaled by 1/(1-0.5).
  ok = np.isclose(kept, 0, atol=1e-5) | np.isclose(kept, 2 * x, atol=1e-4)
  assert ok.all()
  assert 0.4 < np.isclose(kept, 0, atol=1e-5).mean() < 0.6


def _bn(h, p, s, eps=1e-5):
  return (h - s["mean"]) / jnp.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def _conv(h, k):
  return jax.lax.conv_general_dilated(
      h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize(
    "unit",
    [
        "original",
        "bn_after_add",
        "relu_before_add",
        "relu_preact",
        "full_preact",
    ],
)
def test_placement_order_of_operations(unit):
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 16))
  cfg = resolve(unit=unit)
  u = ResidualUnit(cfg, 16, 1)
  v = randomize(u.init(KEY, x))
  p, s = v["params"], v["batch_stats"]
  r = jax.nn.relu
  k0, k1 = p["conv0"]["kernel"], p["conv1"]["kernel"]
  bn = lambda h, name: _bn(h, p[name], s[name])
  # Identity Mappings Fig. 4, written out.
  want = {
      "original": lambda: r(
          x + bn(_conv(r(bn(_conv(x, k0), "bn_post0")), k1), "bn_post1")
      ),
      "bn_after_add": lambda: r(
          bn(x + _conv(r(bn(_conv(x, k0), "bn_post0")), k1), "bn_add")
      ),
      "relu_before_add": lambda: x
      + r(bn(_conv(r(bn(_conv(x, k0), "bn_post0")), k1), "bn_post1")),
      "relu_preact": lambda: x
      + bn(_conv(r(bn(_conv(r(x), k0), "bn_post0")), k1), "bn_post1"),
      "full_preact": lambda: x
      + _conv(r(bn(_conv(r(bn(x, "bn_pre0")), k0), "bn_pre1")), k1),
  }[unit]()
  np.testing.assert_allclose(u.apply(v, x), want, atol=1e-4)


def test_stochastic_depth_expectation():
  x = jax.random.normal(jax.random.key(3), (8, 8, 8, 16))
  cfg = resolve(unit="full_preact", stochastic_depth=0.5)
  u = ResidualUnit(cfg, 16, 1)
  v = u.init(KEY, x)
  full, _ = u.apply(v, x, train=True, mutable=["batch_stats"])
  res = full - x

  def sample(k):
    return u.apply(
        v,
        x,
        train=True,
        survival=0.7,
        rngs={"dropout": k},
        mutable=["batch_stats"],
    )[0]

  ys = jax.vmap(sample)(jax.random.split(jax.random.key(1), 4000))
  kept = np.mean(np.isclose(ys, full[None], atol=1e-5).all(axis=(1, 2, 3, 4)))
  assert abs(kept - 0.7) < 0.04
  np.testing.assert_allclose(ys.mean(0), x + 0.7 * res, atol=0.05)
  # Evaluation scales the branch by its survival probability (Huang et al.).
  np.testing.assert_allclose(
      u.apply(v, x, survival=0.7), x + 0.7 * (u.apply(v, x) - x), atol=1e-5
  )


def test_network_survival_probabilities_decay_linearly():
  m = models.create_model(depth=20, stochastic_depth=0.5)
  p = m.survival_probabilities()
  np.testing.assert_allclose(p, 1 - np.arange(1, 10) / 9 * 0.5)


# ------------------------------------------------------------ networks

X = jax.random.normal(jax.random.key(7), (4, 32, 32, 3))


@pytest.fixture(scope="module")
def resnet20():
  m = models.create_model(depth=20)
  return m, randomize(m.init(KEY, X))


def test_scan_and_unrolled_agree():
  for kw in [dict(depth=20), dict(depth=20, unit="full_preact")]:
    scanned = models.create_model(**kw)
    unrolled = models.create_model(scan=False, **kw)
    v = randomize(scanned.init(KEY, X))
    np.testing.assert_allclose(
        scanned.apply(v, X), unrolled.apply(v, X), atol=1e-4
    )
    ls, vs = scanned.apply(v, X, train=True)
    lu, vu = unrolled.apply(v, X, train=True)
    np.testing.assert_allclose(ls, lu, atol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
        vs["batch_stats"],
        vu["batch_stats"],
    )


def test_scan_unroll_keeps_values_and_gradients():
  # ResNet-26: 3 scanned units per stage; unroll 2 = one looped trip of 2
  # units plus a remainder of 1, unroll 3 = no loop. Same numbers as the
  # unrolled Python loop (scan=False), gradients included.
  x = X[:2]
  ref = models.create_model(depth=26, scan=False)
  v = randomize(ref.init(KEY, x))

  def loss(m, params):
    logits, _ = m.apply({**v, "params": params}, x, train=True)
    return jnp.sum(logits**2)

  grad = lambda m: jax.jit(jax.value_and_grad(functools.partial(loss, m)))
  want_l, want_g = grad(ref)(v["params"])
  for unroll in (2, 3):
    got_l, got_g = grad(models.create_model(depth=26, scan_unroll=unroll))(
        v["params"]
    )
    np.testing.assert_allclose(got_l, want_l, rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
        got_g,
        want_g,
    )


def test_scan_unroll_covering_a_stage_emits_no_loop():
  def loops(**kw):
    m = models.create_model(depth=32, **kw)
    v = m.init(KEY, X[:1])
    return jax.jit(m.apply).lower(v, X[:1]).as_text().count("stablehlo.while")

  assert loops() == 3  # one per stage
  assert loops(scan_unroll=3) == 3
  # Stage 0 scans all 5 units (post-activation: its unit 0 keeps the shape
  # and is reordered with the rest), stages 1 and 2 their last 4.
  assert loops(scan_unroll=4) == 1
  assert loops(scan_unroll=5) == 0
  assert loops(scan_unroll=100) == 0
  with pytest.raises(ValueError, match="model.scan_unroll=0"):
    models.create_model(depth=32, scan_unroll=0)


def test_training_mode_updates_batch_stats(resnet20):
  m, v = resnet20
  _, new = m.apply(v, X, train=True)
  changed = jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], new["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))
  assert new["params"] is v["params"]


def test_all_modules_off_leaves_stem_shortcuts_head(resnet20):
  m, v = resnet20
  lesion = jax.tree.map(lambda a: a, v["lesion"])
  for st in lesion.values():
    st["active"] = jnp.zeros_like(st["active"])
  got = m.apply({**v, "lesion": lesion}, X)
  p, s = v["params"], v["batch_stats"]
  h = _conv(X, p["stem"]["conv"]["kernel"])
  h = jax.nn.relu(_bn(h, p["stem"]["bn"], s["stem"]["bn"]))
  h = layers.pad_shortcut(h, 32, 2)
  h = layers.pad_shortcut(h, 64, 2)
  logits = h.mean((1, 2)) @ p["head"]["fc"]["kernel"] + p["head"]["fc"]["bias"]
  np.testing.assert_allclose(got, logits, atol=1e-4)


def test_preact_with_zero_branches_is_identity_on_stream():
  m = models.create_model(depth=20, unit="full_preact")
  v = randomize(m.init(KEY, X))

  def zero_last_conv(path, a):
    names = [getattr(k, "key", None) for k in path]
    return jnp.zeros_like(a) if "conv1" in names else a

  v = {
      **v,
      "params": jax.tree_util.tree_map_with_path(zero_last_conv, v["params"]),
  }
  _, inter = m.apply(v, X, capture=True)
  for s in range(3):
    deltas = np.asarray(inter[f"stage{s}"]["units"]["stream_delta"])
    assert deltas.shape == (2,) or deltas.shape == (2, 1) or deltas.size == 2
    np.testing.assert_allclose(deltas, 0.0, atol=1e-6)


def test_lesions_and_orders_compile_once(resnet20):
  m, v = resnet20
  f = jax.jit(m.apply)
  outs = []
  for i in range(10):
    lesion = m.default_lesion()
    for s, st in enumerate(lesion.values()):
      k = jax.random.fold_in(jax.random.key(i), s)
      st["active"] = jax.random.bernoulli(k, 0.7, st["active"].shape).astype(
          jnp.float32
      )
      st["order"] = jax.random.permutation(k, st["order"])
    outs.append(f({**v, "lesion": lesion}, X))
  assert f._cache_size() == 1
  assert len({round(float(o.sum()), 3) for o in outs}) >= 7


def test_reordering_permutes_units(resnet20):
  m, v = resnet20
  lesion = m.default_lesion()
  lesion["stage1"]["order"] = jnp.array([1, 0], jnp.int32)
  # Swapping stacked weights by hand must give the same function.
  swapped = jax.tree.map(
      lambda a: a[jnp.array([1, 0])], v["params"]["stage1"]["units"]
  )
  swapped_s = jax.tree.map(
      lambda a: a[jnp.array([1, 0])], v["batch_stats"]["stage1"]["units"]
  )
  v2 = jax.tree.map(lambda a: a, v)
  v2["params"]["stage1"]["units"] = swapped
  v2["batch_stats"]["stage1"]["units"] = swapped_s
  a = m.apply({**v, "lesion": lesion}, X)
  np.testing.assert_allclose(a, m.apply(v2, X), atol=1e-5)
  assert not np.allclose(a, m.apply(v, X), atol=1e-3)


@pytest.mark.parametrize("scan", [True, False])
def test_post_activation_stage_0_moves_its_first_unit(resnet20, scan):
  """Veit et al. reorder modules of compatible dimensions: stage 0's unit 0
  (16 to 16 channels, stride 1, post-activation) is one of them."""
  m, v = resnet20
  if not scan:
    m = models.create_model(depth=20, scan=False)
  assert [m.movable_units(s) for s in range(3)] == [3, 2, 2]
  lesion = m.default_lesion()
  lesion["stage0"]["order"] = jnp.array([1, 0, 2], jnp.int32)
  # The same function: unit 0's and unit 1's weights swapped by hand.
  v2 = jax.tree.map(lambda a: a, v)
  for col in ("params", "batch_stats"):
    st = v[col]["stage0"]
    v2[col]["stage0"] = {
        "unit0": jax.tree.map(lambda a: a[0], st["units"]),
        "units": jax.tree.map(
            lambda u0, r: r.at[0].set(u0), st["unit0"], st["units"]
        ),
    }
  a = m.apply({**v, "lesion": lesion}, X)
  np.testing.assert_allclose(a, m.apply(v2, X), atol=1e-5)
  assert not np.allclose(a, m.apply(v, X), atol=1e-3)
  # Training updates each module's own running statistics, wherever it ran.
  _, new = m.apply({**v, "lesion": lesion}, X, train=True)
  _, new2 = m.apply(v2, X, train=True)
  np.testing.assert_allclose(
      new["batch_stats"]["stage0"]["unit0"]["bn_post0"]["mean"],
      new2["batch_stats"]["stage0"]["units"]["bn_post0"]["mean"][0],
      atol=1e-5,
  )
  # Pre-activation: unit 0 feeds its pre-activation to the shortcut too,
  # a role of its position, so it stays.
  pre = models.create_model(depth=20, unit="full_preact")
  assert [pre.movable_units(s) for s in range(3)] == [2, 2, 2]


def test_scan_keeps_program_size_constant_in_depth():
  # Compile time follows program size; a scanned ResNet-1001 step must not
  # trace to a bigger program than ResNet-164's.
  def size(depth):
    m = models.create_model(
        depth=depth, block="bottleneck", unit="full_preact", projection="B"
    )
    v = jax.eval_shape(m.init, KEY, X[:2])

    def loss(p, rest):
      return m.apply({**rest, "params": p}, X[:2], train=True)[0].sum()

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(v["params"], v)
    return len(str(jaxpr).splitlines())

  assert size(1001) <= 1.01 * size(164)


@pytest.mark.parametrize(
    "kw",
    [
        dict(name="wide_resnet", depth=10, width=2, dropout=0.3),
        dict(name="vgg", depth=11, widths=(8, 16, 16)),
        dict(name="highway", depth=11),
        dict(depth=8, dtype="bfloat16"),
        dict(depth=11, block="single", unit="full_preact"),
        dict(depth=14, stochastic_depth=0.5, stochastic_depth_mode="sample"),
        dict(depth=8, remat=True, bn_group_size=2),
    ],
)
def test_variants_train_and_evaluate(kw):
  # Jitted: one compile per function instead of op-by-op dispatch.
  m = models.create_model(**kw)
  v = jax.jit(m.init)(KEY, X)
  logits = jax.jit(m.apply)(v, X)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(v["params"]))

  def loss(p, v):
    out, new = m.apply({**v, "params": p}, X, train=True, rng=jax.random.key(1))
    return out.sum(), new

  (val, _), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"], v)
  assert np.isfinite(float(val))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))


def _xla_conv(strides, padding):
  return lambda a, b: jax.lax.conv_general_dilated(
      a,
      b,
      (strides, strides),
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


@pytest.mark.parametrize(
    "kernel,strides,batch",
    [
        (3, 1, 2),
        (1, 1, 2),
        (3, 2, 2),
        (1, 2, 2),
        (7, 2, 2),
        (3, 1, 48),
        (1, 1, 32),
    ],
)  # 48, 32: weight gradient summed over chunks
def test_conv_gradients_match_xla(kernel, strides, batch):
  x = jax.random.normal(jax.random.key(1), (batch, 9, 9, 4))
  k = jax.random.normal(jax.random.key(2), (kernel, kernel, 4, 5))
  pad = ((kernel - 1) // 2,) * 2
  ref = _xla_conv(strides, (pad, pad))
  dy = jax.random.normal(jax.random.key(3), ref(x, k).shape)
  g_ref = jax.vjp(ref, x, k)[1](dy)
  for mode in cpu_conv.MODES:
    ours = lambda a, b, m=mode: cpu_conv.conv2d(
        a, b, (strides, strides), (pad, pad), mode=m
    )
    y, vjp = jax.vjp(ours, x, k)
    np.testing.assert_allclose(y, ref(x, k), rtol=1e-5, atol=1e-5)
    for a, b in zip(vjp(dy), g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv2d_same_padding_gradient():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  k = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
  g_ref = jax.grad(lambda b: _xla_conv(1, "SAME")(x, b).sum())(k)
  g = jax.grad(lambda b: cpu_conv.conv2d(x, b, mode="on").sum())(k)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
  # The benchmarks call it through layers.
  assert layers.conv2d is cpu_conv.conv2d


def _has_custom_vjp(fn, *args):
  return "custom_vjp" in str(jax.make_jaxpr(fn)(*args))


def test_cpu_conv_grad_switch_selects_the_backward_pass():
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))
  conv = lambda mode: lambda a, b: cpu_conv.conv2d(a, b, mode=mode)
  assert _has_custom_vjp(conv("on"), x, k)
  assert not _has_custom_vjp(conv("off"), x, k)
  # "auto": the custom gradient only on a one-device CPU process (several
  # devices shard the batch, and the chunks would move between them).
  one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
  assert _has_custom_vjp(conv("auto"), x, k) == one_cpu
  probe = (
      "import jax; from resflax.models import cpu_conv; "
      "print(jax.device_count(), cpu_conv.uses_custom_gradient('auto'))"
  )
  for devices, custom in ((1, "True"), (2, "False")):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(devices), custom]
  with pytest.raises(
      ValueError, match="model.cpu_conv_grad='fast'.*auto, on, " "off"
  ):
    cpu_conv.conv2d(x, k, mode="fast")
  with pytest.raises(
      ValueError, match="model.cpu_conv_grad='fast'.*auto, on, " "off"
  ):
    models.create_model(cpu_conv_grad="fast")
  # The model key reaches every convolution: none is custom with "off".
  assert models.DEFAULTS["cpu_conv_grad"] == "auto"
  for mode in ("on", "off"):
    m = models.create_model(
        depth=8, widths=(4, 8, 8), shortcut="conv1x1", cpu_conv_grad=mode
    )
    v = jax.eval_shape(m.init, KEY, X[:2])
    jaxpr = str(jax.make_jaxpr(lambda v: m.apply(v, X[:2]))(v))
    # stem, 3 units of 2 convs and a 1x1 projection each
    assert jaxpr.count("custom_vjp_call") == (10 if mode == "on" else 0)


def test_cpu_conv_grad_modes_train_alike():
  # Batch 32: the weight gradients of "on" are sums over two chunks.
  x = jax.random.normal(jax.random.key(8), (32, 8, 8, 3))
  grads = {}
  for mode in ("on", "off"):
    m = models.create_model(
        depth=8, widths=(4, 8, 8), projection="B", cpu_conv_grad=mode
    )
    v = randomize(m.init(KEY, x))
    loss = lambda p, m=m, v=v: jnp.sum(
        m.apply({**v, "params": p}, x, train=True)[0] ** 2
    )
    grads[mode] = jax.jit(jax.value_and_grad(loss))(v["params"])
  np.testing.assert_allclose(grads["on"][0], grads["off"][0], rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
      grads["on"][1],
      grads["off"][1],
  )


@pytest.mark.parametrize("group_size,offset", [(0, 0.0), (4, 0.0), (0, 100.0)])
def test_batch_norm_matches_numpy(group_size, offset):
  # numpy's np.var in float64 is the reference, also for inputs whose mean
  # is 100x their spread (where a one-pass E[x^2] - E[x]^2 in float32 is off
  # by percents).
  x = offset + jax.random.normal(jax.random.key(9), (8, 5, 5, 3)) * jnp.array(
      [0.5, 1.0, 2.0]
  )
  bn = layers.BatchNorm(momentum=0.9, epsilon=1e-5, group_size=group_size)
  v = bn.init(KEY, x, train=True)
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  g = group_size or 8
  xg = np.asarray(x, np.float64).reshape(8 // g, g, 5, 5, 3)
  mean = xg.mean((1, 2, 3), keepdims=True)
  var = xg.var((1, 2, 3), keepdims=True)  # training normalises with biased
  want = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
  np.testing.assert_allclose(y, want, atol=1e-4)
  # Running statistics as Torch7 / PyTorch keep them: momentum 0.9 from
  # (0, 1), each group's mean and unbiased variance (n = g * 5 * 5 values
  # per channel), averaged over the groups.
  per_group = xg.transpose(0, 4, 1, 2, 3).reshape(8 // g, 3, -1)
  np.testing.assert_allclose(
      upd["batch_stats"]["mean"],
      0.1 * per_group.mean(-1).mean(0),
      rtol=1e-4,
      atol=1e-5,
  )
  np.testing.assert_allclose(
      upd["batch_stats"]["var"],
      0.9 + 0.1 * per_group.var(-1, ddof=1).mean(0),
      rtol=1e-5,
  )

  def two_pass(x):  # the textbook layer, for the gradient
    xg = x.reshape(8 // g, g, 5, 5, 3)
    m = xg.mean((1, 2, 3), keepdims=True)
    return (
        (xg - m)
        / jnp.sqrt(((xg - m) ** 2).mean((1, 2, 3), keepdims=True) + 1e-5)
    ).reshape(x.shape)

  r = jax.random.normal(jax.random.key(10), x.shape)
  layer = lambda x: bn.apply(v, x, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(
      jax.grad(lambda x: jnp.sum(layer(x) * r))(x),
      jax.grad(lambda x: jnp.sum(two_pass(x) * r))(x),
      atol=1e-4,
  )


@pytest.mark.parametrize("group_size", [0, 2])
def test_network_running_variance_is_unbiased(group_size):
  # The stem's BN after one training step against numpy: the stem conv's
  # output per group, var(ddof=1) over its n = group * H * W values. Small
  # images keep n small, so n / (n - 1) is far from 1.
  x = X[:4, :4, :4]
  m = models.create_model(depth=8, widths=(4, 8, 8), bn_group_size=group_size)
  v = m.init(KEY, x)
  _, new = m.apply(v, x, train=True)
  h = np.asarray(_conv(x, v["params"]["stem"]["conv"]["kernel"]), np.float64)
  g = group_size or 4
  per_group = (
      h.reshape(4 // g, g, 4, 4, 4)
      .transpose(0, 4, 1, 2, 3)
      .reshape(4 // g, 4, -1)
  )
  np.testing.assert_allclose(
      new["batch_stats"]["stem"]["bn"]["var"],
      0.9 + 0.1 * per_group.var(-1, ddof=1).mean(0),
      rtol=1e-5,
  )


# ------------------------------------------------- config and declarations


def test_model_config_is_a_plain_dataclass():
  # The fields are written out (no class made at run time): an IDE sees
  # them, pickle finds the class, DEFAULTS is a plain dict of their defaults.
  assert type(resolve("resnet56")) is models.ModelConfig
  assert isinstance(models.DEFAULTS, dict)
  assert models.DEFAULTS == {
      f.name: f.default for f in dataclasses.fields(models.ModelConfig)
  }
  cfg = resolve("wrn16_8", shortcut="scale", shortcut_scale=0.25)
  assert pickle.loads(pickle.dumps(cfg)) == cfg
  with pytest.warns(DeprecationWarning, match="initial_value_keys"):
    assert models.init_only_keys("highway") == ("gate_bias_init",)


def test_scale_residual_needs_the_scale_shortcut():
  with pytest.raises(
      ValueError, match="model.scale_residual=True needs model.shortcut='scale'"
  ):
    resolve(scale_residual=True)
  assert resolve(shortcut="scale", scale_residual=True).scale_residual


def test_model_config_has_a_field_per_default():
  cfg = resolve("resnet56")
  assert [f.name for f in dataclasses.fields(cfg)] == list(models.DEFAULTS)
  assert isinstance(cfg, models.ModelConfig)
  assert dataclasses.asdict(cfg)["depth"] == cfg.depth == 56
  assert cfg.replace(depth=110) == resolve("resnet110")
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.depth = 110
  with pytest.raises(ValueError, match="model.depth=111"):
    cfg.replace(depth=111)


@pytest.mark.parametrize(
    "kw,needs",
    [
        ({}, False),
        (dict(dropout=0.3), True),
        (dict(stochastic_depth=0.5), True),
        (dict(shortcut="dropout"), True),
        (dict(shortcut="dropout", shortcut_dropout=0.0), False),
        (dict(shortcut="exclusive_gate"), False),
    ],
)
def test_needs_rng(kw, needs):
  assert models.needs_rng(kw) == needs
  assert models.create_model(depth=8, **kw).needs_rng == needs


def test_a_zero_rate_dropout_shortcut_trains_without_a_key():
  x = X[:2, :8, :8]
  ident = models.create_model(depth=8, widths=(4, 8, 8))
  v = randomize(ident.init(KEY, x))
  drop = models.create_model(
      depth=8, widths=(4, 8, 8), shortcut="dropout", shortcut_dropout=0.0
  )
  np.testing.assert_allclose(
      drop.apply(v, x, train=True)[0],
      ident.apply(v, x, train=True)[0],
      atol=1e-6,
  )


def test_initial_value_keys_only_change_initial_values():
  assert models.initial_value_keys({}) == ()
  for name in ("exclusive_gate", "shortcut_gate"):
    assert models.initial_value_keys(dict(shortcut=name)) == ("gate_bias_init",)
  assert models.initial_value_keys("highway") == ("gate_bias_init",)
  # Same variables, another gate_bias_init: the same function.
  x = X[:2, :8, :8]
  a = models.create_model("highway", depth=5, widths=(4, 8, 8))
  b = models.create_model(
      "highway", depth=5, widths=(4, 8, 8), gate_bias_init=3.0
  )
  v = a.init(KEY, x)
  np.testing.assert_array_equal(a.apply(v, x), b.apply(v, x))
  bias = lambda m: jax.tree.leaves(
      m.init(KEY, x)["params"]["stage0"]["unit0"]["shortcut"]["gate"]["bias"]
  )[0]
  assert float(bias(a)[0]) == -2.0 and float(bias(b)[0]) == 3.0
