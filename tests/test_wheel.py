"""resflax as users get it: the built wheel, a fresh venv, no TensorFlow.

The rest of the suite runs against the editable install in the checkout,
which hides what a regular install lacks (a package without __init__.py,
experiment files outside the package). Here the sdist and wheel are built,
the wheel is installed into a new virtual environment without system site
packages (so without TensorFlow or tensorflow-datasets), and the command
line and both notebooks run from a directory outside the checkout, as the
README says. pip reaches the package index for the dependencies.
"""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

NOTEBOOKS = REPO / "notebooks"
# Runs a notebook in the venv's kernel; prints every cell's text output.
RUN_NOTEBOOK = """
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1200, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
for cell in nb.cells:
  for out in cell.get("outputs", []):
    print(out.get("text", ""), end="")
    if "image/png" in out.get("data", {}):
      print("<image/png>")
"""


def _run(cmd, env=None, cwd=None, timeout=900):
  proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (
      f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
      f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  """The sdist and the wheel built from it, as `python -m build` makes them."""
  out = tmp_path_factory.mktemp("dist")
  _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)])
  wheel, = out.glob("resflax-*.whl")
  sdist, = out.glob("resflax-*.tar.gz")
  return wheel, sdist


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
  """A fresh venv holding resflax's dependencies and Jupyter's kernel.

  resflax itself is installed by the tests that need it (`installed`), so
  the quickstart notebook can install it with its own first cell.
  """
  wheel, _ = dist
  root = tmp_path_factory.mktemp("venv")
  _run([sys.executable, "-m", "venv", str(root)])
  python = root / "bin" / "python"
  pip = [str(python), "-m", "pip", "install", "-q",
         "--disable-pip-version-check"]
  _run(pip + [str(wheel), "nbclient", "nbformat", "ipykernel"])
  _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "resflax"])
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  # The kernel spec ipykernel installs runs "python" from PATH.
  env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
  env["RESFLAX_NOTEBOOK_SMOKE"] = "1"
  return python, env, tmp_path_factory.mktemp("elsewhere")


def _resflax_location(python, env, cwd):
  proc = subprocess.run(
      [str(python), "-c", "import resflax; print(resflax.__file__)"],
      env=env, cwd=cwd, capture_output=True, text=True, check=False)
  return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture
def installed(dist, venv):
  """The venv with the wheel installed (not editable)."""
  python, env, cwd = venv
  if _resflax_location(python, env, cwd) is None:
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps",
          "--disable-pip-version-check", str(dist[0])])
  location = _resflax_location(python, env, cwd)
  assert "site-packages" in location and str(REPO) not in location
  return venv


def test_every_package_and_experiment_is_in_the_wheel(dist):
  wheel, _ = dist
  names = set(zipfile.ZipFile(wheel).namelist())
  packages = sorted(str(d.relative_to(REPO)) for d in (REPO / "resflax").rglob("*")
                    if d.is_dir() and d.name != "__pycache__"
                    and any(d.glob("*.py")))
  assert "resflax/experiment" in packages and "resflax/experiments" in packages
  missing = [p for p in packages if f"{p}/__init__.py" not in names]
  assert not missing, f"not in the wheel (no __init__.py?): {missing}"
  sources = {str(f.relative_to(REPO)) for f in (REPO / "resflax").rglob("*.py")}
  assert sources <= names, sorted(sources - names)


def test_the_venv_has_no_tensorflow(venv):
  python, env, cwd = venv
  for module in ("tensorflow", "tensorflow_datasets"):
    proc = subprocess.run([str(python), "-c", f"import {module}"], env=env,
                          cwd=cwd, capture_output=True, check=False)
    assert proc.returncode != 0, f"{module} is importable in the venv"


def test_quickstart_notebook_installs_the_wheel(dist, venv):
  python, env, cwd = venv
  _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "resflax"])
  assert _resflax_location(python, env, cwd) is None
  out = _run([str(python), "-c", RUN_NOTEBOOK,
              str(NOTEBOOKS / "quickstart.ipynb"), str(cwd)],
             env={**env, "RESFLAX_SOURCE": str(dist[0])}, cwd=cwd).stdout
  assert f"installed resflax from {dist[0]}" in out
  assert "WARNING: no TPU or GPU found" in out  # the suite runs on a CPU
  assert "test error after 6 steps" in out
  assert "<image/png>" in out
  assert "site-packages" in _resflax_location(python, env, cwd)


def test_lesion_notebook_runs(installed):
  python, env, cwd = installed
  out = _run([str(python), "-c", RUN_NOTEBOOK,
              str(NOTEBOOKS / "lesion_study.ipynb"), str(cwd)],
             env=env, cwd=cwd).stdout
  assert "resflax is importable already: nothing to install" in out
  assert out.count("<image/png>") == 3


@pytest.mark.parametrize("experiment, result", [
    ("cifar_resnet.py:smoke", "results.json"),
    ("cifar_shortcuts.py:smoke", "results.md"),
    ("cifar_lesion.py:smoke", "lesion/summary.md"),
])
def test_cli_runs_the_shipped_experiment(installed, tmp_path, experiment,
                                         result):
  python, env, _ = installed
  workdir = tmp_path / "runs" / experiment.split(":")[0]
  # From a directory without experiments/: the wheel's files are used.
  proc = _run([str(python), "-m", "resflax.main", "--config",
               f"experiments/{experiment}", "--workdir", str(workdir)],
              env=env, cwd=tmp_path)
  assert (workdir / result).exists(), proc.stderr[-3000:]
  if result == "results.json":
    assert json.loads((workdir / result).read_text())["steps"] == 20
    # The run's curves say what they are: synthetic data, not a result.
    from PIL import Image  # pylint: disable=g-import-not-at-top
    assert "SYNTHETIC" in Image.open(workdir / "curves.png").text["Title"]


@pytest.mark.parametrize("extra, package", [("cuda12", "jax-cuda12-plugin"),
                                            ("tpu", "libtpu")])
def test_accelerator_extras_resolve(dist, tmp_path, extra, package):
  """pip's resolver finds a jax for the accelerator (a dry run)."""
  report = tmp_path / "report.json"
  _run([sys.executable, "-m", "pip", "install", "--dry-run",
        "--ignore-installed", "-q", "--disable-pip-version-check",
        "--report", str(report), f"resflax[{extra}] @ {dist[0].as_uri()}"])
  names = {i["metadata"]["name"]
           for i in json.loads(report.read_text())["install"]}
  assert {package, "jax", "jaxlib", "resflax"} <= names


def test_one_torch_pin_across_extras():
  import configparser  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  extras = cfg["options.extras_require"]
  pins = {name: re.findall(r"^torch==(\S+)", extras[name], re.M)
          for name in extras}
  assert len({v for found in pins.values() for v in found}) == 1, pins
  # Every extra that installs torch gets it through the one `torch` extra.
  for name in ("bench", "torchvision"):
    assert "resflax[torch]" in extras[name], name
