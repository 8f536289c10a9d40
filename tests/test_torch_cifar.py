"""from_torch_cifar: the published PyTorch CIFAR ResNets (akamaster).

Two independent references: a numpy replica of akamaster's forward pass
(float64, NCHW, always runs) and a PyTorch replica of its ``resnet.py``
(runs where torch imports). The PyTorch replica also checks the numpy one,
which then checks the published weights in ``../shared/pretrained``.
"""

import functools
import re

import jax
import numpy as np
import pytest

from resflax import data, models
from resflax.lesion import LesionEvaluator
from resflax.models import torchvision as tv_import
from resflax.models.torch_cifar import channel_orders

_EPS = 1e-5


# ------------------------------------------------------------- numpy replica
def _conv3x3(x, w, stride):
  """torch's conv2d(x, w, stride, padding=1) on NCHW / OIHW float arrays."""
  n, _, h, wd = x.shape
  ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((n, w.shape[0], ho, wo), x.dtype)
  for i in range(3):
    for j in range(3):
      patch = xp[
          :,
          :,
          i : i + stride * (ho - 1) + 1 : stride,
          j : j + stride * (wo - 1) + 1 : stride,
      ]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j], optimize=True)
  return out


def _bn(x, s, name):
  """Eval-mode BatchNorm2d with the state dict's statistics."""
  scale = s[f"{name}.weight"] / np.sqrt(s[f"{name}.running_var"] + _EPS)
  shift = s[f"{name}.bias"] - s[f"{name}.running_mean"] * scale
  return x * scale[:, None, None] + shift[:, None, None]


def _replica_logits(state, images_nchw, deleted=()):
  """akamaster's ResNet forward pass in float64 numpy, written from resnet.py.

  BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
  shortcut option A where the shape changes: x[:, :, ::2, ::2] with planes//4
  zero channels padded before and after.

  Args:
    state: the state dict (numpy arrays).
    images_nchw: normalised images.
    deleted: (layer, block) pairs whose residual branch is removed (Veit et
      al.'s lesion: relu(shortcut(x)) is left).
  """
  s = {k: np.asarray(v, np.float64) for k, v in state.items()}
  relu = lambda a: np.maximum(a, 0.0)
  x = relu(
      _bn(
          _conv3x3(np.asarray(images_nchw, np.float64), s["conv1.weight"], 1),
          s,
          "bn1",
      )
  )
  for layer, stride in ((1, 1), (2, 2), (3, 2)):
    i = 0
    while f"layer{layer}.{i}.conv1.weight" in s:
      p = f"layer{layer}.{i}."
      st = stride if i == 0 else 1
      out = relu(_bn(_conv3x3(x, s[p + "conv1.weight"], st), s, p + "bn1"))
      out = _bn(_conv3x3(out, s[p + "conv2.weight"], 1), s, p + "bn2")
      planes = out.shape[1]
      shortcut = x
      if st != 1 or x.shape[1] != planes:
        q = planes // 4
        shortcut = np.pad(x[:, :, ::2, ::2], ((0, 0), (q, q), (0, 0), (0, 0)))
      x = relu(shortcut if (layer, i) in deleted else out + shortcut)
      i += 1
  x = x.mean(axis=(2, 3))
  return x @ s["linear.weight"].T + s["linear.bias"]


