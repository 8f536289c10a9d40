"""The accelerator check's trace, A/B cases and ResNet-20 reproduction.

Called by ``accelerator_check.py`` after its speed cases (the goals come
first, so a short device lease still measures them):

* ``profile``: a ``jax.profiler`` trace of 20 steps of the engine's step,
  packed as ``$OUT/trace.tar.gz`` (the profiler writes 4 folders down,
  deeper than a device run brings back; open it with TensorBoard's
  profile plugin or Perfetto);
* ``ab_cases``: steps/s of one setting against its alternative, alternated
  A B A B: BN statistics per group of 64 images against the whole batch
  (``model.bn_group_size`` 64 / 0), the non-finite guard freezing on the
  first bad step against skipping bad steps (``train.on_nonfinite`` stop /
  skip; the guard itself is always compiled in), and the state donated to
  the step against copied (``donate_argnums``, what
  ``training.loop.make_step`` sets);
* ``reproduce``: ResNet-20 trained with the full recipe
  (``experiments/cifar_resnet.py:20``, 64k steps) by
  ``resflax.training.train_and_evaluate``; its test error is printed as
  ``ResNet-20 reproduction (full recipe, DEVICE): test error X%``.
"""

import functools
import os
import tarfile
import tempfile
import time

import jax

from resflax import training


def profile(case, out_dir, steps: int = 20) -> str:
  """Traces ``steps`` steps of ``case`` (an accelerator_check.Case).

  Returns:
    The path of the packed trace, or of its folder when ``out_dir`` is None.
  """
  log_dir = tempfile.mkdtemp(prefix="resflax_trace_")
  case.state = jax.block_until_ready(case.run(2))  # steady steps only
  with jax.profiler.trace(log_dir):
    case.state = jax.block_until_ready(case.run(steps))
  if not out_dir:
    return log_dir
  path = os.path.join(out_dir, "trace.tar.gz")
  with tarfile.open(path, "w:gz") as tar:
    tar.add(log_dir, arcname="trace")
  return path


def _rate(step, state, data, steps: int):
  """Steps/s of ``steps`` calls; returns (rate, the new state)."""
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state, *data)
  jax.block_until_ready(state)
  return steps / (time.perf_counter() - start), state


def ab_pair(
    config_a, config_b, feed, engine_step, steps: int, donate=(True, True)
):
  """Steps/s of two configs' steps, alternated twice; best of each.

  Args:
    config_a, config_b: the two experiment configs.
    feed: the shared ``InMemoryFeed``.
    engine_step: ``abstract_step.engine_step``.
    steps: steps per timed round.
    donate: whether each side's step donates its state.
  """
  sides = []
  for config, don in ((config_a, donate[0]), (config_b, donate[1])):
    spec, _, state = engine_step(config, feed)
    fn = jax.jit(
        functools.partial(feed.step_impl, spec), donate_argnums=0 if don else ()
    )
    state = jax.block_until_ready(fn(state, *feed.step_args()))
    sides.append([fn, state, 0.0])
  for _ in range(2):
    for side in sides:
      rate, side[1] = _rate(side[0], side[1], feed.step_args(), steps)
      side[2] = max(side[2], rate)
  return sides[0][2], sides[1][2]


def ab_cases(base, feed, engine_step, steps: int, report) -> None:
  """Reports the three A/B pairs of the module docstring on ``base``."""

  def variant(**keys):
    c = base.copy_and_resolve_references()
    for key, value in keys.items():
      section, name = key.split("__")
      c[section][name] = value
    return c

  group = 64 if base.train.batch_size % 64 == 0 else base.train.batch_size // 2
  pairs = [
      (
          f"BN groups: model.bn_group_size={group} / 0 (whole batch)",
          variant(model__bn_group_size=group),
          variant(model__bn_group_size=0),
          (True, True),
      ),
      (
          "non-finite guard: train.on_nonfinite=stop / skip",
          variant(train__on_nonfinite="stop"),
          variant(train__on_nonfinite="skip"),
          (True, True),
      ),
      ("buffer donation: state donated / copied", base, base, (True, False)),
  ]
  for label, a, b, donate in pairs:
    try:
      ra, rb = ab_pair(a, b, feed, engine_step, steps, donate)
      report(f"A/B {label}: {ra:.1f} / {rb:.1f} steps/s = {ra / rb:.3f}")
    except Exception as e:  # pylint: disable=broad-except
      report(f"A/B {label}: FAILED: {type(e).__name__}: {e}")


def reproduce(config, workdir: str, device: str, report) -> float:
  """Trains ``config`` with ``train_and_evaluate``; reports its test error.

  Returns:
    The test error in percent.
  """
  start = time.perf_counter()
  result = training.train_and_evaluate(config, workdir, brief=True)
  error = 100.0 * float(result["test_error"])
  report(
      f"ResNet-20 reproduction (full recipe, {device}): test error "
      f"{error:.2f}% ({config.train.steps} steps, "
      f"{time.perf_counter() - start:.0f} s, data "
      f"{config.data.path or config.data.name})"
  )
  return error
