"""Time to the first training step of the CLI's smoke run, cold and warm.

Starts ``python -m resflax.main --config experiments/cifar_resnet.py:smoke``
in a fresh process and a fresh workdir, and reads from its log when the
first step has run (the loop logs "compiled and ran the first step"). Cold:
an empty compilation cache; warm: the same command again on the cache the
cold run filled (the second seed of a sweep, a rerun, a resumed run). Each
repeat is one cold/warm pair with its own cache directory.

  python benchmarks/startup.py --repeats 3

The last line: median seconds to the first step, cold and warm.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = "compiled and ran the first step"


def time_to_first_step(cache: str, workdir: str, extra) -> float:
  """Seconds from process start until its first step has run."""
  cmd = [
      sys.executable,
      "-m",
      "resflax.main",
      "--config",
      os.path.join(REPO, "experiments/cifar_resnet.py:smoke"),
      "--workdir",
      workdir,
      f"--config.train.compilation_cache={cache}",
      *extra,
  ]
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  start = time.perf_counter()
  proc = subprocess.Popen(
      cmd,
      cwd=REPO,
      env=env,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
  )
  seconds = None
  for line in proc.stderr:
    if FIRST_STEP in line and seconds is None:
      seconds = time.perf_counter() - start
  if proc.wait() != 0 or seconds is None:
    raise RuntimeError(f"smoke run failed (exit {proc.returncode})")
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
      "--extra",
      nargs="*",
      default=[],
      help="more --config.key=value flags for the run",
  )
  args = parser.parse_args()
  cold, warm = [], []
  for r in range(args.repeats):
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, "cache")
      cold.append(time_to_first_step(cache, os.path.join(tmp, "a"), args.extra))
      warm.append(time_to_first_step(cache, os.path.join(tmp, "b"), args.extra))
    print(
        f"repeat {r}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s", flush=True
    )
  print(
      f"time to first step (median of {args.repeats}): cold "
      f"{statistics.median(cold):.1f} s, warm {statistics.median(warm):.1f} "
      f"s, cold/warm {statistics.median(cold) / statistics.median(warm):.2f}"
  )


if __name__ == "__main__":
  main()
