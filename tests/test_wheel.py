"""resflax as users get it: the built wheel, a fresh venv, no TensorFlow.

The rest of the suite runs against the editable install in the checkout,
which hides what a regular install lacks (a package without __init__.py,
experiment files outside the package). Here the sdist and wheel are built,
the wheel is installed into a new virtual environment without system site
packages (so without TensorFlow or tensorflow-datasets), and both notebooks
run from a directory outside the checkout. The README's commands (a smoke
run, a smoke sweep, the lesion smoke among them) run in the same venv in
tests/test_readme.py. pip reaches the package index for the dependencies.
"""

import json
import subprocess
import sys
import zipfile

from conftest import REPO
from wheel_env import resflax_location, run

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


def test_every_package_and_experiment_is_in_the_wheel(dist):
  wheel, _ = dist
  names = set(zipfile.ZipFile(wheel).namelist())
  packages = sorted(
      str(d.relative_to(REPO))
      for d in (REPO / "resflax").rglob("*")
      if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
  )
  assert "resflax/experiment" in packages and "resflax/experiments" in packages
  missing = [p for p in packages if f"{p}/__init__.py" not in names]
  assert not missing, f"not in the wheel (no __init__.py?): {missing}"
  sources = {str(f.relative_to(REPO)) for f in (REPO / "resflax").rglob("*.py")}
  assert sources <= names, sorted(sources - names)


def test_the_venv_has_no_tensorflow(venv, request):
  if request.config.getoption("dist", "no") == "loadgroup":
    # The venv's tests share one worker (conftest.py), so it is built once.
    assert request.node.nodeid.endswith("@wheel_venv"), request.node.nodeid
  python, env, cwd = venv
  for module in ("tensorflow", "tensorflow_datasets"):
    proc = subprocess.run(
        [str(python), "-c", f"import {module}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    assert proc.returncode != 0, f"{module} is importable in the venv"


def test_quickstart_notebook_installs_the_wheel(dist, venv):
  python, env, cwd = venv
  run([str(python), "-m", "pip", "uninstall", "-q", "-y", "resflax"])
  assert resflax_location(python, env, cwd) is None
  out = run(
      [
          str(python),
          "-c",
          RUN_NOTEBOOK,
          str(NOTEBOOKS / "quickstart.ipynb"),
          str(cwd),
      ],
      env={**env, "RESFLAX_SOURCE": str(dist[0])},
      cwd=cwd,
  ).stdout
  assert f"installed resflax from {dist[0]}" in out
  assert "WARNING: no TPU or GPU found" in out  # the suite runs on a CPU
  assert "test error after 6 steps" in out
  assert "<image/png>" in out
  assert "site-packages" in resflax_location(python, env, cwd)


def test_lesion_notebook_runs(installed):
  python, env, cwd = installed
  out = run(
      [
          str(python),
          "-c",
          RUN_NOTEBOOK,
          str(NOTEBOOKS / "lesion_study.ipynb"),
          str(cwd),
      ],
      env=env,
      cwd=cwd,
  ).stdout
  assert "resflax is importable already: nothing to install" in out
  assert out.count("<image/png>") == 3


def test_accelerator_extras_resolve(dist, tmp_path):
  """pip's resolver finds a jax for each accelerator (dry runs, run at once:
  each mostly waits on the package index)."""
  wanted = {"cuda12": "jax-cuda12-plugin", "tpu": "libtpu"}
  procs = {
      extra: subprocess.Popen(
          [
              sys.executable,
              "-m",
              "pip",
              "install",
              "--dry-run",
              "--ignore-installed",
              "-q",
              "--disable-pip-version-check",
              "--report",
              str(tmp_path / f"{extra}.json"),
              f"resflax[{extra}] @ {dist[0].as_uri()}",
          ],
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for extra in wanted
  }
  for extra, package in wanted.items():
    out, _ = procs[extra].communicate(timeout=900)
    assert procs[extra].returncode == 0, f"resflax[{extra}]: {out[-5000:]}"
    report = json.loads((tmp_path / f"{extra}.json").read_text())
    names = {i["metadata"]["name"] for i in report["install"]}
    assert {package, "jax", "jaxlib", "resflax"} <= names, (extra, names)


def test_one_torch_pin_across_extras():
  import configparser  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top

  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  extras = cfg["options.extras_require"]
  pins = {
      name: re.findall(r"^torch==(\S+)", extras[name], re.M) for name in extras
  }
  assert len({v for found in pins.values() for v in found}) == 1, pins
  # Every extra that installs torch gets it through the one `torch` extra.
  for name in ("bench", "torchvision"):
    assert "resflax[torch]" in extras[name], name
