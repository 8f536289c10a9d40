"""Mistakes on the command line end in one line naming what is wrong."""

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

SMOKE = os.path.join(REPO, "experiments/cifar_resnet.py:smoke")


def run_cli(tmp_path, *args, workdir=None):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  env.pop("RESFLAX_TRACEBACK", None)
  return subprocess.run(
      [
          sys.executable,
          "-m",
          "resflax.main",
          "--workdir",
          str(workdir or tmp_path / "w"),
          *args,
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ("--config", SMOKE, "--config.train.stepz=10"),
            "error: --config.train.stepz: no such config key; did you mean "
            "--config.train.steps?",
        ),
        (
            ("--config", SMOKE, "--config.train.steps=abc"),
            "error: --config.train.steps: invalid literal for int()",
        ),
        (
            (
                "--config",
                os.path.join(
                    REPO, "experiments/cifar_shortcuts.py:" "exclusve_gate"
                ),
            ),
            "unknown case 'exclusve_gate' (did you mean exclusive_gate",
        ),
        (
            ("--config", "experiments/no_such_file.py"),
            "error: --config: cannot read the experiment file "
            "experiments/no_such_file.py",
        ),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, args, pattern):
  proc = run_cli(tmp_path, *args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and pattern in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "make_workdir,pattern",
    [
        (
            lambda p: (p / "file").write_text("x") and p / "file",
            "exists and is not a directory",
        ),
        (lambda p: "/proc/resflax-test/w", "cannot create workdir /proc"),
    ],
)
def test_unusable_workdir_is_one_line(tmp_path, make_workdir, pattern):
  proc = run_cli(tmp_path, "--config", SMOKE, workdir=make_workdir(tmp_path))
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and pattern in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ("--config", SMOKE, "--config.train.steps"),
            "error: --config.train.steps: needs a value (e.g. "
            "--config.train.steps=20)",
        ),
        (
            ("--config",),
            "error: --config: needs a value (e.g. --config "
            "experiments/cifar_resnet.py:smoke)",
        ),
        (
            ("--config", SMOKE, "--workdirr=x"),
            "error: --workdirr: no such flag; did you mean --workdir?",
        ),
        (
            ("--config.train.steps=3", "--config", SMOKE),
            "error: --config.train.steps: comes before --config",
        ),
        (
            ("--config", SMOKE, "--verbose=maybe"),
            "error: --verbose: takes no value, =true or =false, not 'maybe'",
        ),
        (
            ("--config", SMOKE, "--num_processes=two"),
            "error: --num_processes: invalid literal for int()",
        ),
        (("--config", SMOKE, "extra"), "error: unexpected argument 'extra'"),
        (
            (
                "--config",
                os.path.join(REPO, "experiments/cifar_resnet.py:resnt110"),
            ),
            "error: --config: cifar_resnet.py: unknown case 'resnt110' "
            "(did you mean resnet110",
        ),
        (
            (
                "--config",
                os.path.join(
                    REPO, "experiments/cifar_resnet.py:110," "resnet56"
                ),
            ),
            "error: --config: cifar_resnet.py: '110' trains one network once",
        ),
    ],
)
def test_flag_mistakes_name_the_flag(tmp_path, args, pattern):
  proc = run_cli(tmp_path, *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(pattern), proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_required_flags_are_named(tmp_path):
  env = {**os.environ}
  env.pop("RESFLAX_TRACEBACK", None)
  proc = subprocess.run(
      [sys.executable, "-m", "resflax.main", "--config", SMOKE],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "error: --workdir: required (e.g. --workdir runs/smoke)"
  )


@pytest.mark.parametrize(
    "flag,full", [("--help", False), ("-h", False), ("--helpfull", True)]
)
def test_help_exits_0_with_the_usage(tmp_path, flag, full):
  proc = run_cli(tmp_path, flag)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr == ""
  assert proc.stdout.startswith("Command line: ``python -m resflax.main")
  for name in ("--config", "--workdir", "--[no]verbose"):
    assert name in proc.stdout
  # Only --helpfull lists the flags of absl and the libraries.
  assert ("--[no]logtostderr" in proc.stdout) == full
  assert not (tmp_path / "w").exists()


def test_verbose_flag_adds_absl_prefix(tmp_path):
  # The run stops at its workdir, after its first log line.
  proc = run_cli(
      tmp_path, "--config", SMOKE, "--verbose", workdir="/proc/resflax-test/w"
  )
  assert proc.returncode == 1
  logged = [l for l in proc.stderr.splitlines() if "compilation cache" in l]
  assert len(logged) == 1, proc.stderr[-2000:]
  assert re.match(r"I\d{4} [\d:.]+ +\d+ compile_cache\.py:\d+\] ", logged[0])


def test_single_run_is_quiet_and_ends_with_its_results(tmp_path):
  proc = run_cli(tmp_path, "--config", SMOKE)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  work = tmp_path / "w"
  assert re.fullmatch(
      rf"\d\d:\d\d:\d\d results: {re.escape(str(work / 'results.json'))} "
      rf"\(curves: {re.escape(str(work / 'curves.png'))}\)",
      lines[-1],
  )
  # Every log line is "HH:MM:SS message"; the start block's and the
  # parameter table's continuation lines are indented or table rows.
  starts = [l for l in lines if not l.startswith((" ", "+", "|", "Total:"))]
  assert all(re.match(r"\d\d:\d\d:\d\d \S", l) for l in starts), starts
  assert not any(re.match(r"[IWE]\d{4} ", l) for l in lines)
  assert sum("steps/s" in l for l in lines) == 4  # 20 steps, every 5
