"""A shortcut with a new hyper-parameter, added from outside the package.

Registering the class is all it takes: its key becomes a model key with its
default (``DEFAULTS``, ``resolve``, ``base_config().model``) and reaches the
forward pass.
"""

import dataclasses
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax import models
from resflax.config import base_config
from resflax.models import shortcuts
from resflax.models.unit import ResidualUnit

KEY = jax.random.key(0)


class Times(shortcuts.Shortcut):
  """y = alpha h(x) + F(x); a deleted module leaves alpha h(x)."""

  hparams = {"times_alpha": 0.3}

  @nn.compact
  def __call__(self, x, fx, train):
    hx = self.cfg.times_alpha * self.project(x, train)
    return hx, fx, hx


@pytest.fixture
def times():
  models.SHORTCUTS.register("times")(Times)
  yield
  models.SHORTCUTS.unregister("times")


def test_the_new_key_is_a_model_key_with_its_default(times):
  del times
  assert models.DEFAULTS["times_alpha"] == 0.3
  assert models.resolve(shortcut="times").times_alpha == 0.3
  config = base_config()
  assert config.model.times_alpha == 0.3
  # What --config.model.times_alpha=0.7 does.
  config.update_from_flattened_dict(
      {"model.shortcut": "times", "model.times_alpha": 0.7}
  )
  assert models.create_model(config.model).config.times_alpha == 0.7


def test_alpha_reaches_the_unit(times):
  del times
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 16))
  cfg = lambda shortcut: models.resolve(
      unit="full_preact", shortcut=shortcut, times_alpha=0.7
  )
  plain = ResidualUnit(cfg("none"), 16, 1)
  v = plain.init(KEY, x)
  f = plain.apply(v, x)  # F(x) alone
  y = ResidualUnit(cfg("times"), 16, 1).apply(v, x)
  np.testing.assert_allclose(y, 0.7 * x + f, atol=1e-5)


def test_alpha_reaches_a_network_of_deleted_modules(times):
  del times
  # Every module deleted, each leaves alpha x: the pooled features are
  # alpha^3 those of the identity network with the same variables.
  x = jax.random.normal(jax.random.key(7), (2, 16, 16, 3))
  kw = dict(depth=8, widths=(4, 8, 8))
  ident = models.create_model(**kw)
  v = ident.init(KEY, x)
  off = {**v, "lesion": jax.tree.map(jnp.zeros_like, v["lesion"])}
  bias = v["params"]["head"]["fc"]["bias"]
  want = ident.apply(off, x) - bias
  for alpha in (0.3, 0.7):
    got = (
        models.create_model(shortcut="times", times_alpha=alpha, **kw).apply(
            off, x
        )
        - bias
    )
    np.testing.assert_allclose(got, alpha**3 * want, rtol=1e-4, atol=1e-6)


def test_unknown_keys_still_fail_naming_the_valid_ones(times):
  del times
  with pytest.raises(
      ValueError,
      match=r"unknown model key\(s\) "
      r"\['times_alpah'\]; valid keys: .*times_alpha",
  ):
    models.create_model(shortcut="times", times_alpah=0.5)
  with pytest.raises(ValueError, match="model.shortcut='time'.*times"):
    models.create_model(shortcut="time")


def test_unregistering_removes_the_key():
  models.SHORTCUTS.register("times")(Times)
  try:
    assert "times_alpha" in base_config().model
  finally:
    models.SHORTCUTS.unregister("times")
  assert "times_alpha" not in models.DEFAULTS
  assert "times_alpha" not in base_config().model
  with pytest.raises(ValueError, match="unknown model key"):
    models.resolve(times_alpha=0.5)
  with pytest.raises(ValueError, match="model.shortcut='times' is not valid"):
    models.SHORTCUTS.unregister("times")


def test_declared_needs_reach_the_framework():
  class Noisy(Times):
    hparams = {"times_alpha": 0.3, "noisy_init": 1.0}
    initial_value_keys = ("noisy_init",)

    @classmethod
    def needs_rng(cls, cfg):
      return True

  models.SHORTCUTS.register("noisy")(Noisy)
  try:
    assert models.needs_rng(dict(shortcut="noisy"))
    assert models.initial_value_keys(dict(shortcut="noisy")) == ("noisy_init",)
    model = models.create_model(shortcut="noisy", depth=8)
    x = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="pass rng="):
      model.apply(model.init(KEY, x), x, train=True)
  finally:
    models.SHORTCUTS.unregister("noisy")


def test_a_key_clashing_with_a_model_key_is_refused():
  class Clash(Times):
    hparams = {"depth": 3}

  models.SHORTCUTS.register("clash")(Clash)
  try:
    with pytest.raises(
        ValueError, match="model.shortcut='clash' declares " "model.depth"
    ):
      models.resolve()
  finally:
    models.SHORTCUTS.unregister("clash")
  models.resolve()


def test_the_old_init_only_names_still_work_with_a_warning():
  class Old(Times):
    init_only = ("times_alpha",)

  with pytest.warns(DeprecationWarning, match="initial_value_keys"):
    models.SHORTCUTS.register("old")(Old)
  try:
    with pytest.warns(DeprecationWarning, match="initial_value_keys"):
      assert models.init_only_keys(dict(shortcut="old")) == ("times_alpha",)
  finally:
    models.SHORTCUTS.unregister("old")


def test_a_new_key_is_a_field_and_survives_replace_and_pickle(times):
  del times
  cfg = models.resolve(shortcut="times", times_alpha=0.7)
  assert isinstance(cfg, models.ModelConfig)
  assert [f.name for f in dataclasses.fields(cfg)] == list(models.DEFAULTS)
  assert cfg.replace(depth=32).times_alpha == 0.7
  assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_a_key_clashing_with_a_built_in_shortcut_key_is_refused():
  class Clash(Times):
    hparams = {"gate_kernel": 5}

  models.SHORTCUTS.register("clash")(Clash)
  try:
    with pytest.raises(ValueError, match="model.gate_kernel=5.*defaults to 1"):
      models.resolve()
  finally:
    models.SHORTCUTS.unregister("clash")
  models.resolve()
