"""Test-suite set-up: 4 fake CPU devices and a persistent compilation cache.

Both must be configured before jax initialises its backends.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# Subprocesses (the CLI) cache data and compiled programs here, not in ~.
os.environ.setdefault(
    "RESFLAX_CACHE", os.path.join(tempfile.gettempdir(), "resflax-test-cache")
)

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = pathlib.Path(tempfile.gettempdir()) / "resflax-test-jax-cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# XLA:CPU compiles each partitionable threefry call in seconds; the classic
# scheme compiles a model's initialiser ~4x faster. Only the random streams
# differ, and no test depends on particular random values.
jax.config.update("jax_threefry_partitionable", False)

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
AKAMASTER_DIR = (
    REPO.parent / "shared" / "pretrained" / "cifar10-resnet-akamaster"
)


@pytest.fixture
def cifar_archive():
  """Path of the real CIFAR-10 archive, or skip with the reason."""
  if not CIFAR_ARCHIVE.exists():
    pytest.skip(f"real CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
  return CIFAR_ARCHIVE


@pytest.fixture
def akamaster_dir():
  """Folder of the published PyTorch CIFAR ResNets, or skip with the reason."""
  if not (AKAMASTER_DIR / "resnet20.npz").exists():
    pytest.skip(f"published PyTorch CIFAR ResNets not found in {AKAMASTER_DIR}")
  return AKAMASTER_DIR


# The built wheel in a fresh venv (dist, venv, installed): tests/wheel_env.py.
pytest_plugins = ["wheel_env"]


# tryfirst: xdist reads the groups in its own hook of this name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Under ``-n N --dist loadgroup`` (pytest-xdist), the tests of the wheel's
  venv share one worker, so the venv is built once."""
  for item in items:
    if {"venv", "installed"} & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.xdist_group("wheel_venv"))
