"""resflax: residual networks in JAX/Flax (He et al. 2016, Veit et al. 2016).

The names a researcher reaches for first::

  import resflax
  config = resflax.load_experiment("experiments/cifar_resnet.py", "20")
  resflax.train_and_evaluate(config, "runs/r20")
  model = resflax.create_model("resnet110")
  v2 = resflax.delete_modules(variables, 10, key=key)

Everything else stays in its package (``resflax.models``, ``resflax.data``,
``resflax.training``, ``resflax.lesion``, ``resflax.experiment``). The names
are imported on first use, so ``import resflax`` (and the command line's
``--help``) stays fast.
"""

import importlib

# name -> the module that owns it.
_EXPORTS = {
    "create_model": "resflax.models",
    "from_torchvision": "resflax.models",
    "from_torch_cifar": "resflax.models",
    "train_and_evaluate": "resflax.training",
    "load_experiment": "resflax.config",
    "delete_modules": "resflax.lesion",
    "reorder_modules": "resflax.lesion",
    "LesionEvaluator": "resflax.lesion",
    "load_dataset": "resflax.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  # Subpackages not imported yet (``resflax.models`` after ``import resflax``).
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
  raise AttributeError(
      f"module 'resflax' has no attribute {name!r}; "
      f"its top-level names are {', '.join(__all__)}"
  )


def __dir__():
  return sorted(set(globals()) | set(__all__))
