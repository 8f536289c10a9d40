"""The persistent compilation cache: a run's second start skips compiling.

Every seed of a sweep, every resumed run and every rerun of a notebook
compiles the same programs; with JAX's persistent cache they are read from
disk instead. ``config.train.compilation_cache``:

- ``"auto"`` (default): ``$RESFLAX_CACHE/jax`` (``~/.cache/resflax/jax``
  when ``RESFLAX_CACHE`` is unset), unless the process already set JAX's
  ``jax_compilation_cache_dir`` itself, which is then left as it is;
- a directory: that one;
- ``""``: off.

``config.train.fast_compile`` sets the XLA options of a run's programs
(``compiler_options``): a smoke run trades run time for compile time.
"""

import os
from typing import Any

import jax
from absl import logging

from resflax.errors import ConfigError


def cache_dir(setting: str) -> str:
  """The directory ``setting`` names ('' when the cache is off)."""
  setting = str(setting).strip()
  if setting != "auto":
    return os.path.expanduser(setting)
  root = os.environ.get("RESFLAX_CACHE") or "~/.cache/resflax"
  return os.path.join(os.path.expanduser(root), "jax")


def enable(setting: str) -> str:
  """Points JAX's persistent compilation cache at ``setting``'s directory.

  Returns:
    The directory in use ('' when off).

  Raises:
    ConfigError: the directory cannot be created.
  """
  current = jax.config.jax_compilation_cache_dir
  if str(setting).strip() == "auto" and current:
    return current
  path = cache_dir(setting)
  if not path:
    return ""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(
        f"config.train.compilation_cache={setting!r}: cannot "
        f"create {path}: {e.strerror}; set another directory "
        "or '' to switch the cache off"
    ) from None
  if path != current:
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every program: a smoke run's are small but still take seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("compilation cache: %s", path)
  return path


def compiler_options(train_cfg) -> dict[str, Any] | None:
  """The XLA options ``jax.jit`` gets for a run's programs (None: defaults).

  ``train.fast_compile`` turns the backend's optimisation off: on a CPU,
  LLVM's passes are most of a small network's compile time.
  """
  if train_cfg.get("fast_compile", False):
    return {"xla_backend_optimization_level": 0}
  return None
