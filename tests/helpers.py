"""What several test files share: the repository root, tiny configs (one
ResNet-8 for runs that checkpoint and resume, one single-conv net on 16x16
images where only the engine's bookkeeping matters), data configs, random
network variables and sweep fakes."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resflax import data, fileio, training
from resflax.config import base_config, load_experiment
from resflax.errors import TrainingError
from resflax.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train_kw):
  c = base_config()
  c.model.depth = 8
  c.model.widths = (4, 8, 8)
  c.data.name = "synthetic"
  c.data.synthetic_train_size = 128
  c.data.synthetic_test_size = 64
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.steps = 8
  c.train.lr_boundaries = (6,)
  c.train.warmup_steps = 2
  c.train.log_every = 4
  c.train.eval_every = 4
  c.train.checkpoint_every = 4
  for k, v in train_kw.items():
    setattr(c.train, k, v)
  return c


def final_state(config, workdir):
  """The state saved at the end of a run, restored into its own structure."""
  return jax.device_get(training.restore_state(config, workdir))


def engine_config(runs=1, **train_kw):
  """``tiny_config`` shrunk to compile quickly: a single-conv net of depth 5
  on 16x16 images, 6 steps with a report and a checkpoint every 2."""
  c = tiny_config(
      **{
          "steps": 6,
          "lr_boundaries": (4,),
          "warmup_steps": 1,
          "log_every": 2,
          "eval_every": 2,
          "checkpoint_every": 2,
          "parallel_runs": runs,
          **train_kw,
      }
  )
  c.model.depth = 5
  c.model.block = "single"
  c.data.image_size = 16
  c.data.synthetic_train_size = 64
  c.data.synthetic_test_size = 32
  return c


def data_config(**overrides):
  config = ml_collections.ConfigDict(
      dict(
          name="synthetic",
          path="",
          tfds_data_dir="",
          validation_split=0,
          normalization="pixel_mean",
          synthetic_train_size=64,
          synthetic_test_size=32,
          image_size=32,
          num_classes=10,
          max_train_images=0,
          max_test_images=0,
      )
  )
  config.update(overrides)
  return config


def assert_data_error(config, *fragments):
  with pytest.raises(data.DataError) as info:
    data.load_dataset(config)
  for fragment in fragments:
    assert str(fragment) in str(info.value), (fragment, str(info.value))
  return info.value


def random_variables(
    model, seed=0, image_shape=(32, 32, 3), bn_bias=0.1, bn_scale=(1.0, 1.2)
):
  """Variables with He-scaled random kernels and non-trivial BN, built on
  the host from the abstract shapes (no compilation of the initialiser)."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((2,) + tuple(image_shape))
  )
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = getattr(path[-1], "key", "")
    if leaf == "kernel":
      if len(s.shape) >= 4:  # conv (possibly stacked): HWIO
        std = np.sqrt(2.0 / (s.shape[-1] * s.shape[-3] * s.shape[-4]))
      else:  # dense
        std = 1.0 / np.sqrt(s.shape[-2])
      return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
    if leaf in ("scale", "var"):
      lo, hi = bn_scale if leaf == "scale" else (1.0, 1.2)
      return jnp.asarray(rng.uniform(lo, hi, s.shape), s.dtype)
    if leaf == "bias":
      return jnp.asarray(bn_bias + 0.05 * rng.normal(size=s.shape), s.dtype)
    if leaf == "mean":
      return jnp.asarray(0.05 * rng.normal(size=s.shape), s.dtype)
    raise ValueError(f"unexpected variable {path}")

  out = {
      c: jax.tree_util.tree_map_with_path(fill, shapes[c])
      for c in ("params", "batch_stats")
  }
  out["lesion"] = model.default_lesion()
  return out


SHORTCUTS = os.path.join(REPO, "experiments", "cifar_shortcuts.py")


def small_sweep(**train_kw):
  """Three Table 1 cases, shrunk, 2 seeds."""
  config = load_experiment(
      SHORTCUTS, "original,exclusive_gate_b-6,dropout," "smoke"
  )
  config.seeds = 2  # smoke runs one; two exercise the medians and failures
  for k, v in train_kw.items():
    setattr(config.train, k, v)
  return config


class FakeTrainer:
  """Stands in for train.train_and_evaluate: records calls, writes results.

  ``fail``: (case, seed) pairs raising TrainingError; ``interrupt_at``: the
  call number that returns as if stopped by SIGTERM.
  """

  def __init__(self, fail=(), interrupt_at=None):
    self.calls = []
    self.brief = []  # train_and_evaluate's brief argument, per call
    self.fail = set(fail)
    self.interrupt_at = interrupt_at

  def __call__(self, config, workdir, *, brief=False):
    self.calls.append((workdir, config))
    self.brief.append(brief)
    if len(self.calls) == self.interrupt_at:
      return {"interrupted": True, "step": 1}
    case = os.path.basename(os.path.dirname(workdir))
    if config.train.parallel_runs > 1:  # one program for every seed
      case = os.path.basename(workdir)
      for k in range(config.train.parallel_runs):
        self._write(
            os.path.join(workdir, f"seed{config.seed + k}"),
            case,
            config.seed + k,
        )
      return {"parallel_runs": config.train.parallel_runs}
    if (case, config.seed) in self.fail:
      message = "non-finite loss at step 3"
      workdir_lib.write_failure(workdir, message, config.seed, 3)
      raise TrainingError(message)
    return self._write(workdir, case, config.seed)

  @staticmethod
  def _write(path, case, seed):
    result = {"test_error": 0.1 + 0.01 * seed + 0.001 * len(case)}
    fileio.write_json(os.path.join(path, "results.json"), result)
    return result


def lesion_config(arg="smoke"):
  spec = importlib.util.spec_from_file_location(
      "cifar_lesion_for_tests",
      os.path.join(REPO, "experiments", "cifar_lesion.py"),
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def summary_inputs():
  """The smallest results a summary can be written from."""
  return {
      "date": "2016-05-20",
      "networks": {"resnet": "cifar_resnet-20"},
      "eval_images": 8,
      "compilations": 1,
      "chance_error": 0.9,
      "single_deletion": {
          "resnet": {
              "stats": {
                  "intact_error": 0.1,
                  "mean_error": 0.2,
                  "max_error": 0.3,
              }
          }
      },
      "k_deletion": {"per_k": []},
      "reorder": {"rows": [], "skipped": "-"},
      "paths": {
          "num_modules": 9,
          "paths_95": {"low": 2, "high": 7},
          "decay_per_module": None,
          "samples": 2,
          "batch": 8,
          "pool": 64,
          "effective": {
              "low": 1,
              "high": 3,
              "gradient_share": 0.9,
              "path_share": 0.2,
          },
      },
      "seconds": {},
  }
