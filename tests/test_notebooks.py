"""The Colab notebooks run top to bottom on a CPU, shrunk by an env flag."""

import pathlib
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "lesion_study.ipynb")


def code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def printed(cell):
  return "".join(o.get("text", "") for o in cell.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean_and_installs_only_when_needed(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  code = code_cells(nb)
  assert all(not c.outputs and c.execution_count is None for c in code), (
      "commit notebooks without outputs")
  install = code[0].source
  assert 'find_spec("resflax") is None' in install and "pip" in install
  # One line names the source; the environment variable overrides it.
  assert ('RESFLAX_SOURCE = os.environ.get("RESFLAX_SOURCE", '
          '"git+https://github.com/resflax/resflax")') in install
  # What pip installs is that one value, with no extras: no TensorFlow.
  assert "RESFLAX_SOURCE, jax_req]" in install and "tfds" not in install


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_ready_for_colab(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  # What Colab writes for a TPU runtime (gpuType: V28, V5E1, V6E1, ...).
  assert nb.metadata["accelerator"] == "TPU"
  assert nb.metadata["colab"]["gpuType"].startswith("V")
  assert nb.metadata["kernelspec"]["name"] == "python3"
  first = nb.cells[0]
  assert first.cell_type == "markdown"
  badge = "https://colab.research.google.com/assets/colab-badge.svg"
  assert badge in first.source
  assert (f"(https://colab.research.google.com/github/resflax/resflax/blob/"
          f"main/notebooks/{name})") in first.source
  assert "`resflax/resflax`" in first.source
  code = "\n".join(c.source for c in code_cells(nb))
  assert "USE_DRIVE = False" in code
  assert 'RUNS_DIR = pathlib.Path("/content/drive/MyDrive/resflax")' in code
  # A notebook leaves the user's global state alone.
  for call in ("matplotlib.use(", "rcParams", "jax.config.update(",
               "os.environ[", "os.chdir("):
    assert call not in code, call


def test_quickstart_guards_colab_only_cells():
  nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
  board = next(c.source for c in code_cells(nb) if "%tensorboard" in c.source)
  assert board.startswith('if "google.colab" in sys.modules:')
  assert "%load_ext tensorboard" in board
  settings = next(c.source for c in code_cells(nb) if "STEPS = " in c.source)
  assert "FULL_RECIPE = False" in settings
  assert 'jax.devices()[0].platform == "cpu" and not FULL_RECIPE' in settings


def execute(name, monkeypatch, rerun=()):
  """Runs every cell in a fresh kernel; a failing cell raises.

  Then runs again, in the same kernel, the first code cell whose source
  holds each string of ``rerun``. Returns the notebook (the re-run cells'
  outputs replace their first ones) and the first outputs' printed text of
  the re-run cells.
  """
  monkeypatch.setenv("RESFLAX_NOTEBOOK_SMOKE", "1")
  # The kernel inherits the environment: share the suite's compilation cache
  # (jax reads these variables). Its inline backend draws without a display.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(
      pathlib.Path(tempfile.gettempdir()) / "resflax-test-jax-cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOKS)}})
  first = []
  client.reset_execution_trackers()
  with client.setup_kernel():
    for index, cell in enumerate(nb.cells):
      client.execute_cell(cell, index,
                          execution_count=client.code_cells_executed + 1)
    for marker in rerun:
      index = next(i for i, c in enumerate(nb.cells)
                   if c.cell_type == "code" and marker in c.source)
      first.append(printed(nb.cells[index]))
      client.execute_cell(nb.cells[index], index,
                          execution_count=client.code_cells_executed + 1)
  return nb, first


# tests/test_wheel.py runs both notebooks in the fast suite, installed from
# the wheel; these editable runs add the re-run checks.
@pytest.mark.slow
def test_quickstart_runs(monkeypatch):
  # Running the training cell of a finished run again, then the results and
  # plot cells, gives the same results (results.json is kept).
  nb, first = execute("quickstart.ipynb", monkeypatch, rerun=(
      "train_and_evaluate(", '"results.json"', '"metrics.jsonl"'))
  text = "".join(printed(c) for c in code_cells(nb))
  assert "resflax is importable already: nothing to install" in text
  assert "WARNING: no TPU or GPU found" in text  # the suite runs on a CPU
  assert "TensorBoard event files are in" in text
  results = next(printed(c) for c in code_cells(nb)
                 if '"results.json"' in c.source)
  assert "test error after 6 steps" in results
  assert results == first[1]
  assert any("image/png" in o.get("data", {}) for c in code_cells(nb)
             for o in c.outputs)


@pytest.mark.slow
def test_lesion_study_runs(monkeypatch):
  nb, _ = execute("lesion_study.ipynb", monkeypatch)
  text = "".join(printed(c) for c in code_cells(nb))
  assert "resflax is importable already: nothing to install" in text
  figures = sum("image/png" in o.get("data", {}) for c in code_cells(nb)
                for o in c.outputs)
  assert figures == 3
