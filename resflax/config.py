"""The base experiment config: every key a user, sweep or script may set.

Experiment files in ``experiments/`` start from ``base_config()`` and change
what their recipe needs. Keys are stable; README lists them.
"""

import os

import ml_collections

from resflax.models import DEFAULTS as MODEL_DEFAULTS

# The experiment files shipped in the package (the checkout's experiments/).
EXPERIMENTS_DIR = os.path.join(os.path.dirname(__file__), "experiments")


def base_config() -> ml_collections.ConfigDict:
  """CIFAR-10 ResNet-20 with the recipe of He et al. 2016 (both papers)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seeds = 1  # runs per sweep case (the papers report the median of 5)
  c.distributed = False  # call jax.distributed.initialize() (multi-host)

  model = dict(MODEL_DEFAULTS)
  model["projection"] = ""  # the network's default (A for CIFAR)
  model["block"] = ""  # the network's (or the ImageNet depth's) default
  model["widths"] = ()
  c.model = ml_collections.ConfigDict(model)
  # Tuples are kept as tuples but may be set to any length.
  c.model.widths = ml_collections.FieldReference((), field_type=tuple)

  c.data = ml_collections.ConfigDict(
      dict(
          # cifar10 | cifar100 | synthetic | folder | imagenet2012
          name="cifar10",
          path="",  # image-folder tree or .tar.gz of one; overrides tfds
          tfds_data_dir="",  # tensorflow-datasets data_dir
          download_dir="",  # CIFAR archives; "" = $RESFLAX_CACHE/downloads
          validation_split=0,  # hold out this many training images for eval
          # pixel_mean (He et al.) | channel_standardize
          normalization="pixel_mean",
          image_size=32,
          num_classes=10,  # synthetic data only; otherwise from the dataset
          synthetic_train_size=1024,
          synthetic_test_size=256,
          max_train_images=0,  # 0 = all; shrink for smoke runs
          max_test_images=0,
          augment=True,  # pad 4, random crop, random flip (on device)
      )
  )

  c.train = ml_collections.ConfigDict(
      dict(
          batch_size=128,
          steps=64_000,
          learning_rate=0.1,
          lr_boundaries=(32_000, 48_000),  # steps; lr *= lr_decay at each
          lr_decay=0.1,
          warmup_steps=0,  # steps at warmup_learning_rate first
          warmup_learning_rate=0.01,
          # >0: warm up until the training error over the last
          # warmup_window mini-batches is below this (He et al.: 0.8). Ten
          # batches of 128 (1280 images) put the standard error of that
          # running error near 1 point where one batch's is 3.5: a single
          # batch passes 80% at a true error of 85% 6% of the time.
          warmup_until_error=0.0,
          warmup_window=10,
          # scale boundaries and warm-up by steps / schedule_steps
          scale_schedule=False,
          schedule_steps=64_000,
          weight_decay=1e-4,
          momentum=0.9,
          nesterov=False,
          bn_sync=True,  # BN statistics over the global batch (False: device)
          eval_batch_size=500,
          eval_every=4_000,  # steps; 0 = only at the end
          log_every=200,  # steps between progress lines / TensorBoard scalars
          checkpoint_every=4_000,  # steps; 0 = only at the end (and on SIGTERM)
          max_checkpoints=3,
          gradient_modules=0,  # >0: Veit et al. effective-path training
          on_nonfinite="stop",  # stop | skip
          allow_config_change=False,  # resume a workdir whose config differs
          parallel_runs=1,  # runs vmapped in one program (seeds, run_overrides)
          # Persistent JAX compilation cache: "auto" = $RESFLAX_CACHE/jax
          # (default ~/.cache/resflax/jax) unless JAX already has one; a path;
          # or "" to switch it off.
          compilation_cache="auto",
          # True: XLA's backend optimisation level 0 (no LLVM optimisation): a
          # program compiles about twice as fast and runs slower. For smoke
          # runs, whose time is compilation.
          fast_compile=False,
      )
  )
  c.train.run_overrides = ml_collections.FieldReference((), field_type=tuple)
  return c


def resolve_experiment(path: str) -> str:
  """The experiment file that ``path`` names.

  ``path`` itself when it exists. Otherwise a path of the form
  ``experiments/NAME.py`` names the file shipped with resflax (so the
  README's commands work after ``pip install resflax``, outside a checkout)
  when resflax has one of that name; any other path is returned unchanged.

  Args:
    path: an experiment file's path, without the ``:arg`` suffix.

  Returns:
    The path to load.
  """
  if os.path.exists(path):
    return path
  parent, name = os.path.split(os.path.normpath(path))
  shipped = os.path.join(EXPERIMENTS_DIR, name)
  if (
      parent == "experiments"
      and name.endswith(".py")
      and os.path.isfile(shipped)
  ):
    return shipped
  return path


def load_experiment(path: str, arg=None) -> ml_collections.ConfigDict:
  """Loads ``get_config(arg)`` from an experiment file, as ``--config`` does.

  Args:
    path: e.g. ``"experiments/cifar_resnet.py"``; ``"file.py:arg"`` also works.
    arg: the experiment's argument (``"110"``, ``"smoke"``, a case name).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  if arg is None and ":" in os.path.basename(path):
    path, arg = path.rsplit(":", 1)
  path = resolve_experiment(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"experiment file {path} does not exist")
  spec = importlib.util.spec_from_file_location(
      "resflax_experiment_" + os.path.basename(path)[:-3], path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def memory_fit_hint(
    config: ml_collections.ConfigDict, peak_bytes: int, device_bytes: int
) -> str | None:
  """One line naming the setting that makes the training step fit, or None.

  For the check between compiling the step and running it
  (``resflax.training.memory_fit``, on GPUs and TPUs): ``peak_bytes``
  from the compiled step's ``memory_analysis()`` (arguments + outputs -
  aliased + temporaries, per device), ``device_bytes`` from the device's
  ``memory_stats()['bytes_limit']``; a step that does not fit then fails
  with this line instead of an out-of-memory error in its first step.

  Args:
    config: the run's config.
    peak_bytes: the step's estimated peak bytes per device.
    device_bytes: the memory of one device.

  Returns:
    None when the step fits; else the message.
  """
  if peak_bytes <= device_bytes:
    return None
  gib = 2.0**30
  t = config.train
  need = (
      f"the training step needs about {peak_bytes / gib:.1f} GiB per "
      f"device (XLA's memory analysis), the device has "
      f"{device_bytes / gib:.1f} GiB: "
  )
  fixes = [f"lower config.train.batch_size={t.batch_size}"]
  if t.get("parallel_runs", 1) > 1:
    fixes.append(f"lower config.train.parallel_runs={t.parallel_runs}")
  if not config.model.remat:
    # Remat keeps each unit's input only: 1/6 of the temporaries of
    # ResNet-1001 (benchmarks/RESULTS.md).
    return need + f"set --config.model.remat=True (or {' or '.join(fixes)})"
  return need + " or ".join(fixes) + " or train on more devices"
