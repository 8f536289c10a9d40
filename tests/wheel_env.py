"""Fixtures for testing resflax as users get it: the built wheel, installed
into a fresh venv without system site packages (so without TensorFlow).

Registered as a plugin in conftest.py, so the wheel and the venv are built
once per session for every test that asks for them.
"""

import fcntl
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(cmd, env=None, cwd=None, timeout=900):
  proc = subprocess.run(
      cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, (
      f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
      f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  )
  return proc


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
  """The sdist and the wheel built from it, as `python -m build` makes them.

  Built once per session: pytest-xdist's workers share one build (under a
  lock), since two builds at once would race on the checkout's egg-info.
  """
  if "PYTEST_XDIST_WORKER" not in os.environ:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)])
  else:
    out = tmp_path_factory.getbasetemp().parent / "dist"
    out.mkdir(exist_ok=True)
    with open(out / ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not list(out.glob("resflax-*.whl")):
        run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)])
  (wheel,) = out.glob("resflax-*.whl")
  (sdist,) = out.glob("resflax-*.tar.gz")
  return wheel, sdist


@pytest.fixture(scope="session")
def venv(dist, tmp_path_factory):
  """A fresh venv holding resflax's dependencies and Jupyter's kernel.

  resflax itself is installed by the tests that need it (`installed`), so
  the quickstart notebook can install it with its own first cell.
  """
  wheel, _ = dist
  root = tmp_path_factory.mktemp("venv")
  run([sys.executable, "-m", "venv", str(root)])
  python = root / "bin" / "python"
  pip = [
      str(python),
      "-m",
      "pip",
      "install",
      "-q",
      "--disable-pip-version-check",
  ]
  run(pip + [str(wheel), "nbclient", "nbformat", "ipykernel"])
  run([str(python), "-m", "pip", "uninstall", "-q", "-y", "resflax"])
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in ("PYTHONPATH", "VIRTUAL_ENV")
  }
  # The kernel spec ipykernel installs runs "python" from PATH.
  env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
  env["RESFLAX_NOTEBOOK_SMOKE"] = "1"
  return python, env, tmp_path_factory.mktemp("elsewhere")


def resflax_location(python, env, cwd):
  proc = subprocess.run(
      [str(python), "-c", "import resflax; print(resflax.__file__)"],
      env=env,
      cwd=cwd,
      capture_output=True,
      text=True,
      check=False,
  )
  return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture
def installed(dist, venv):
  """The venv with the wheel installed (not editable)."""
  python, env, cwd = venv
  if resflax_location(python, env, cwd) is None:
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            str(dist[0]),
        ]
    )
  location = resflax_location(python, env, cwd)
  assert "site-packages" in location and str(REPO) not in location
  return venv
