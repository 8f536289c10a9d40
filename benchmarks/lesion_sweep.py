"""Every single-module deletion of ResNet-110 through one compiled evaluator.

Veit et al. Fig. 3 needs the test error of ResNet-110 (54 modules) with each
module deleted, plus the intact network: 55 evaluations. In resflax a lesion
is data, so all 55 run through one compiled ``resflax.lesion.LesionEvaluator``
(``--lesions-per-call`` of them vmapped per call). The reference is 55
evaluations of the intact network through the *same* jitted evaluator;
sweep and reference calls alternate (A B, then B A, ...) so drifting machine
load hits both alike. Target: sweep time <= 1.1 x reference time, with one
compilation.

Data: the CIFAR-10 test images of ``../shared/data/cifar10-jpeg.tar.gz``
(``config.data.path``); ``--images N`` evaluates a fixed class-mixed subset
of N of them (all 10,000 by default; fewer keep a CPU run to minutes).
Weights: random He
initialisation (timing does not depend on them), or ``--checkpoint RUN_DIR``
of a trained run.

  python benchmarks/lesion_sweep.py [--images 10000] [--lesions-per-call 5]
      [--batch-size 500] [--checkpoint RUN_DIR]
      [--results-md benchmarks/RESULTS.md]

The last line printed is the ratio sweep / reference.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ARCHIVE = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
SECTION = "## Lesion sweep: 55 evaluations of ResNet-110 (resflax.lesion)"


def random_variables(model, seed=0):
  """He-initialised variables drawn on the host from the abstract shapes
  (compiling the initialiser of ResNet-110 would take longer than the
  benchmark; the values do not change the timing)."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3))
  )
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = getattr(path[-1], "key", "")
    if leaf == "kernel":
      fan = (
          s.shape[-1] * s.shape[-3] * s.shape[-4]
          if len(s.shape) >= 4
          else s.shape[-2]
      )
      return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan), s.shape), s.dtype)
    if leaf in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    return jnp.zeros(s.shape, s.dtype)  # BN bias / mean, dense bias

  out = {
      c: jax.tree_util.tree_map_with_path(fill, shapes[c])
      for c in ("params", "batch_stats")
  }
  out["lesion"] = model.default_lesion()
  return out


def load(args):
  """(model, variables, test images, labels, mean, std, source)."""
  # pylint: disable=g-import-not-at-top
  from resflax import data, models
  from resflax.experiment import lesion_analysis, lesion_study
  # pylint: enable=g-import-not-at-top
  if args.checkpoint:
    net = lesion_study.load_run(args.checkpoint, data_path=args.data)
    ds, model, variables = net.dataset, net.model, net.variables
    source = f"checkpoint {args.checkpoint} (step {net.step})"
  else:
    if not os.path.exists(args.data):
      sys.exit(
          f"error: CIFAR-10 archive not found at {args.data}; pass "
          "--data PATH (an image-folder tree or .tar.gz of one)"
      )
    ds = data.load_dataset({"name": "cifar10", "path": args.data})
    model = models.create_model(
        name="cifar_resnet", depth=110, num_classes=ds.num_classes
    )
    variables = random_variables(model)
    source = "random He initialisation"
  idx = lesion_analysis.eval_subset(ds.num_test, args.images)
  return (
      model,
      variables,
      ds.test_images[idx],
      ds.test_labels[idx],
      ds.mean,
      ds.std,
      source,
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--images",
      type=int,
      default=10_000,
      help="test images evaluated (a fixed subset of N; " "default all 10,000)",
  )
  parser.add_argument(
      "--lesions-per-call",
      type=int,
      default=5,
      help="lesions vmapped per call; must divide 55",
  )
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument(
      "--checkpoint", default="", help="run directory of a trained ResNet-110"
  )
  parser.add_argument("--data", default=ARCHIVE)
  parser.add_argument(
      "--results-md",
      default="",
      help="write/replace this benchmark's section there",
  )
  args = parser.parse_args(argv)
  if args.images < 1 or args.batch_size < 1:
    parser.error("--images and --batch-size must be >= 1")
  if 55 % args.lesions_per_call:
    parser.error(
        f"--lesions-per-call={args.lesions_per_call} must divide 55 "
        "(1, 5, 11 or 55) so sweep and reference make the same "
        "calls"
    )

  from resflax import lesion  # pylint: disable=g-import-not-at-top

  model, variables, images, labels, mean, std, source = load(args)
  n = model.num_modules
  per = args.lesions_per_call
  ev = lesion.LesionEvaluator(
      model,
      images,
      labels,
      mean,
      std,
      batch_size=args.batch_size,
      lesions_per_call=per,
  )
  sweep = lesion.single_deletion_lesions(variables)  # intact + n deletions
  reference = lesion.stack_lesions([variables] * (n + 1))
  take = lambda t, i: jax.tree.map(lambda a: a[i * per : (i + 1) * per], t)
  calls = (n + 1) // per
  print(
      f"ResNet-110: {n} modules; {len(images)} test images; weights: "
      f"{source}; {per} lesions per call, {calls} calls per pass; "
      f"{jax.devices()[0].platform} ({os.cpu_count()} CPUs)",
      flush=True,
  )

  tick = time.perf_counter()
  ev(variables, take(reference, 0))  # compile
  compile_s = time.perf_counter() - tick
  print(f"first call (compile + run): {compile_s:.1f} s", flush=True)

  times = {"sweep": 0.0, "reference": 0.0}
  errors = []
  for i in range(calls):
    order = ("sweep", "reference") if i % 2 == 0 else ("reference", "sweep")
    for name in order:
      batch = take(sweep if name == "sweep" else reference, i)
      tick = time.perf_counter()
      out = ev(variables, batch)  # returns host arrays: the work is done
      times[name] += time.perf_counter() - tick
      if name == "sweep":
        errors.append(out["error"])
    print(
        f"  call {i + 1}/{calls}: sweep {times['sweep']:.1f} s, "
        f"reference {times['reference']:.1f} s",
        flush=True,
    )
  errors = np.concatenate(errors)
  down = [m.index for m in model.modules if m.downsampling]
  print(
      f"intact error {errors[0]:.4f}; one module deleted: mean "
      f"{errors[1:].mean():.4f}, max {errors[1:].max():.4f}; downsampling "
      f"modules {down}: {[round(float(errors[1 + d]), 4) for d in down]}"
  )
  compilations = ev.compilations
  ratio = times["sweep"] / times["reference"]
  print(f"compilations: {compilations}")
  print(
      f"sweep (intact + {n} deletions): {times['sweep']:.2f} s; "
      f"reference (55 intact): {times['reference']:.2f} s"
  )
  if args.results_md:
    write_section(
        args, len(images), per, source, times, ratio, compilations, compile_s
    )
  print(f"ratio sweep / reference: {ratio:.3f}")
  return ratio


