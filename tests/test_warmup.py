"""The error-based warm-up (He et al. 2016): it ends on a windowed error.

"we use 0.01 to warm up the training until the training error is below 80%
(about 400 iterations)". One 128-image batch is below 80% wrong with 26
right answers: at a true error of 85% that happens in 6.4% of batches, so
a switch on the first such batch fires while the net is far from 80%.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.config import base_config
from resflax.training.state import warmup_update

BATCH = 128
STEPS = 400
SEQUENCES = 1000


def _p_one_batch_passes(error: float, until: float = 0.8) -> float:
  """P(a batch of BATCH images has fewer than until * BATCH wrong)."""
  cut = math.ceil(until * BATCH) - 1  # at most 102 wrong of 128
  return sum(
      math.comb(BATCH, k) * error**k * (1 - error) ** (BATCH - k)
      for k in range(cut + 1)
  )


@jax.jit
def _still_warm(errors: jax.Array, window_ones: jax.Array):
  """Runs ``warmup_update`` over each row of batch errors (R, T): whether
  the warm-up is still on after each step, (R, T)."""

  def run(row):
    def body(carry, x):
      warm, buf = carry
      warm, buf = warmup_update(warm, buf, x[0].astype(jnp.int32), x[1], 0.8)
      return (warm, buf), warm

    steps = jnp.arange(row.shape[0], dtype=jnp.float32)
    _, trace = jax.lax.scan(
        body, (jnp.asarray(True), window_ones), jnp.stack([steps, row], 1)
    )
    return trace

  return jax.vmap(run)(errors)


def _binomial_errors(rng, error: float, shape) -> np.ndarray:
  return (rng.binomial(BATCH, error, size=shape) / BATCH).astype(np.float32)


def test_one_batch_rule_switches_at_85_percent_the_window_does_not():
  """400 batches at a true error of 85%: the one-batch rule switches almost
  surely (closed form and simulated), the default window never."""
  p = _p_one_batch_passes(0.85)
  assert p == pytest.approx(0.064, abs=0.003)
  assert 1 - (1 - p) ** STEPS > 0.9999
  errors = _binomial_errors(np.random.default_rng(0), 0.85, (SEQUENCES, STEPS))
  # The one-batch rule is the window of 1: it switches in every sequence.
  one = np.asarray(_still_warm(errors, jnp.ones((1,))))
  first_pass = (errors < 0.8).argmax(1)
  assert not one[:, -1].any()
  np.testing.assert_array_equal((~one).argmax(1), first_pass)
  window = base_config().train.warmup_window
  assert window == 10
  windowed = np.asarray(_still_warm(errors, jnp.ones((window,))))
  assert windowed.all()


def test_a_run_whose_error_falls_below_80_switches_within_the_window():
  """100 batches at 90% wrong, then 60%: the switch comes after the drop
  and at most ``window`` batches later, in every sequence."""
  window = base_config().train.warmup_window
  rng = np.random.default_rng(1)
  errors = np.concatenate(
      [
          _binomial_errors(rng, 0.9, (SEQUENCES, 100)),
          _binomial_errors(rng, 0.6, (SEQUENCES, 50)),
      ],
      axis=1,
  )
  warm = np.asarray(_still_warm(errors, jnp.ones((window,))))
  switched_at = (~warm).argmax(1)
  assert not warm[:, -1].any()
  assert (switched_at >= 100).all() and (switched_at < 100 + window).all()


def test_the_switch_is_one_way():
  """A window back above the threshold does not restart the warm-up."""
  warm, buf = jnp.asarray(True), jnp.ones((2,))
  warm, buf = warmup_update(warm, buf, jnp.int32(0), jnp.float32(0.0), 0.8)
  assert not bool(warm)  # (0 + 1) / 2 < 0.8
  for step in (1, 2):
    warm, buf = warmup_update(warm, buf, jnp.int32(step), jnp.float32(1.0), 0.8)
  np.testing.assert_array_equal(buf, [1.0, 1.0])
  assert not bool(warm)
