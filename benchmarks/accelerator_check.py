"""One-process accelerator check: devices, step rates, parallel runs, ETA.

Run through ``benchmarks/accelerator_check.sh`` (which installs the wheels
of ``.whl/`` when present and sets PYTHONPATH), sized to finish within about
5 minutes on one H100/H200. Everything happens in this one Python process
(each process start costs 10-20 s of imports and compilation):

1. devices JAX sees, versions, data source;
2. steps/s of the engine's jitted single-run step
   (``resflax.training.loop.make_step`` of
   ``resflax.training.step_on_dataset``: data on the device, on-device
   sampling and augmentation) for ResNet-20 and ResNet-110
   (``experiments/cifar_resnet.py``, batch 128) scanned (``model.scan``)
   and unrolled, in float32 and bfloat16 (``model.dtype``); compile
   seconds of each;
3. parallel runs: R=5 float32 runs in one vmapped program (the engine's
   step of ``train.parallel_runs=5``, ``resflax.training.loop.make_step``,
   over its stacked initial state) against the same 5 runs stepped one
   after another with the single-run program, for ResNet-20 and for the
   faster ResNet-110 variant;
4. projected wall time of the 64k-iteration ResNet-110 recipe:
   64000 / measured steps/s + compile (evaluation and checkpoints
   excluded), and of 5 seeds of it (a Table 1 case of Identity Mappings),
   vmapped and one after another;
5. after the speed goals (``accelerator_cases.py``): a ``jax.profiler``
   trace of 20 ResNet-110 steps (``$OUT/trace.tar.gz``), the A/B cases (BN
   groups, the non-finite guard, buffer donation) on ResNet-20, and the
   ResNet-20 full-recipe reproduction (``--reproduce-steps``, 64k; 0 skips
   it) on ``--data``, whose last line is ``ResNet-20 reproduction (full
   recipe, DEVICE): test error X%``. On an H200 the whole check takes
   about 150 s of speed cases plus about 4 minutes of training: within a
   15-minute lease with its start.

Data: CIFAR-10 from ``--data`` (default ``.device_data/cifar10-jpeg.tar.gz``
of the repo root, through ``config.data.path``) when it exists, otherwise
synthetic images. Figures go to stdout and, when ``$OUT`` is set, to
``$OUT/accelerator_check.txt``. ``--quick`` (or ``RESFLAX_CHECK_QUICK=1``):
batch 16, a few steps, ResNet-20 on synthetic data for 10 steps as
the reproduction, for an end-to-end test on a CPU. A case that fails
is reported and the rest go on; cases past ``--budget`` seconds are
skipped and listed.

  bash benchmarks/accelerator_check.sh [--quick] [--budget 270]
  python benchmarks/accelerator_check.py [--quick] [--data PATH]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback

START = time.perf_counter()

import abstract_step
import accelerator_cases
import jax  # pylint: disable=g-import-not-at-top

from resflax import data as data_lib
from resflax import models, training
from resflax.config import load_experiment
from resflax.training import feeds, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_STEPS = 64_000


class Report:
  """Prints lines to stdout and to ``$OUT/accelerator_check.txt``."""

  def __init__(self):
    out = os.environ.get("OUT")
    self.file = None
    if out:
      os.makedirs(out, exist_ok=True)
      self.file = open(os.path.join(out, "accelerator_check.txt"), "w")

  def __call__(self, line=""):
    print(line, flush=True)
    if self.file:
      self.file.write(line + "\n")
      self.file.flush()


def make_config(
    depth: int,
    dtype: str,
    scan: bool,
    batch: int,
    data_path,
    shrink: bool = False,
):
  """``experiments/cifar_resnet.py:depth`` with the benchmark's settings.

  ``shrink`` (``--quick``): the family's smallest net (one unit a stage,
  narrow) whatever ``depth``, so that a CPU test compiles in seconds.
  """
  config = load_experiment(
      os.path.join(REPO, "experiments", "cifar_resnet.py"), str(depth)
  )
  if shrink:
    config.model.update(models.shrink(config.model))
  config.model.dtype = dtype
  config.model.scan = scan
  config.train.batch_size = batch
  if config.model.bn_group_size and batch % config.model.bn_group_size:
    config.model.bn_group_size = 0
  if data_path:
    config.data.path = data_path
  else:
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 50_000 if batch >= 128 else 1024
    config.data.synthetic_test_size = 100
  return config


class Case:
  """The engine's compiled single-run step and its state on the device."""

  def __init__(self, config, feed):
    self.config, self.feed = config, feed
    self.spec, step, self.state = abstract_step.engine_step(config, feed)
    self.data = feed.step_args()
    start = time.perf_counter()
    self.step = step.lower(self.state, *self.data).compile()
    self.compile_s = time.perf_counter() - start

  def run(self, steps: int, state=None):
    state = self.state if state is None else state
    for _ in range(steps):
      state = self.step(state, *self.data)
    return state


