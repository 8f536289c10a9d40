"""Peak memory of one ResNet-1001 training step, with and without remat.

The step is the jitted ``resflax.training.step_on_dataset`` of the Identity
Mappings ResNet-1001 (bottleneck, full pre-activation, projection B, scanned
stages) at batch ``--batch`` (128, the paper's), compiled from abstract
arguments. XLA's ``memory_analysis()`` of the compiled executable gives,
without running anything (so it works on a CPU for a GPU-sized batch):

* argument bytes: the train state and the on-device dataset;
* output bytes: the new train state;
* alias bytes: outputs written in place of donated arguments (the state);
* temp bytes: everything else live at some point (activations saved for the
  backward pass, gradients, workspace): what ``model.remat`` shrinks.

Peak = argument + output - alias + temp (XLA's own buffer-assignment bound;
``--dataset-size`` training images sit in the arguments). With
``--run`` (the default on any backend whose devices report
``memory_stats()``, e.g. a GPU) each variant also runs one step in a fresh
subprocess and its device's ``peak_bytes_in_use`` is reported (includes the
initial state and the dataset). The last line is remat peak / no-remat
peak (from ``memory_analysis``).

  python benchmarks/memory.py [--batch 128] [--depth 1001] [--run]

``--presets all`` (or comma-separated name parts, see
``abstract_step.presets``) instead compiles every paper preset of
``experiments/`` for ``--devices`` (8) fake CPU devices, as training
shards it (state and CIFAR replicated, the batch split), and prints per
device: batch, arguments, temporaries, peak, and whether the peak fits
8 GiB (a Colab TPU v2-8 core) and 16 GiB (a v5e core); where it does not,
the same with ``model.remat=True``. These are XLA:CPU's buffer
assignments, estimates of what a TPU or GPU compiler allocates, of the
program an accelerator compiles (``model.cpu_conv_grad='off'``: XLA's own
convolution gradients, which ``'auto'`` gives on a GPU or TPU).
``--fast-compile`` compiles with ``train.fast_compile`` (XLA backend
optimisation level 0: the same buffer assignment, compiled several times
faster); ``--jsonl FILE`` appends each preset's figures as a JSON line and
skips the presets already in FILE, so rerunning the command resumes it;
``--deepest-first`` orders the presets by depth (``--shallowest-first``
the other way: two sweeps on one FILE share the work); ``--table FILE`` prints
the markdown table of FILE, every preset of ``experiments/`` listed
("not measured" where FILE has none).

  python benchmarks/memory.py --presets all --fast-compile --deepest-first
      --jsonl memory.jsonl
  python benchmarks/memory.py --table memory.jsonl
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import abstract_step

if "--presets" in sys.argv:  # before JAX initialises its devices
  abstract_step.fake_devices(
      int(sys.argv[sys.argv.index("--devices") + 1])
      if "--devices" in sys.argv
      else 8
  )

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from resflax import models, training  # pylint: disable=wrong-import-position
from resflax.config import load_experiment  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2.0**20
GIB = 2.0**30
CORES = {"TPU v2 core": 8 * GIB, "v5e core": 16 * GIB}


def make_config(depth: int, batch: int, remat: bool, scan: bool = True):
  """Identity Mappings bottleneck pre-activation ResNet of ``depth``."""
  config = load_experiment(
      os.path.join(HERE, "..", "experiments", "cifar_resnet.py"), "110"
  )
  config.model.block = "bottleneck"
  config.model.unit = "full_preact"
  config.model.projection = "B"
  config.model.depth = depth
  config.model.scan = scan
  config.model.remat = remat
  config.train.batch_size = batch
  config.data.name = "synthetic"
  return config


def analyse(config, num_train: int):
  """Compiles the step; returns XLA's memory analysis as a dict of bytes."""
  _, step, state, data = abstract_step.build(config, num_train)
  start = time.perf_counter()
  compiled = step.lower(state, *data).compile()
  seconds = time.perf_counter() - start
  ma = compiled.memory_analysis()
  if ma is None:
    return {"compile_s": seconds, "available": False}
  get = lambda k: int(getattr(ma, k, 0) or 0)
  out = {
      k: get(f"{k}_size_in_bytes")
      for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  out["compile_s"] = seconds
  out["available"] = True
  out["params"] = models.num_params(state.variables)
  return out


def run_once(config, num_train: int):
  """Runs one step for real; returns the device's peak bytes in use or None."""
  device = jax.devices()[0]
  if not hasattr(device, "memory_stats") or device.memory_stats() is None:
    return None
  spec, step, _, _ = abstract_step.build(config, num_train)
  rep = spec.replicated
  state = jax.jit(
      functools.partial(training.init_state, spec, 0, (32, 32, 3)),
      out_shardings=rep,
  )()
  key = jax.random.key(0)
  images = jax.device_put(
      jax.random.randint(key, (num_train, 32, 32, 3), 0, 256, jnp.int32).astype(
          jnp.uint8
      ),
      rep,
  )
  labels = jax.device_put(jnp.arange(num_train, dtype=jnp.int32) % 10, rep)
  mean = jax.device_put(jnp.full((32, 32, 3), 0.5, jnp.float32), rep)
  std = jax.device_put(jnp.full((32, 32, 3), 0.25, jnp.float32), rep)
  state = step(state, images, labels, mean, std)
  jax.block_until_ready(state)
  stats = device.memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def device_peak_in_subprocess(args, remat: bool):
  """``run_once`` in a fresh interpreter; bytes, or a reason string."""
  cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--device-case",
      str(int(remat)),
      "--depth",
      str(args.depth),
      "--batch",
      str(args.batch),
      "--dataset-size",
      str(args.dataset_size),
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in reversed(out.stdout.splitlines()):
    if line.startswith("{"):
      peak = json.loads(line)["device_peak"]
      return peak if peak is not None else "memory_stats() unavailable"
  tail = (out.stderr or out.stdout).strip().splitlines()[-2:]
  return f"failed (rc {out.returncode}): {' | '.join(tail)}"


def preset_memory(config) -> dict:
  """XLA's per-device memory analysis of a preset's compiled step."""
  _, step, state, data = abstract_step.preset_step(config)
  start = time.perf_counter()
  out = abstract_step.memory(step.lower(state, *data).compile()) or {}
  out["compile_s"] = time.perf_counter() - start
  return out


def verdict(peak: int) -> str:
  """'yes'/'no' for each core size of ``CORES``."""
  return " | ".join("yes" if peak <= size else "no" for size in CORES.values())


def presets_main(args) -> None:
  """The memory of every preset (module docstring), one JSON line each."""
  n = jax.device_count()
  done = abstract_step.done_names(args.jsonl)
  todo = abstract_step.presets(None if args.presets == "all" else args.presets)
  if args.deepest_first or args.shallowest_first:
    todo = abstract_step.deepest_first(todo)
  if args.shallowest_first:
    todo.reverse()
  for preset in todo:
    # Read again each time: a second sweep on the same FILE (the other
    # end of the order) may have measured it meanwhile.
    if preset.name in done | abstract_step.done_names(args.jsonl):
      continue
    config = preset.config()
    config.train.fast_compile = args.fast_compile
    # The program a GPU or TPU compiles ("auto" is "off" there): XLA's own
    # convolution gradients, not the CPU workaround of models/cpu_conv.py.
    config.model.cpu_conv_grad = "off"
    net, batch = abstract_step.shape_of(preset)
    row = {
        "preset": preset.name,
        "covers": preset.covers,
        "net": net,
        "batch_per_device": batch // n,
        "devices": n,
        "fast_compile": args.fast_compile,
        "memory": preset_memory(config),
    }
    peak = row["memory"].get("peak")
    if (
        peak is not None
        and peak > min(CORES.values())
        and not config.model.remat
    ):
      config.model.remat = True
      row["remat_memory"] = preset_memory(config)
    if args.jsonl:
      with open(args.jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(table_row(row), flush=True)
  print(
      f"XLA:CPU buffer-assignment estimates, {n} devices, jax "
      f"{jax.__version__}"
  )


def table_row(row: dict) -> str:
  """One markdown row of the memory table from a ``presets_main`` record."""
  r = row["memory"]
  if "peak" not in r:
    return f"| {row['preset']} | {row['batch_per_device']} | unavailable |"
  out = (
      f"| {', '.join(row['covers'])} | {row['net']} | "
      f"{row['batch_per_device']} | {r['argument'] / GIB:.2f} | "
      f"{r['output'] / GIB:.2f} | {r['temp'] / GIB:.2f} | "
      f"{r['peak'] / GIB:.2f} | {verdict(r['peak'])} |"
  )
  if "remat_memory" in row:
    rr = row["remat_memory"]["peak"]
    out += f" model.remat=True: {rr / GIB:.2f} GiB ({verdict(rr)}) |"
  else:
    out += " |"
  return out


def table_main(jsonl: str) -> None:
  """Markdown table of every preset from ``jsonl``; the rest not measured."""
  with open(jsonl) as f:
    rows = {r["preset"]: r for r in map(json.loads, filter(str.strip, f))}
  print(
      "| preset (cases covered) | network | batch / device | arguments GiB "
      "| outputs GiB | temporaries GiB | peak GiB | "
      f"fits {' | fits '.join(CORES)} | model.remat=True (only over 8 GiB) |"
  )
  print("|---|---|---|---|---|---|---|" + "---|" * len(CORES) + "---|")
  for preset in abstract_step.presets():
    if preset.name in rows:
      print(table_row(rows[preset.name]))
    else:
      print(f"| {', '.join(preset.covers)} | not measured |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=1001)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument(
      "--dataset-size",
      type=int,
      default=50_000,
      help="training images held on the device (CIFAR: 50k)",
  )
  parser.add_argument(
      "--run",
      action="store_true",
      help="also run a step and read device memory_stats() "
      "(the default on backends that have them)",
  )
  parser.add_argument("--device-case", help=argparse.SUPPRESS)  # internal
  parser.add_argument(
      "--jsonl",
      help="--presets: append each result here; a preset already in it "
      "is skipped (rerun the command to resume)",
  )
  parser.add_argument(
      "--fast-compile",
      action="store_true",
      help="--presets: compile with train.fast_compile (same memory "
      "analysis, see RESULTS.md)",
  )
  parser.add_argument(
      "--deepest-first", action="store_true", help="--presets: deepest first"
  )
  parser.add_argument(
      "--shallowest-first",
      action="store_true",
      help="--presets: shallowest first (a second sweep on the same --jsonl "
      "meets a --deepest-first one halfway)",
  )
  parser.add_argument("--table", help="print the markdown table of a --jsonl")
  parser.add_argument(
      "--presets",
      help="'all' or name parts: the memory "
      "table of the paper presets on fake devices",
  )
  parser.add_argument(
      "--devices", type=int, default=8, help="fake CPU devices of --presets"
  )
  args = parser.parse_args()
  if args.table:
    table_main(args.table)
    return
  if args.presets:
    presets_main(args)
    return
  if args.device_case is not None:
    config = make_config(args.depth, args.batch, bool(int(args.device_case)))
    print(json.dumps({"device_peak": run_once(config, args.dataset_size)}))
    return
  device = jax.devices()[0]
  has_stats = (
      hasattr(device, "memory_stats") and device.memory_stats() is not None
  )

  res = {}
  for remat in (False, True):
    config = make_config(args.depth, args.batch, remat)
    r = analyse(config, args.dataset_size)
    if not r["available"]:
      print(
          f"remat={remat}: memory_analysis() unavailable on "
          f"{device.platform}"
      )
    else:
      print(
          f"remat={str(remat):5s}: peak {r['peak'] / MIB:8.1f} MiB = "
          f"arguments {r['argument'] / MIB:.1f} + outputs "
          f"{r['output'] / MIB:.1f} - aliased {r['alias'] / MIB:.1f} + "
          f"temp {r['temp'] / MIB:.1f} (compile {r['compile_s']:.1f} s)",
          flush=True,
      )
    if args.run or has_stats:
      # peak_bytes_in_use only grows within a process: one process per case.
      r["device_peak"] = device_peak_in_subprocess(args, remat)
      if isinstance(r["device_peak"], int):
        print(
            f"remat={str(remat):5s}: device peak_bytes_in_use "
            f"{r['device_peak'] / MIB:.1f} MiB (one step, fresh process)",
            flush=True,
        )
      else:
        print(
            f"remat={remat}: device peak not measured: " f"{r['device_peak']}",
            flush=True,
        )
    res[remat] = r

  print(
      f"ResNet-{args.depth} (bottleneck, full pre-act, projection B, "
      f"scan), batch {args.batch}, {res[False].get('params', 0) / 1e6:.2f} "
      f"M params, {args.dataset_size} uint8 training images on device; "
      f"jax {jax.__version__} {device.platform} ({device.device_kind})"
  )
  if res[False]["available"] and res[True]["available"]:
    t = res[True]["temp"] / res[False]["temp"]
    p = res[True]["peak"] / res[False]["peak"]
    print(f"temp (activations + workspace) remat / no-remat = {t:.3f}")
    print(
        f"peak memory remat / no-remat = {p:.3f} "
        f"({res[True]['peak'] / MIB:.0f} MiB vs "
        f"{res[False]['peak'] / MIB:.0f} MiB)"
    )
  else:
    print("peak memory remat / no-remat: not available on this backend")


if __name__ == "__main__":
  main()
