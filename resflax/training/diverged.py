"""Naming what went non-finite first when a run diverges.

The train state is frozen at its last good values when a step turns
non-finite, so replaying that step (dataset feeds only: a streamed batch is
gone) shows whether the loss, a gradient or an updated parameter was the
first non-finite quantity.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from resflax.training import feeds
from resflax.training import step as step_lib
from resflax.training.state import make_optimizer


def first_nonfinite(feed, spec, config, state, bad_step: int, k: int) -> str:
  """Names what went non-finite first in one run's step ``bad_step``.

  Args:
    feed: the run's feed (``feeds.InMemoryFeed`` replays; others cannot).
    spec: the ``RunSpec`` of the program.
    config: the run's own config (its hyper-parameters).
    state: the run's (unstacked) train state, frozen at its last good values.
    bad_step: the step (0-based) that went non-finite.
    k: the run's index among parallel runs (selects its data).

  Returns:
    ``"loss"``, ``"gradients (in n of m arrays, e.g. ...)"``, the same for
    ``"parameters"``, or ``"loss or parameters"`` when it cannot tell.
  """
  if not isinstance(feed, feeds.InMemoryFeed):
    return "loss or parameters"
  spec = dataclasses.replace(
      spec, config=config, optimizer=make_optimizer(config.train)
  )
  one = state.replace(step=jnp.asarray(bad_step, jnp.int32))
  data = feed.step_args()
  if feed.per_run:
    data = tuple(a[k] for a in data)
  report = feeds.fetch(
      jax.jit(functools.partial(step_lib.finiteness, spec))(one, *data)
  )
  if not report["loss"]:
    return "loss"
  for kind in ("gradients", "parameters"):
    leaves = jax.tree_util.tree_flatten_with_path(report[kind])[0]
    bad = [jax.tree_util.keystr(path) for path, ok in leaves if not ok]
    if bad:
      return f"{kind} (in {len(bad)} of {len(leaves)} arrays, e.g. {bad[0]})"
  return "loss or parameters"


def describe(
    feed,
    spec,
    config,
    state,
    bad_step: int,
    k: int,
    loss: float,
    workdir: str,
    good_step: int | None,
) -> str:
  """The one-line message of run ``k`` diverging at ``bad_step + 1``.

  Names what went non-finite first (``first_nonfinite``), the loss, the
  last good checkpoint ``good_step`` (None: none was saved) and the fixes.
  """
  what = first_nonfinite(feed, spec, config, state, bad_step, k)
  kept = (
      f"{workdir} keeps the last good checkpoint (step {good_step})"
      if good_step is not None
      else "no checkpoint was saved before it"
  )
  return (
      f"non-finite {what} at step {bad_step + 1} (loss = {loss:.4g}); "
      f"{kept}. Lower config.train.learning_rate, add warm-up, or set "
      "config.train.on_nonfinite='skip'."
  )
