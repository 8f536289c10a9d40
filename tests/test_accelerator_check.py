"""The device run's script runs end to end on this CPU (``--quick``)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO


def _run(tmp_path, *args):
  env = {
      **os.environ,
      "OUT": str(tmp_path / "out"),
      "PYTHON": sys.executable,
      "JAX_PLATFORMS": "cpu",
  }
  proc = subprocess.run(
      [
          "bash",
          os.path.join(REPO, "benchmarks", "accelerator_check.sh"),
          "--quick",
          *args,
      ],
      capture_output=True,
      text=True,
      env=env,
      timeout=900,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, tmp_path / "out"


def test_quick_speed_cases_only(tmp_path):
  """The fast variant: speed cases, summary and report file, no extras."""
  out, out_dir = _run(tmp_path, "--no-extras", "--budget", "20")
  assert "resflax accelerator check" in out
  assert "ResNet-20 float32 scan=True" in out
  assert "-- summary" in out
  assert (out_dir / "accelerator_check.txt").read_text().strip()


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
  """Speed cases, then the trace, the three A/B pairs and the reproduction."""
  out, out_dir = _run(tmp_path)
  assert "FAILED" not in out, out
  assert (out_dir / "trace.tar.gz").stat().st_size > 0
  for label in ("A/B BN groups", "A/B non-finite guard", "A/B buffer donation"):
    assert label in out
  assert "ResNet-20 reproduction (full recipe, cpu): test error " in out
  assert (out_dir / "accelerator_check.txt").read_text().count(
      "test error"
  ) == 1
