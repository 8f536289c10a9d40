"""`import resflax` gives the names a researcher uses, each the real one."""

import subprocess
import sys

import pytest

import resflax


@pytest.mark.parametrize("name", resflax.__all__)
def test_top_level_name_is_the_owning_modules(name):
  import importlib  # pylint: disable=g-import-not-at-top

  owner = importlib.import_module(resflax._EXPORTS[name])  # pylint: disable=protected-access
  assert getattr(resflax, name) is getattr(owner, name)


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(AttributeError, match="create_model, delete_modules"):
    resflax.no_such_name  # pylint: disable=pointless-statement


def test_import_resflax_imports_no_jax():
  out = subprocess.run(
      [
          sys.executable,
          "-c",
          "import sys, resflax; print('jax' in sys.modules)",
      ],
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  assert out.strip() == "False"


def test_old_train_module_warns_and_still_trains_the_same_function():
  from resflax import train, training

  with pytest.warns(DeprecationWarning, match="resflax.train_and_evaluate"):
    old = train.train_and_evaluate
  assert old is training.train_and_evaluate