def _random_state(depth, seed, num_classes=10):
  """A random akamaster state dict: He-scaled convs, random BN statistics.

  At initialisation BN is the identity in eval mode, which would hide a
  swapped or mis-permuted BN vector; random statistics do not.
  """
  rng = np.random.RandomState(seed)
  state = {}

  def conv(name, cin, cout):
    std = np.sqrt(2.0 / (9 * cin))
    state[f"{name}.weight"] = (std * rng.randn(cout, cin, 3, 3)).astype(
        np.float32
    )

  def bn(name, c, gain=1.0):
    state[f"{name}.weight"] = (gain * (0.5 + rng.rand(c))).astype(np.float32)
    state[f"{name}.bias"] = (0.2 * rng.randn(c)).astype(np.float32)
    state[f"{name}.running_mean"] = (0.3 * rng.randn(c)).astype(np.float32)
    state[f"{name}.running_var"] = (0.5 + 1.5 * rng.rand(c)).astype(np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", 3, 16)
  bn("bn1", 16)
  cin = 16
  for layer, planes in ((1, 16), (2, 32), (3, 64)):
    for i in range((depth - 2) // 6):
      p = f"layer{layer}.{i}"
      conv(f"{p}.conv1", cin, planes)
      bn(f"{p}.bn1", planes)
      conv(f"{p}.conv2", planes, planes)
      # Small residual branches keep the stream, and the logits, of order 1
      # however deep the network.
      bn(f"{p}.bn2", planes, gain=0.2)
      cin = planes
  state["linear.weight"] = (0.3 * rng.randn(num_classes, 64)).astype(np.float32)
  state["linear.bias"] = (0.1 * rng.randn(num_classes)).astype(np.float32)
  return state


def _images(n, seed):
  """NCHW float32 images in [0, 1], normalised as akamaster's training."""
  x = np.random.RandomState(seed).rand(n, 32, 32, 3).astype(np.float32)
  x = (x - data.IMAGENET_MEAN) / data.IMAGENET_STD
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _resflax_logits(model, variables, images_nchw):
  # One compiled program: faster than running the network op by op.
  return np.asarray(
      jax.jit(model.apply)(variables, images_nchw.transpose(0, 2, 3, 1))
  )


def _assert_logits_close(got, want):
  assert got.shape == want.shape
  scale = np.abs(want).max()
  assert scale > 0.5  # a degenerate (all-zero) comparison would prove nothing
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


# ------------------------------------------------------------ torch replica
def _akamaster_resnet(torch, depth):
  """akamaster's resnet.py (ResNet, BasicBlock, LambdaLayer option A)."""
  nn, F = torch.nn, torch.nn.functional

  class LambdaLayer(nn.Module):

    def __init__(self, lambd):
      super().__init__()
      self.lambd = lambd

    def forward(self, x):
      return self.lambd(x)

  class BasicBlock(nn.Module):

    def __init__(self, in_planes, planes, stride=1):
      super().__init__()
      self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.shortcut = nn.Sequential()
      if stride != 1 or in_planes != planes:
        self.shortcut = LambdaLayer(
            lambda x: F.pad(
                x[:, :, ::2, ::2],
                (0, 0, 0, 0, planes // 4, planes // 4),
                "constant",
                0,
            )
        )

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      out += self.shortcut(x)
      return F.relu(out)

  class ResNet(nn.Module):

    def __init__(self, num_blocks, num_classes=10):
      super().__init__()
      self.in_planes = 16
      self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(16)
      self.layer1 = self._make_layer(16, num_blocks, 1)
      self.layer2 = self._make_layer(32, num_blocks, 2)
      self.layer3 = self._make_layer(64, num_blocks, 2)
      self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
      blocks = []
      for st in [stride] + [1] * (num_blocks - 1):
        blocks.append(BasicBlock(self.in_planes, planes, st))
        self.in_planes = planes
      return nn.Sequential(*blocks)

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.layer3(self.layer2(self.layer1(out)))
      out = F.avg_pool2d(out, out.size()[3])
      return self.linear(out.view(out.size(0), -1))

  return ResNet((depth - 2) // 6)


def _torch():
  return pytest.importorskip(
      "torch", reason="needs torch: pip install -e '.[torch]'"
  )


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("depth", [20, 32])
def test_logits_equal_numpy_replica(depth):
  state = _random_state(depth, seed=depth)
  model, variables = models.from_torch_cifar(state, depth)
  assert model.config.projection == "A" and model.config.unit == "original"
  assert model.config.bn_epsilon == 1e-5
  x = _images(4, seed=depth)
  _assert_logits_close(
      _resflax_logits(model, variables, x), _replica_logits(state, x)
  )


def test_lesions_are_unchanged_by_the_channel_order():
  # Deleting a unit (one that downsamples too) gives the checkpoint's own
  # lesioned network: lesions do not depend on channel indices.
  state = _random_state(20, seed=5)
  model, variables = models.from_torch_cifar(state, 20)
  lesion = jax.tree.map(np.array, variables["lesion"])
  lesion["stage1"]["active"][1] = 0.0  # layer2.1
  lesion["stage2"]["active"][0] = 0.0  # layer3.0, option A shortcut only
  x = _images(3, seed=5)
  got = _resflax_logits(model, {**variables, "lesion": lesion}, x)
  want = _replica_logits(state, x, deleted={(2, 1), (3, 0)})
  _assert_logits_close(got, want)
  intact = _replica_logits(state, x)
  assert np.abs(want - intact).max() > 0.05 * np.abs(intact).max()


def test_channel_orders_place_each_checkpoint_vector():
  orders = channel_orders()
  r = lambda a, b: list(range(a, b))
  assert orders[0].tolist() == r(0, 16)
  assert orders[1].tolist() == r(8, 24) + r(0, 8) + r(24, 32)
  assert orders[2].tolist() == (
      r(24, 40) + r(16, 24) + r(40, 48) + r(0, 16) + r(48, 64)
  )
  state = _random_state(20, seed=7)
  model, variables = models.from_torch_cifar(state, 20)
  p, b = variables["params"], variables["batch_stats"]
  hwio = lambda key: state[key].transpose(2, 3, 1, 0)
  # The stream's writers (second convs, their BN) and readers (first convs,
  # the classifier) are permuted; the units' inner channels are not.
  np.testing.assert_array_equal(
      b["stage2"]["units"]["bn_post1"]["var"][1],
      state["layer3.2.bn2.running_var"][orders[2]],
  )
  np.testing.assert_array_equal(
      p["stage1"]["unit0"]["conv1"]["kernel"],
      hwio("layer2.0.conv2.weight")[..., orders[1]],
  )
  np.testing.assert_array_equal(
      p["stage2"]["unit0"]["conv0"]["kernel"],
      hwio("layer3.0.conv1.weight")[:, :, orders[1], :],
  )
  np.testing.assert_array_equal(
      p["stage1"]["units"]["conv0"]["kernel"][0],
      hwio("layer2.1.conv1.weight")[:, :, orders[1], :],
  )
  np.testing.assert_array_equal(
      p["stage1"]["units"]["bn_post0"]["scale"][0], state["layer2.1.bn1.weight"]
  )
  np.testing.assert_array_equal(
      p["head"]["fc"]["kernel"], state["linear.weight"].T[orders[2]]
  )
  # Without the permutation the same weights compute another function.
  naive = tv_import._load_variables(  # pylint: disable=protected-access
      model, state, "naive", image_size=32, head="linear"
  )
  x = _images(3, seed=7)
  want = _replica_logits(state, x)
  assert (
      np.abs(_resflax_logits(model, naive, x) - want).max()
      > 0.05 * np.abs(want).max()
  )


@pytest.mark.parametrize("depth", [20, 56])
def test_logits_equal_pytorch_replica(depth):
  torch = _torch()
  net = _akamaster_resnet(torch, depth)
  state = _random_state(depth, seed=depth + 1)
  net.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
      strict=True,
  )
  net.eval()
  x = _images(3, seed=depth + 1)
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  # The numpy replica, which checks the published weights, is checked here.
  _assert_logits_close(_replica_logits(state, x), want)
  # Tensors with DataParallel's prefix, as the published .th files hold.
  wrapped = {f"module.{k}": v for k, v in net.state_dict().items()}
  model, variables = models.from_torch_cifar(wrapped, depth)
  _assert_logits_close(_resflax_logits(model, variables, x), want)


def test_errors_name_the_key_or_depth():
  state = _random_state(20, seed=0)
  gone = "layer2.1.bn2.running_var"
  missing = {k: a for k, a in state.items() if k != gone}
  with pytest.raises(
      ValueError,
      match=rf"lacks key '{re.escape(gone)}'.*" r"PyTorch CIFAR ResNet-20",
  ):
    models.from_torch_cifar(missing, 20)
  extra = {**state, "layer1.0.shortcut.0.weight": np.zeros((16, 16, 1, 1))}
  with pytest.raises(
      ValueError, match=r"unexpected key 'layer1\.0\.shortcut\.0\.weight'"
  ):
    models.from_torch_cifar(extra, 20)
  bad = {**state, "layer2.0.conv1.weight": np.zeros((32, 16, 1, 1))}
  with pytest.raises(
      ValueError,
      match=r"'layer2\.0\.conv1\.weight'.*"
      r"\(32, 16, 1, 1\).*\(32, 16, 3, 3\)",
  ):
    models.from_torch_cifar(bad, 20)
  with pytest.raises(ValueError, match=r"depth=21 is invalid.*6n\+2"):
    models.from_torch_cifar(state, 21)
  with pytest.raises(
      ValueError,
      match=r"holds a ResNet-20 \(3 blocks per "
      r"layer\), not the ResNet-32.*pass depth=20",
  ):
    models.from_torch_cifar(state, 32)
  with pytest.raises(ValueError, match=r"\['projection'\].*allowed: dtype"):
    models.from_torch_cifar(state, 20, projection="B")


@pytest.mark.parametrize("depth,count", [(20, 97), (56, 277)])
def test_published_weights_equal_numpy_replica(akamaster_dir, depth, count):
  with np.load(akamaster_dir / f"resnet{depth}.npz") as npz:
    state = dict(npz)
  assert len(state) == count
  model, variables = models.from_torch_cifar(state, depth)
  x = _images(6, seed=depth)
  _assert_logits_close(
      _resflax_logits(model, variables, x), _replica_logits(state, x)
  )


def test_th_checkpoint_converts_like_npz(akamaster_dir):
  torch = _torch()
  # The original file, as its README says to read it.
  checkpoint = torch.load(
      akamaster_dir / "resnet20-12fca82f.th",
      map_location="cpu",
      weights_only=False,
  )
  assert all(k.startswith("module.") for k in checkpoint["state_dict"])
  _, from_th = models.from_torch_cifar(checkpoint, 20)
  with np.load(akamaster_dir / "resnet20.npz") as npz:
    _, from_npz = models.from_torch_cifar(npz, 20)
  assert jax.tree.structure(from_th) == jax.tree.structure(from_npz)
  for a, b in zip(jax.tree.leaves(from_th), jax.tree.leaves(from_npz)):
    np.testing.assert_array_equal(a, b)


@functools.cache
def _jpeg_test_split(path):
  # Few training images: only the test split is scored.
  return data.load_dataset(
      {"name": "cifar10", "path": path, "max_train_images": 10}
  )


# The README's PyTorch accuracies on this JPEG test split.
_PUBLISHED_ACCURACY = {20: 81.0, 56: 83.2}


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("depth", [20, 56])
def test_accuracy_on_jpeg_test_split(akamaster_dir, cifar_archive, depth):
  ds = _jpeg_test_split(str(cifar_archive))
  assert ds.num_test == 10000
  with np.load(akamaster_dir / f"resnet{depth}.npz") as npz:
    model, variables = models.from_torch_cifar(npz, depth)
  # The evaluator normalises as torch's ToTensor + Normalize: x / 255, then
  # the constants akamaster trained with.
  evaluator = LesionEvaluator(
      model,
      ds.test_images,
      ds.test_labels,
      data.IMAGENET_MEAN,
      data.IMAGENET_STD,
      batch_size=500,
  )
  accuracy = 100.0 * (1.0 - float(evaluator(variables)["error"][0]))
  assert abs(accuracy - _PUBLISHED_ACCURACY[depth]) <= 0.15, accuracy
