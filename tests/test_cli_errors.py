"""Mistakes on the command line end in one line naming what is wrong."""

import os
import subprocess
import sys

import pytest

from test_train import REPO

SMOKE = os.path.join(REPO, "experiments/cifar_resnet.py:smoke")


def run_cli(tmp_path, *args, workdir=None):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  env.pop("RESFLAX_TRACEBACK", None)
  return subprocess.run(
      [sys.executable, "-m", "resflax.main", "--workdir",
       str(workdir or tmp_path / "w"), *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,pattern", [
    (("--config", SMOKE, "--config.train.stepz=10"),
     "error: --config.train.stepz: no such config key; did you mean "
     "--config.train.steps?"),
    (("--config", SMOKE, "--config.train.steps=abc"),
     "error: --config.train.steps: invalid literal for int()"),
    (("--config", os.path.join(REPO, "experiments/cifar_shortcuts.py:"
                                     "exclusve_gate")),
     "unknown case 'exclusve_gate' (did you mean exclusive_gate"),
    (("--config", "experiments/no_such_file.py"),
     "error: --config: cannot read the experiment file "
     "experiments/no_such_file.py"),
])
def test_config_mistakes_are_one_line(tmp_path, args, pattern):
  proc = run_cli(tmp_path, *args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and pattern in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("make_workdir,pattern", [
    (lambda p: (p / "file").write_text("x") and p / "file",
     "exists and is not a directory"),
    (lambda p: "/proc/resflax-test/w", "cannot create workdir /proc"),
])
def test_unusable_workdir_is_one_line(tmp_path, make_workdir, pattern):
  proc = run_cli(tmp_path, "--config", SMOKE,
                 workdir=make_workdir(tmp_path))
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and pattern in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
