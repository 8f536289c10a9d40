"""from_torchvision: torchvision's own ResNets are the reference.

Needs the `torchvision` extra (`pip install -e ".[torchvision]"`); skips with
the reason where torch or torchvision is absent.
"""

import re

import jax
import numpy as np
import pytest

_EXTRA = "pip install -e '.[torchvision]'"
torch = pytest.importorskip("torch", reason=f"needs torch: {_EXTRA}")
tv_models = pytest.importorskip(
    "torchvision.models", reason=f"needs torchvision: {_EXTRA}"
)

from resflax import models  # noqa: E402  (after the skips)


def _randomized(net, seed):
  """The net in eval mode with random BN affine parameters and statistics.

  At initialisation BN is the identity in eval mode (mean 0, var 1, weight 1,
  bias 0), which would hide a swapped or transposed BN vector.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
    net.fc.bias.copy_(torch.randn(net.fc.out_features, generator=g))
  return net.eval()


def _logits_agree(net, depth, size):
  model, variables = models.from_torchvision(net.state_dict(), depth)
  x = np.random.RandomState(depth).randn(2, 3, size, size).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  # One compiled program: faster than running the network op by op.
  got = np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))
  assert got.shape == want.shape
  scale = np.abs(want).max()
  assert scale > 1.0  # a degenerate (all-zero) comparison would prove nothing
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


def test_resnet18_logits_equal_torchvision():
  torch.manual_seed(0)
  _logits_agree(_randomized(tv_models.resnet18(num_classes=7), 1), 18, 64)


def test_resnet50_logits_equal_torchvision():
  torch.manual_seed(0)
  _logits_agree(_randomized(tv_models.resnet50(), 2), 50, 64)


@pytest.mark.parametrize("depth", [34, 101, 152])
def test_deeper_layouts_convert_exactly(depth):
  # Every key consumed, every shape fitted (the conversion is strict), and
  # the stacked units hold torchvision's blocks 1..n-1 in order.
  torch.manual_seed(0)
  net = getattr(tv_models, f"resnet{depth}")()
  state = net.state_dict()
  model, variables = models.from_torchvision(state, depth)
  assert model.config.stride_on == "3x3" and model.config.projection == "B"
  blocks = {34: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
  assert [st.units for st in model.stages] == list(blocks)
  last = blocks[2] - 1
  units = variables["params"]["stage2"]["units"]
  np.testing.assert_array_equal(
      units["conv0"]["kernel"][last - 1],
      state[f"layer3.{last}.conv1.weight"].numpy().transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      variables["batch_stats"]["stage3"]["unit0"]["shortcut"]["proj_bn"]["var"],
      state["layer4.0.downsample.1.running_var"].numpy(),
  )


@pytest.fixture(scope="module")
def resnet18_numpy():
  torch.manual_seed(0)
  net = _randomized(tv_models.resnet18(), 3)
  return {k: v.numpy() for k, v in net.state_dict().items()}


def test_numpy_state_dict_and_prefix(resnet18_numpy):
  state = resnet18_numpy
  _, v = models.from_torchvision(state, 18)
  np.testing.assert_array_equal(
      v["params"]["head"]["fc"]["kernel"], state["fc.weight"].T
  )
  np.testing.assert_array_equal(
      v["params"]["stage1"]["units"]["bn_post1"]["scale"][0],
      state["layer2.1.bn2.weight"],
  )
  np.testing.assert_array_equal(
      v["batch_stats"]["stem"]["bn"]["mean"], state["bn1.running_mean"]
  )
  # DataParallel's 'module.' prefix, and checkpoints without the counters.
  wrapped = {
      f"module.{k}": a
      for k, a in state.items()
      if not k.endswith("num_batches_tracked")
  }
  _, w = models.from_torchvision(wrapped, 18)
  assert jax.tree.structure(v) == jax.tree.structure(w)
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(w)):
    np.testing.assert_array_equal(a, b)


def test_errors_name_the_key(resnet18_numpy):
  state = dict(resnet18_numpy)
  gone = "layer3.1.bn2.running_var"
  missing = {k: a for k, a in state.items() if k != gone}
  with pytest.raises(ValueError, match=rf"lacks key '{re.escape(gone)}'"):
    models.from_torchvision(missing, 18)
  extra = {**state, "layer1.0.downsample.0.weight": np.zeros((64, 64, 1, 1))}
  with pytest.raises(
      ValueError, match=r"unexpected key 'layer1\.0\.downsample\.0"
  ):
    models.from_torchvision(extra, 18)
  bad = {**state, "layer2.0.conv1.weight": np.zeros((128, 64, 1, 1))}
  with pytest.raises(
      ValueError,
      match=r"'layer2\.0\.conv1\.weight'.*"
      r"\(128, 64, 1, 1\).*\(128, 64, 3, 3\)",
  ):
    models.from_torchvision(bad, 18)
  # A ResNet-18 checkpoint read as a ResNet-50 lacks the third convs.
  with pytest.raises(
      ValueError, match=r"lacks key 'layer1\.0\.(bn|conv)3.*ResNet-50"
  ):
    models.from_torchvision(state, 50)
  with pytest.raises(ValueError, match="18, 34, 50"):
    models.from_torchvision(state, 20)
  with pytest.raises(ValueError, match=r"\['projection'\].*allowed: dtype"):
    models.from_torchvision(state, 18, projection="C")