def write_section(
    args, images, per, source, times, ratio, compilations, compile_s
):
  """Replaces (or appends) this benchmark's section of RESULTS.md."""
  from resflax import fileio  # pylint: disable=g-import-not-at-top

  path = args.results_md
  command = "python benchmarks/lesion_sweep.py " + " ".join(
      a for a in sys.argv[1:]
  )
  cpu = platform.processor() or platform.machine()
  rate = 55 * images / times["reference"]
  load = (
      f"; load average {os.getloadavg()[0]:.1f} at the end"
      if hasattr(os, "getloadavg")
      else ""
  )
  text = "\n".join(
      [
          SECTION,
          "",
          "Veit et al. Fig. 3 on ResNet-110: the intact network and each of "
          "its "
          "54 modules deleted (55 evaluations) through one compiled "
          "`resflax.lesion.LesionEvaluator`, against 55 evaluations of the "
          "intact network through the same jitted evaluator (calls alternating "
          "A B / B A). Lesions that share an order are vmapped over their "
          "`active` flags only, so the weights stay unbatched.",
          "",
          f"- Command: `{command}`",
          f"- Machine: {os.cpu_count()}-core CPU ({cpu}), 1 "
          f"{jax.devices()[0].platform} device, jax {jax.__version__}; shared "
          f"with other developers' jobs{load}",
          f"- Date: {datetime.date.today().isoformat()}",
          f"- Data: {images} of the 10,000 CIFAR-10 test images (a fixed "
          "class-mixed subset of ../shared/data/cifar10-jpeg.tar.gz); weights: "
          + source,
          f"- {per} lesions per call, {55 // per} calls per pass",
          f"- Compilations of the evaluator: {compilations} (first call, "
          f"compile + run: {compile_s:.1f} s)",
          f"- Sweep (intact + 54 single deletions): {times['sweep']:.2f} s; "
          f"55 intact evaluations: {times['reference']:.2f} s "
          f"({rate:.0f} images/s)",
          f"- **Ratio sweep / reference: {ratio:.3f}** (target <= 1.1)",
          "",
      ]
  )
  old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
  if SECTION in old:
    start = old.index(SECTION)
    nxt = old.find("\n## ", start + len(SECTION))
    new = old[:start] + text + ("" if nxt < 0 else "\n" + old[nxt + 1 :])
  else:
    new = old.rstrip("\n") + "\n\n" + text
  fileio.write_atomic(path, new)


if __name__ == "__main__":
  main()
