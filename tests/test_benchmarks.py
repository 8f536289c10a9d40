"""Benchmark lines the project keeps as tests."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")


def test_presets_cover_every_experiment_case():
  """memory.py/compile_time.py --presets see every case of experiments/."""
  sys.path.insert(0, BENCH)
  try:
    import abstract_step  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(BENCH)
  presets = abstract_step.presets()
  covered = {name for p in presets for name in p.covers}
  files = {
      n[:-3]
      for n in os.listdir(os.path.join(REPO, "experiments"))
      if n.endswith(".py") and n != "__init__.py"
  }
  assert {name.split(":")[0] for name in covered} == files
  assert "cifar_resnet:resnet1202" in covered
  assert "cifar_preact:preact_resnet1001_batch64" in covered
  assert "wide_resnet:wrn28_10" in covered
  assert len(covered) > len(presets)  # twins share one program


@pytest.mark.slow
def test_compile_1001_over_164_at_most_1_1():
  """Scanning keeps pre-act ResNet-1001's compile within 1.1x ResNet-164's."""
  proc = subprocess.run(
      [
          sys.executable,
          os.path.join(BENCH, "compile_time.py"),
          "--depths",
          "164,1001",
          "--no-unrolled",
          "--repeats",
          "2",
      ],
      capture_output=True,
      text=True,
      timeout=1800,
      check=True,
  )
  match = re.search(
      r"scanned ResNet-1001 / scanned ResNet-164 compile "
      r"\(same unit, minima\) = ([0-9.]+)x",
      proc.stdout,
  )
  assert match, proc.stdout[-2000:]
  assert float(match.group(1)) <= 1.1, proc.stdout[-2000:]
