"""The lesion study on imported networks (resflax.experiment.lesion_import):
config.lesion.torch_cifar / torchvision, the :akamaster and :imagenet cases.

The checkpoints here are random state dicts in the importers' layouts,
written as .npz: no torch is needed.
"""

import jax
import numpy as np
import pytest
from helpers import lesion_config

from resflax import data, models
from resflax.errors import ConfigError
from resflax.experiment import lesion_import, lesion_study
from resflax.models import torchvision as tv_import
from resflax.models.torch_cifar import TORCH_CIFAR_ARCH


def random_state_dict(model, head, image_size=32, seed=0):
  """A torch-named state dict (numpy, torch layouts) fitting ``model``."""
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), np.zeros((1, image_size, image_size, 3))
  )
  leaves, _ = tv_import._plan(shapes, "test", head)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  state = {}
  for path, keys, shape, stacked in leaves:
    one = tv_import._to_torch_layout(shape[1:] if stacked else shape)  # pylint: disable=protected-access
    for key in keys:
      if path[-1] == "kernel":
        fan_in = int(np.prod(one[1:]))
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), one)
      elif path[-1] in ("scale", "var"):
        value = rng.uniform(0.8, 1.2, one)
      else:
        value = 0.05 * rng.normal(size=one)
      state[key] = value.astype(np.float32)
  return state


def _small(config):
  """Study sizes of seconds (the smoke config's data: synthetic)."""
  smoke = lesion_config("smoke")
  config.data = smoke.data
  config.train.eval_batch_size = 64
  c = config.lesion
  c.lesions_per_call = 2
  c.max_k, c.draws_per_k, c.max_swaps, c.swap_draws = 2, 1, 2, 1
  c.path_lengths = (0, 1, 3)
  c.path_samples, c.path_batch, c.path_pool = 2, 8, 32
  c.signal_images = 8
  return config


def test_cases_name_the_shared_files_and_train_nothing():
  config = lesion_config("akamaster56")
  assert config.lesion.torch_cifar.endswith(
      "pretrained/cifar10-resnet-akamaster/resnet56.npz"
  )
  assert config.data.path.endswith("data/cifar10-jpeg.tar.gz")
  assert config.model.depth == 56
  for key, value in TORCH_CIFAR_ARCH.items():
    assert config.model[key] == value, key
  assert config.lesion.vgg_depth == 0 and not config.lesion.train_plain
  assert lesion_import.imported_key(config.lesion) == "torch_cifar"
  imagenet = lesion_config("imagenet")
  assert (imagenet.model.name, imagenet.model.depth) == ("imagenet_resnet", 200)
  assert imagenet.data.image_size == 224
  assert lesion_config("imagenet,smoke").model.depth == 18
  with pytest.raises(ValueError, match="unknown arg 'akamaster32'"):
    lesion_config("akamaster32")


def test_config_errors_name_the_key(tmp_path):
  config = lesion_config("imagenet")
  with pytest.raises(ConfigError, match=r"config.lesion.torchvision is empty"):
    lesion_study.check_config(config)
  config = lesion_config("smoke")
  config.lesion.torch_cifar = str(tmp_path / "net.pkl")
  with pytest.raises(ConfigError, match=r"torch_cifar=.*net.pkl.*\.npz"):
    lesion_study.check_config(config)
  config.lesion.torch_cifar = str(tmp_path / "none.npz")
  with pytest.raises(ConfigError, match=r"torch_cifar=.*none.npz.*not exist"):
    lesion_study.check_config(config)
  config.lesion.torchvision = str(tmp_path / "other.npz")
  with pytest.raises(ConfigError, match=r"one imported network"):
    lesion_study.check_config(config)


def test_wrong_depth_names_key_and_depth(tmp_path):
  model = models.create_model(depth=20, **TORCH_CIFAR_ARCH)
  path = tmp_path / "r20.npz"
  np.savez(path, **random_state_dict(model, "linear"))
  config = _small(lesion_config("akamaster56"))
  config.lesion.torch_cifar = str(path)
  dataset = data.load_dataset(config.data)
  with pytest.raises(ConfigError, match=r"torch_cifar=.*depth=56.*ResNet-20"):
    lesion_import.load_imported(config, dataset)


@pytest.mark.slow
def test_study_on_an_imported_cifar_net(tmp_path):
  model = models.create_model(depth=20, **TORCH_CIFAR_ARCH)
  state = random_state_dict(model, "linear", seed=1)
  np.savez(tmp_path / "r20.npz", **state)
  config = _small(lesion_config("akamaster20"))
  config.lesion.torch_cifar = str(tmp_path / "r20.npz")
  res = lesion_study.run(config, str(tmp_path / "study"))
  for name in lesion_study.OUTPUT_FILES:
    assert (tmp_path / "study" / "lesion" / name).stat().st_size > 0, name
  # Nothing trained, no VGG, no plain twin.
  assert sorted(res["networks"]) == ["resnet"]
  assert not (tmp_path / "study" / "resnet").exists()
  assert "ResNet alone" in " ".join(res["signal"]["notes"])
  assert len(res["single_deletion"]["resnet"]["rows"]) == 9
  # The same variables as the importer's, evaluated with its normalisation.
  dataset = data.load_dataset(config.data)
  net = lesion_import.load_imported(config, dataset)
  _, want = models.from_torch_cifar(state, 20)
  for a, b in zip(jax.tree.leaves(net.variables), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(net.dataset.mean, data.IMAGENET_MEAN)
  np.testing.assert_array_equal(net.dataset.std, data.IMAGENET_STD)


@pytest.mark.slow
def test_imagenet_case_smoke_on_synthetic_data(tmp_path):
  # Veit Fig. 3 right's case, with a random torchvision ResNet-18 as .npz.
  model = models.create_model(
      depth=18, **{**tv_import.TORCHVISION_ARCH, "num_classes": 10}
  )
  np.savez(tmp_path / "r18.npz", **random_state_dict(model, "fc", seed=2))
  config = _small(lesion_config("imagenet,smoke"))
  config.lesion.torchvision = str(tmp_path / "r18.npz")
  res = lesion_study.run(config, str(tmp_path / "study"))
  rows = res["single_deletion"]["resnet"]["rows"]
  assert len(rows) == 8  # ResNet-18: 4 stages x 2 units
  assert [r["downsampling"] for r in rows] == [False, False] + [True, False] * 3
  assert res["networks"]["resnet"].startswith("imagenet_resnet-18")
