"""The Colab notebooks run top to bottom on a CPU, shrunk by an env flag."""

import pathlib
import tempfile

import nbformat
from nbclient import NotebookClient
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "lesion_study.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean_and_installs_only_when_needed(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), (
      "commit notebooks without outputs")
  install = code[0].source
  assert 'find_spec("resflax") is None' in install and "pip" in install


def execute(name, monkeypatch):
  """Runs every cell in a fresh kernel; a failing cell raises."""
  monkeypatch.setenv("RESFLAX_NOTEBOOK_SMOKE", "1")
  # The kernel inherits the environment: share the suite's compilation cache
  # (jax reads these variables). Its inline backend draws without a display.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(
      pathlib.Path(tempfile.gettempdir()) / "resflax-test-jax-cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()
  return nb


def test_quickstart_runs(monkeypatch):
  nb = execute("quickstart.ipynb", monkeypatch)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert "test error after 6 steps" in text
  assert any("image/png" in o.get("data", {}) for c in nb.cells
             if c.cell_type == "code" for o in c.outputs)


def test_lesion_study_runs(monkeypatch):
  nb = execute("lesion_study.ipynb", monkeypatch)
  figures = sum("image/png" in o.get("data", {}) for c in nb.cells
                if c.cell_type == "code" for o in c.outputs)
  assert figures == 3