def timed(fn, min_steps: int, min_seconds: float, chunk: int):
  """Calls ``fn(n)`` (n steps, returns arrays) until both minima are met.

  Returns:
    (steps, seconds), blocking on the result of each chunk.
  """
  steps, start = 0, time.perf_counter()
  while True:
    jax.block_until_ready(fn(chunk))
    steps += chunk
    seconds = time.perf_counter() - start
    if steps >= min_steps and seconds >= min_seconds:
      return steps, seconds


def measure_case(case: Case, args):
  """Steps/s of a case's step (after 2 warm-up steps)."""
  case.state = case.run(2)
  jax.block_until_ready(case.state)

  def go(n):
    case.state = case.run(n)
    return case.state

  steps, seconds = timed(go, args.min_steps, args.min_seconds, args.chunk)
  return steps / seconds


def measure_parallel(case: Case, num_runs: int, args):
  """Images/s of ``num_runs`` runs vmapped vs the same runs one by one.

  Returns:
    ({"parallel": images/s, "sequential": images/s}, seconds of the
    vmapped step's first call: compile and one step).
  """
  config = case.config.copy_and_resolve_references()
  config.train.parallel_runs = num_runs
  _, step, stacked = abstract_step.engine_step(config, case.feed)
  start = time.perf_counter()
  stacked = jax.block_until_ready(step(stacked, *case.data))
  compile_s = time.perf_counter() - start
  # Each run's own initial state (its seed), stepped by the case's
  # single-run program.
  states = [
      runs.initial_state(
          abstract_step.run_group(c), case.spec, case.feed.image_shape
      )
      for c in runs.run_configs(config)
  ]

  def par(n):
    nonlocal stacked
    for _ in range(n):
      stacked = step(stacked, *case.data)
    return stacked

  def seq(n):
    for k in range(num_runs):
      states[k] = case.run(n, states[k])
    return states

  par(1), seq(1)
  rates = {"parallel": [], "sequential": []}
  chunk = max(1, args.chunk // 2)
  for _ in range(2):  # alternate: parallel, sequential, parallel, sequential
    for name, fn in (("parallel", par), ("sequential", seq)):
      steps, seconds = timed(
          fn, max(1, args.min_steps // 2), args.min_seconds / 2, chunk
      )
      rates[name].append(num_runs * steps * config.train.batch_size / seconds)
  return {k: max(v) for k, v in rates.items()}, compile_s


def extras(args, base, feed, trace_case, data_path, report) -> None:
  """The trace, A/B cases and reproduction, after the speed goals."""
  if trace_case is not None:
    try:
      path = accelerator_cases.profile(trace_case, os.environ.get("OUT"))
      report(f"profiler trace of 20 ResNet-110 steps: {path}")
    except Exception as e:  # pylint: disable=broad-except
      report(f"profiler trace: FAILED: {type(e).__name__}: {e}")
  accelerator_cases.ab_cases(
      base, feed, abstract_step.engine_step, max(2, args.min_steps), report
  )
  if not args.reproduce_steps:
    return
  config = load_experiment(
      os.path.join(REPO, "experiments", "cifar_resnet.py"), "20"
  )
  if args.quick:
    config.data.name = "synthetic"
    config.data.synthetic_train_size = 64
    config.data.synthetic_test_size = 32
    config.train.batch_size = args.batch
    config.train.eval_batch_size = 32
    config.model.bn_group_size = 0
    config.train.steps = 10
    config.train.scale_schedule = True
  elif data_path:
    config.data.path = data_path
  else:
    report("ResNet-20 reproduction: skipped (no CIFAR-10 at --data)")
    return
  if not args.quick:
    config.train.steps = args.reproduce_steps
    config.train.scale_schedule = args.reproduce_steps != RECIPE_STEPS
  # Not under $OUT: a device run brings back only 8 files from there.
  workdir = tempfile.mkdtemp(prefix="resflax_reproduction_")
  try:
    accelerator_cases.reproduce(
        config, workdir, jax.devices()[0].device_kind, report
    )
  except Exception:  # pylint: disable=broad-except
    report(
        f"ResNet-20 reproduction: FAILED\n" f"{traceback.format_exc(limit=3)}"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--quick",
      action="store_true",
      default=os.environ.get("RESFLAX_CHECK_QUICK") == "1",
      help="tiny batch and steps: an end-to-end CPU test",
  )
  parser.add_argument(
      "--data",
      default=os.path.join(REPO, ".device_data", "cifar10-jpeg.tar.gz"),
  )
  parser.add_argument(
      "--runs", type=int, default=5, help="runs of the parallel-runs case"
  )
  parser.add_argument(
      "--budget",
      type=float,
      default=270.0,
      help="seconds after which remaining cases are skipped",
  )
  parser.add_argument(
      "--reproduce-steps",
      type=int,
      default=RECIPE_STEPS,
      help="steps of the ResNet-20 reproduction (0: skip)",
  )
  parser.add_argument(
      "--no-extras",
      action="store_true",
      help="skip the trace, A/B cases and reproduction",
  )
  args = parser.parse_args()
  if args.quick:
    args.batch, args.min_steps, args.min_seconds, args.chunk = 16, 2, 0.0, 1
  else:
    args.batch, args.min_steps, args.min_seconds, args.chunk = 128, 50, 4.0, 10

  report = Report()
  devices = jax.devices()
  report(
      f"== resflax accelerator check"
      f"{' (--quick: every net shrunk to ResNet-8)' if args.quick else ''}"
  )
  report(
      f"python {platform.python_version()}, jax {jax.__version__}, "
      f"backend {jax.default_backend()}; {len(devices)} device(s): "
      + ", ".join(sorted({f"{d.device_kind}" for d in devices}))
  )
  import ml_collections  # pylint: disable=g-import-not-at-top

  report(f"ml_collections from {os.path.dirname(ml_collections.__file__)}")

  data_path = args.data if args.data and os.path.exists(args.data) else ""
  t0 = time.perf_counter()
  base = make_config(20, "float32", True, args.batch, data_path, args.quick)
  if args.quick and data_path:
    base.data.max_train_images = 1000
    base.data.max_test_images = 100
  dataset = data_lib.load_dataset(base.data, seed=base.seed)
  # One copy of the data on the devices, shared by every case.
  feed = feeds.InMemoryFeed(
      [dataset], training.make_mesh(), base.train.eval_batch_size
  )
  report(
      f"data: {data_path or 'synthetic'} ({dataset.num_train} train "
      f"images on device, loaded in {time.perf_counter() - t0:.1f} s)"
  )

  # In order of what the goals need, so that --budget cuts the
  # least informative cases: unrolled ResNet-110 comes early (on an H200
  # ResNet-20 ran 1.3x faster unrolled than scanned; each loop iteration
  # costs a fixed overhead and ResNet-110 runs 6x more of them), then 5
  # parallel seeds of ResNet-110 (a Table 1 case of Identity Mappings).
  plan = [
      (20, "float32", True),
      (110, "float32", True),
      (110, "float32", False),
      (110, "bfloat16", False),
      ("parallel", 110),
      (20, "float32", False),
      (20, "bfloat16", True),
      (110, "bfloat16", True),
      ("parallel", 20),
  ]
  results, skipped, kept, par = {}, [], {}, {}
  trace_case = None
  for item in plan:
    if item[0] == "parallel":
      depth = item[1]
      label = f"parallel runs ResNet-{depth} R={args.runs}"
      variants = [k for k in kept if k[0] == depth]
      if not variants or time.perf_counter() - START > args.budget:
        skipped.append(label)
        continue
      # The faster float32 variant of this depth measured so far.
      key = max(variants, key=lambda k: results[(k[0], "float32", k[1])][0])
      try:
        rates, compile_s = measure_parallel(kept[key], args.runs, args)
        par[key] = (rates, compile_s)
        report(
            f"{label} (float32, scan={key[1]}, "
            "resflax.training.loop.make_step): vmapped "
            f"{rates['parallel']:.0f} img/s vs sequential "
            f"{rates['sequential']:.0f} img/s -> speed-up "
            f"{rates['parallel'] / rates['sequential']:.2f}x "
            f"(compile {compile_s:.1f} s)"
        )
      except Exception:  # pylint: disable=broad-except
        report(f"{label}: FAILED\n{traceback.format_exc(limit=3)}")
      continue
    depth, dtype, scan = item
    name = f"ResNet-{depth} {dtype} scan={scan}"
    if time.perf_counter() - START > args.budget:
      skipped.append(name)
      continue
    try:
      config = make_config(
          depth, dtype, scan, args.batch, data_path, args.quick
      )
      case = Case(config, feed)
      sps = measure_case(case, args)
      results[(depth, dtype, scan)] = (sps, case.compile_s)
      report(
          f"{name:32s} {sps:8.1f} steps/s  {sps * args.batch:9.0f} img/s"
          f"  (compile {case.compile_s:.1f} s)"
      )
      if dtype == "float32":  # candidates for the parallel-runs cases
        kept[(depth, scan)] = case
        if depth == 110:
          trace_case = case
      del case
    except Exception:  # pylint: disable=broad-except
      report(f"{name}: FAILED\n{traceback.format_exc(limit=3)}")
  kept.clear()
  if not args.no_extras:
    extras(args, base, feed, trace_case, data_path, report)
    trace_case = None

  peak = None
  try:
    stats = devices[0].memory_stats()
    peak = stats and stats.get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    pass

  report("-- summary")
  report(
      f"device: {devices[0].device_kind} x{len(devices)} "
      f"({jax.default_backend()}), jax {jax.__version__}, batch "
      f"{args.batch}, data {'CIFAR-10' if data_path else 'synthetic'}"
  )
  for (depth, dtype, scan), (sps, comp) in results.items():
    report(
        f"  ResNet-{depth:<4d} {dtype:8s} scan={str(scan):5s} "
        f"{sps:7.1f} steps/s  compile {comp:5.1f} s"
    )
  for (depth, scan), (rates, compile_s) in par.items():
    report(
        f"  parallel R={args.runs} ResNet-{depth} (scan={scan}) speed-up "
        f"{rates['parallel'] / rates['sequential']:.2f}x"
    )
    if depth == 110:
      # Both ways, then the faster: R runs of the recipe in one go.
      for how in ("parallel", "sequential"):
        per_run = rates[how] / (args.runs * args.batch)  # steps/s of each
        minutes = (
            RECIPE_STEPS / per_run
            + (
                compile_s
                if how == "parallel"
                else results[(110, "float32", scan)][1]
            )
        ) / 60
        report(
            f"  {args.runs} seeds of a Table 1 case (ResNet-110 64k, "
            f"float32), {how}: {minutes:.1f} min"
        )
  for (depth, dtype, scan), (sps, comp) in results.items():
    if depth == 110:
      hours = (RECIPE_STEPS / sps + comp) / 3600
      report(
          f"  ResNet-110 64k recipe ({dtype}, scan={scan}): {hours:.2f} h"
          f" = {hours * 60:.1f} min (= {RECIPE_STEPS} / {sps:.1f} steps/s"
          f" + {comp:.0f} s compile; no eval/checkpoints)"
      )
  if peak:
    report(f"  device peak memory {peak / 2**30:.2f} GiB")
  if skipped:
    report("  skipped (over --budget): " + "; ".join(skipped))
  report(f"  total {time.perf_counter() - START:.0f} s in one process")
  f32 = {
      scan: v
      for (depth, dtype, scan), v in results.items()
      if depth == 110 and dtype == "float32"
  }
  if f32:
    scan = max(f32, key=lambda k: f32[k][0])
    sps, comp = f32[scan]
    report(
        f"ResNet-110 float32: {sps:.1f} steps/s (fastest: scan={scan}); "
        f"64k-step recipe projected {(RECIPE_STEPS / sps + comp) / 3600:.2f}"
        " h"
    )
  else:
    report("ResNet-110 float32 not measured")


if __name__ == "__main__":
  sys.exit(main())
