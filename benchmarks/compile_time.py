"""Trace and compile seconds of the training step, scanned and unrolled.

The step is the jitted ``resflax.training.step_on_dataset`` (on-device
sampling and augmentation, forward, backward, SGD update, guards), lowered
from abstract arguments (nothing is initialised or run), batch ``--batch``
(compile time does not depend on it). Cases:

* ResNet-20, ResNet-110, ResNet-1202: He et al. 2016 CIFAR nets (basic
  units, option A), ``experiments/cifar_resnet.py:DEPTH``;
* ResNet-1001: Identity Mappings bottleneck, full pre-activation,
  projection B (``block='bottleneck', unit='full_preact', projection='B'``),
  and ResNet-164, the same kind of unit 6x shallower (``--depths`` adds it
  by default: 1001 / 164 separates depth from the unit's own size),

each with ``model.scan=True`` (same-shape units of a stage under
``lax.scan``) and ``model.scan=False`` (every unit inlined). Each case runs
in a fresh subprocess (cold caches, so one case cannot warm the next), with
a wall-clock limit ``--timeout`` per case. The unrolled cases of depth
>= 1001 (1001/1202) are skipped by default: compiling them needs > 20 GB RAM
on a 2-core, 24 GB machine; ``--unrolled-deep`` runs them. Cases run
round-robin ``--repeats`` times (A B C, A B C: drifting machine load hits
all alike; unrolled 1001/1202 only once, at the end) and each figure is the
minimum over repeats. Reported per case: trace (Python -> jaxpr), lower
(jaxpr -> StableHLO) and compile (XLA) seconds. The last line is scanned
ResNet-1001 compile / scanned ResNet-110 compile, the median over rounds of
the ratio within a round (target <= 2x: scanning makes compile time nearly
independent of depth). ``--no-unrolled`` runs only the scanned cases.

  python benchmarks/compile_time.py [--unrolled-deep] [--timeout 900]
      [--depths 20,110,164,1001,1202] [--batch 8] [--repeats 2]
      [--no-unrolled]

``--presets all`` (or comma-separated name parts, see
``abstract_step.presets``) times instead every paper preset of
``experiments/`` on ``--devices`` (8) fake CPU devices, each in a fresh
process: process start until its initialiser and training step are
compiled (what a run waits for before its first step, data loading and
the step itself excluded), cold (empty persistent compilation cache) and
warm (the same command on the cache the cold run filled). The cold
process also prints XLA's memory analysis of the step per device
(``abstract_step.memory``), so one run gives the tables of both
``memory.py --presets`` and this script. ``--jsonl FILE`` appends each
result as a JSON line and skips the presets FILE already has (rerun the
command to resume); ``--deepest-first`` starts with the deepest networks
(``--shallowest-first`` with the shallowest: two sweeps on one FILE share
the work); ``--table FILE`` prints the markdown table of FILE, every
preset listed.
``--cpu-conv-grad off`` compiles the ``--depths`` cases with XLA's own
convolution gradients (the program a GPU or TPU compiles) instead of the
chunked CPU one.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BOTTLENECK_PREACT = dict(block="bottleneck", unit="full_preact", projection="B")
BOTTLENECK_DEPTHS = (164, 1001)  # the Identity Mappings nets
DEEP_MIN = 1001  # unrolled cases at least this deep are opt-in
START = time.perf_counter()
DEEP_SKIP = (
    "unrolled compile of ResNet-1001/1202 needs > 20 GB RAM on this "
    "2-core machine; pass --unrolled-deep to try"
)


def case_name(depth: int) -> str:
  return f"ResNet-{depth}" + (
      " (bottleneck pre-act B)" if depth in BOTTLENECK_DEPTHS else ""
  )


def make_config(depth: int, scan: bool, batch: int, grad: str = "auto"):
  """The experiment config of ``depth`` (see module docstring)."""
  # Imported here: the parent process only launches subprocesses.
  from resflax.config import load_experiment  # pylint: disable=g-import-not-at-top

  here = os.path.dirname(os.path.abspath(__file__))
  config = load_experiment(
      os.path.join(here, "..", "experiments", "cifar_resnet.py"),
      "110" if depth in BOTTLENECK_DEPTHS else str(depth),
  )
  if depth in BOTTLENECK_DEPTHS:
    for k, v in BOTTLENECK_PREACT.items():
      setattr(config.model, k, v)
    config.model.depth = depth
  config.model.scan = scan
  config.model.bn_group_size = 0
  config.model.cpu_conv_grad = grad
  config.train.batch_size = batch
  config.data.name = "synthetic"
  return config


def measure(
    depth: int, scan: bool, batch: int, grad: str = "auto", num_train=1024
):
  """Times trace, lower and compile of the step; returns a dict."""
  import abstract_step  # pylint: disable=g-import-not-at-top

  from resflax import models  # pylint: disable=g-import-not-at-top

  spec, step, state, data = abstract_step.build(
      make_config(depth, scan, batch, grad), num_train
  )
  t0 = time.perf_counter()
  traced = step.trace(state, *data)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  lowered.compile()
  t3 = time.perf_counter()
  return {
      "depth": depth,
      "scan": scan,
      "trace_s": t1 - t0,
      "lower_s": t2 - t1,
      "compile_s": t3 - t2,
      "params": models.num_params(state.variables),
      "units": spec.model.num_modules,
  }


def run_case(depth, scan, batch, timeout, grad="auto"):
  """Runs ``measure`` in a fresh interpreter; returns its dict or a reason."""
  cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--case",
      f"{depth},{int(scan)}",
      "--batch",
      str(batch),
      "--cpu-conv-grad",
      grad,
  ]
  start = time.perf_counter()
  try:
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False
    )
  except subprocess.TimeoutExpired:
    return {
        "depth": depth,
        "scan": scan,
        "skipped": f"timed out after {timeout:.0f} s",
    }
  wall = time.perf_counter() - start
  for line in reversed(out.stdout.splitlines()):
    if line.startswith("{"):
      result = json.loads(line)
      result["process_s"] = wall
      return result
  tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
  return {
      "depth": depth,
      "scan": scan,
      "skipped": f"failed (rc {out.returncode}): {' | '.join(tail)}",
  }


def first_step_case(name: str, cache: str) -> dict:
  """Seconds until ``name``'s initialiser and step are compiled (one process).

  Runs in the subprocess that ``run_preset`` starts; ``START`` is its
  interpreter's start, so imports count as a researcher's start does.
  """
  import abstract_step  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from resflax import training  # pylint: disable=g-import-not-at-top
  from resflax.models import cpu_conv  # pylint: disable=g-import-not-at-top
  from resflax.training import compile_cache  # pylint: disable=g-import-not-at-top

  compile_cache.enable(cache)
  (preset,) = [p for p in abstract_step.presets() if p.name == name]
  config = preset.config()
  t0, c0 = time.perf_counter(), time.process_time()
  spec, step, state, data = abstract_step.preset_step(config)
  image_shape = tuple(data[0].shape[1:])
  # As runs.initial_state compiles it: classic threefry, replicated.
  with jax.threefry_partitionable(False):
    jax.jit(
        lambda s: training.init_state(spec, s, image_shape),
        out_shardings=spec.replicated,
    ).lower(0).compile()
  t1 = time.perf_counter()
  lowered = step.lower(state, *data)
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3, c3 = time.perf_counter(), time.process_time()
  return {
      "name": name,
      "setup_s": t0 - START,
      "init_s": t1 - t0,
      "lower_s": t2 - t1,
      "compile_s": t3 - t2,
      "total_s": t3 - START,
      # CPU seconds of this process (all its threads) from setup to the
      # compiled step: unlike the wall-clock figures, machine load barely
      # changes it.
      "init_to_compiled_cpu_s": c3 - c0,
      "custom_conv_grad": cpu_conv.uses_custom_gradient(
          config.model.cpu_conv_grad
      ),
      "memory": abstract_step.memory(compiled),
      "devices": jax.device_count(),
  }


def run_preset(name: str, cache: str, devices: int, timeout: float) -> dict:
  """``first_step_case`` in a fresh interpreter; its dict or a reason."""
  cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--preset-case",
      name,
      "--cache",
      cache,
      "--devices",
      str(devices),
  ]
  start = time.perf_counter()
  try:
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False
    )
  except subprocess.TimeoutExpired:
    return {"name": name, "skipped": f"timed out after {timeout:.0f} s"}
  for line in reversed(out.stdout.splitlines()):
    if line.startswith("{"):
      result = json.loads(line)
      result["process_s"] = time.perf_counter() - start
      return result
  tail = (out.stderr or out.stdout).strip().splitlines()[-2:]
  return {
      "name": name,
      "skipped": f"failed (rc {out.returncode}): {' | '.join(tail)}",
  }


def presets_main(args) -> None:
  """Cold and warm time to first step of every preset (module docstring)."""
  import abstract_step  # pylint: disable=g-import-not-at-top

  names = None if args.presets == "all" else args.presets
  gib = 2.0**30
  todo = abstract_step.presets(names)
  if args.deepest_first or args.shallowest_first:
    todo = abstract_step.deepest_first(todo)
  if args.shallowest_first:
    todo.reverse()
  for preset in todo:
    # A rerun resumes; read each time, as a second sweep on the same file
    # (from the other end) may have measured it meanwhile.
    if preset.name in abstract_step.done_names(args.jsonl):
      continue
    cache = tempfile.mkdtemp(prefix="resflax_cc_")
    try:
      cold = run_preset(preset.name, cache, args.devices, args.timeout)
      warm = (
          run_preset(preset.name, cache, args.devices, args.timeout)
          if "skipped" not in cold
          else cold
      )
    finally:
      shutil.rmtree(cache, ignore_errors=True)
    row = {
        "preset": preset.name,
        "covers": preset.covers,
        "cold": cold,
        "warm": warm,
        "load": os.getloadavg()[0],
    }
    if args.jsonl:
      with open(args.jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")
    if "skipped" in cold or "skipped" in warm:
      print(
          f"{preset.name:42s} {cold.get('skipped') or warm['skipped']}",
          flush=True,
      )
      continue
    mem = cold["memory"]
    print(
        f"{preset.name:42s} cold {cold['total_s']:6.1f} s (step compile "
        f"{cold['compile_s']:6.1f} s)  warm {warm['total_s']:5.1f} s  "
        f"peak/device {mem['peak'] / gib if mem else float('nan'):6.2f} "
        f"GiB  load {row['load']:.1f}",
        flush=True,
    )


def table_main(jsonl: str) -> None:
  """Markdown table of every preset from ``jsonl``; the rest not measured."""
  import abstract_step  # pylint: disable=g-import-not-at-top

  with open(jsonl) as f:
    rows = {r["preset"]: r for r in map(json.loads, filter(str.strip, f))}
  print(
      "| preset (cases covered) | network | cold: total (init / lower / "
      "step compile) s | cold CPU s | warm s | warm CPU s | load |"
  )
  print("|---|---|---|---|---|---|---|")
  for preset in abstract_step.presets():
    name = ", ".join(preset.covers)
    row = rows.get(preset.name)
    if row is None:
      print(f"| {name} | | not measured | | not measured | | |")
      continue
    net = abstract_step.shape_of(preset)[0]
    cold, warm = row["cold"], row["warm"]
    if "skipped" in cold or "skipped" in warm:
      why = cold.get("skipped") or warm["skipped"]
      print(f"| {name} | {net} | {why} | | | | {row['load']:.1f} |")
      continue
    cpu = lambda r: (
        f"{r['init_to_compiled_cpu_s']:.1f}"
        if "init_to_compiled_cpu_s" in r
        else ""
    )
    print(
        f"| {name} | {net} | {cold['total_s']:.1f} ({cold['init_s']:.1f} / "
        f"{cold['lower_s']:.1f} / {cold['compile_s']:.1f}) | {cpu(cold)} | "
        f"{warm['total_s']:.1f} | {cpu(warm)} | {row['load']:.1f} |"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="20,110,164,1001,1202")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument(
      "--timeout",
      type=float,
      default=900.0,
      help="wall-clock seconds per case (subprocess)",
  )
  parser.add_argument(
      "--unrolled-deep",
      action="store_true",
      help="also run model.scan=False for depths >= 1001 "
      "(skipped by default: needs > 20 GB RAM)",
  )
  parser.add_argument(
      "--skip-unrolled-deep",
      action="store_true",
      help="no-op, kept for old command lines (now default)",
  )
  parser.add_argument(
      "--no-unrolled", action="store_true", help="only model.scan=True cases"
  )
  parser.add_argument(
      "--repeats",
      type=int,
      default=2,
      help="round-robin passes over the cases (min taken)",
  )
  parser.add_argument(
      "--cpu-conv-grad",
      default="auto",
      help="model.cpu_conv_grad of the --depths cases (auto: the chunked "
      "CPU weight gradient on a CPU; off: XLA's, as a GPU/TPU compiles)",
  )
  parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: depth,scan
  parser.add_argument(
      "--presets",
      help="'all' or name parts: time every "
      "paper preset's first step, cold and warm",
  )
  parser.add_argument(
      "--devices",
      type=int,
      default=8,
      help="fake CPU devices of the --presets cases",
  )
  parser.add_argument(
      "--jsonl",
      help="append --presets results here; a preset already in it is "
      "skipped (rerun the command to resume)",
  )
  parser.add_argument(
      "--deepest-first",
      action="store_true",
      help="--presets: deepest networks first",
  )
  parser.add_argument(
      "--shallowest-first",
      action="store_true",
      help="--presets: shallowest first (a second sweep on the same --jsonl "
      "meets a --deepest-first one halfway)",
  )
  parser.add_argument("--table", help="print the markdown table of a --jsonl")
  parser.add_argument("--preset-case", help=argparse.SUPPRESS)  # internal
  parser.add_argument("--cache", help=argparse.SUPPRESS)  # internal
  args = parser.parse_args()

  if args.preset_case:
    print(json.dumps(first_step_case(args.preset_case, args.cache)), flush=True)
    return
  if args.table:
    table_main(args.table)
    return
  if args.presets:
    presets_main(args)
    return

  if args.case:
    depth, scan = (int(v) for v in args.case.split(","))
    print(
        json.dumps(measure(depth, bool(scan), args.batch, args.cpu_conv_grad)),
        flush=True,
    )
    return

  depths = [int(d) for d in args.depths.split(",")]
  cases = [
      (d, scan)
      for scan in ((True,) if args.no_unrolled else (True, False))
      for d in depths
  ]
  runs = {c: [] for c in cases}
  deep_unrolled = [c for c in cases if not c[1] and c[0] >= DEEP_MIN]
  schedule = [
      (rep, c)
      for rep in range(args.repeats)
      for c in cases
      if c not in deep_unrolled
  ]
  if args.unrolled_deep:  # the slow, memory-hungry ones once, at the end
    schedule += [(0, c) for c in deep_unrolled]
  for rep, (depth, scan) in schedule:
    r = run_case(depth, scan, args.batch, args.timeout, args.cpu_conv_grad)
    runs[(depth, scan)].append(r)
    name = case_name(depth)
    if "skipped" in r:
      print(
          f"[{rep}] {name:34s} scan={str(scan):5s}  {r['skipped']}", flush=True
      )
    else:
      print(
          f"[{rep}] {name:34s} scan={str(scan):5s}  trace "
          f"{r['trace_s']:6.2f} s  lower {r['lower_s']:6.2f} s  compile "
          f"{r['compile_s']:7.2f} s  ({r['units']} units, "
          f"{r['params'] / 1e6:.2f} M params; process "
          f"{r['process_s']:.0f} s)",
          flush=True,
      )

  results = []
  print("minimum over repeats:")
  for depth, scan in cases:
    ok = [r for r in runs[(depth, scan)] if "skipped" not in r]
    if not ok:
      why = (
          runs[(depth, scan)][0]["skipped"]
          if runs[(depth, scan)]
          else DEEP_SKIP
      )
      results.append({"depth": depth, "scan": scan, "skipped": why})
      print(f"  ResNet-{depth:<5d} scan={str(scan):5s}  skipped: {why}")
      continue
    best = {
        k: min(r[k] for r in ok) for k in ("trace_s", "lower_s", "compile_s")
    }
    results.append({"depth": depth, "scan": scan, **best, "n": len(ok)})
    print(
        f"  ResNet-{depth:<5d} scan={str(scan):5s}  trace "
        f"{best['trace_s']:6.2f} s  lower {best['lower_s']:6.2f} s  "
        f"compile {best['compile_s']:7.2f} s  (of {len(ok)})"
    )

  import jax  # pylint: disable=g-import-not-at-top

  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform}, "
      f"{os.cpu_count()} cores, {jax.device_count()} devices; batch "
      f"{args.batch}; model.cpu_conv_grad={args.cpu_conv_grad}; "
      "training.step_on_dataset"
  )
  skipped = [
      f"ResNet-{r['depth']} scan={r['scan']} ({r['skipped']})"
      for r in results
      if "skipped" in r
  ]
  print("skipped: " + ("; ".join(skipped) if skipped else "none"))
  got = {(r["depth"], r["scan"]): r for r in results if "skipped" not in r}
  if (1001, True) in got and (164, True) in got:
    same = got[(1001, True)]["compile_s"] / got[(164, True)]["compile_s"]
    print(
        f"scanned ResNet-1001 / scanned ResNet-164 compile (same unit, "
        f"minima) = {same:.2f}x"
    )
  # Paired per round: both cases of a round saw about the same machine load.
  pairs = [
      a["compile_s"] / b["compile_s"]
      for a, b in zip(runs.get((1001, True), []), runs.get((110, True), []))
      if "skipped" not in a and "skipped" not in b
  ]
  if pairs:
    ratio = statistics.median(pairs)
    mins = got[(1001, True)]["compile_s"] / got[(110, True)]["compile_s"]
    print(
        "per-round scanned 1001/110 compile: "
        + " ".join(f"{r:.2f}" for r in pairs)
        + f"; ratio of minima "
        f"{mins:.2f}x"
    )
    print(
        f"scanned ResNet-1001 compile / scanned ResNet-110 compile = "
        f"{ratio:.2f}x (median of {len(pairs)} rounds; target <= 2x)"
    )
  else:
    print(
        "scanned ResNet-1001 / ResNet-110 compile ratio: not measured "
        "(a case was skipped or failed)"
    )


if __name__ == "__main__":
  if "--preset-case" in sys.argv:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import abstract_step as _a  # pylint: disable=g-import-not-at-top

    _a.fake_devices(int(sys.argv[sys.argv.index("--devices") + 1]))
  main()
