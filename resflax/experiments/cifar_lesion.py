"""Veit et al. 2016: lesion and path analysis of a CIFAR-10 ResNet-110.

Trains ResNet-110 (into DIR/resnet), a plain VGG-style net (DIR/vgg) and the
ResNet's plain twin (DIR/plain), then runs every study of the paper on them
and writes JSON/CSV/PNG files and a summary into DIR/lesion:
  python -m resflax.main --config experiments/cifar_lesion.py --workdir runs/lesion110
Take an existing run instead of training one (any resflax run directory):
  python -m resflax.main --config experiments/cifar_lesion.py --workdir runs/lesion110 \
      --config.lesion.checkpoint=runs/r110 --config.lesion.vgg_checkpoint=runs/vgg14
Stochastic depth (Veit Fig. 8): train with linearly decaying survival down to
p_L = 0.5 (``:sd``), or point --config.lesion.checkpoint at such a run:
  python -m resflax.main --config experiments/cifar_lesion.py:sd --workdir runs/lesion110sd
A tiny version that runs on a CPU with synthetic data:
  python -m resflax.main --config experiments/cifar_lesion.py:smoke --workdir /tmp/lesion_smoke
A really trained network, imported (nothing is trained, no VGG and no plain
twin unless given by checkpoint): akamaster's published PyTorch ResNet-56
(``:akamaster56``, or ``:akamaster20``) from ../shared/pretrained on the
JPEG export of CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz), both paths
overridable (--config.lesion.torch_cifar, --config.data.path):
  python -m resflax.main --config experiments/cifar_lesion.py:akamaster56 --workdir runs/lesion56
Veit Fig. 3 right, an ImageNet ResNet (``:imagenet``, ResNet-200 unless a
depth is given) imported from a torchvision-layout checkpoint, on an image
folder of 224x224 centre crops (<root>/{train,test}/<class>/*.jpg; test
for the lesions, e.g. the 50,000 validation images, train for the gradient
per path length: a few thousand images are enough, the folder is loaded
into memory whole):
  python -m resflax.main --config experiments/cifar_lesion.py:imagenet,200 --workdir runs/lesion_in200 \
      --config.lesion.torchvision=resnet200.pth --config.data.path=/data/imagenet224

Names (``:arg``, comma-separated, any letter case): a depth of the ResNet
(default 110; ``110``, ``resnet110`` and ``resnet-110`` are the same), ``sd``
(stochastic depth), ``smoke`` (tiny, synthetic data), ``akamaster20`` /
``akamaster56`` (imported CIFAR ResNets), ``imagenet`` (an imported ImageNet
ResNet; with ``smoke``: ResNet-18 on synthetic 32x32 images, the checkpoint
still to be given). Every argument runs the whole study. Studies
(``config.lesion``):
  1. each single module deleted (Fig. 3), and each layer of the VGG;
  2. k random modules deleted, k = 1..max_k, draws_per_k draws (Fig. 5a);
  3. s random pairs swapped, s = 1..max_swaps, swap_draws draws, error
     against Kendall's tau (Fig. 5b);
  4. path lengths, gradient per path length, total gradient per length and
     the effective paths (Fig. 6);
  5. (signal=True) response std per layer (He et al. Fig. 7), gradient norm
     at every module input, the lambda^(L-l) factor of scaled shortcuts and
     gate means, for the ResNet and its plain twin (the VGG when there is
     no twin).
"""

import importlib.util
import os
import re

import ml_collections

from resflax.experiment import cases
from resflax.models.torch_cifar import TORCH_CIFAR_ARCH
from resflax.models.torchvision import TORCHVISION_ARCH

_HERE = os.path.dirname(os.path.abspath(__file__))
# The project's shared files, beside the repository (../shared).
_SHARED = os.path.join(os.path.dirname(_HERE), "..", "shared")
AKAMASTER_DIR = os.path.normpath(
    os.path.join(_SHARED, "pretrained", "cifar10-resnet-akamaster")
)
CIFAR_JPEG = os.path.normpath(
    os.path.join(_SHARED, "data", "cifar10-jpeg.tar.gz")
)
AKAMASTER_DEPTHS = (20, 56)  # the published files in AKAMASTER_DIR


def _cifar_resnet():
  # experiments/ is not a package: load the sibling config file by path.
  spec = importlib.util.spec_from_file_location(
      "resflax_experiments_cifar_resnet", os.path.join(_HERE, "cifar_resnet.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def lesion_defaults() -> ml_collections.ConfigDict:
  """The ``config.lesion`` section with the full-size defaults."""
  return ml_collections.ConfigDict(
      dict(
          checkpoint="",  # run dir of a trained ResNet; "" trains DIR/resnet
          torch_cifar="",  # akamaster CIFAR ResNet (.npz/.th): imported
          torchvision="",  # torchvision ResNet (.npz/.pth): imported
          vgg_checkpoint="",  # run dir of a trained VGG; "" trains DIR/vgg
          vgg_depth=14,  # 3n+2 layers (4 conv layers per stage); 0 = no VGG
          vgg_widths=(64, 128, 256),
          plain_checkpoint="",  # run dir of the ResNet's plain twin
          train_plain=True,  # train the plain twin (DIR/plain) for signal stats
          eval_images=0,  # test images evaluated (0 = all)
          eval_batch_size=0,  # 0 = config.train.eval_batch_size
          lesions_per_call=4,  # lesions evaluated together (vmap)
          max_k=20,  # Fig. 5a: k = 1..max_k modules deleted
          draws_per_k=10,
          max_swaps=20,  # Fig. 5b: s = 1..max_swaps pairs swapped
          swap_draws=10,
          path_lengths=(),  # Fig. 6b: measured lengths; () = every k in 0..n
          path_samples=1000,  # samples per length (Veit: 1000)
          path_batch=128,  # training images per sample
          path_pool=5000,  # class-balanced random training images the batches are drawn from
          path_chunk=1,  # samples vmapped together
          effective_share=0.9,  # share of the total gradient in the range
          signal=True,  # section 5 (He Fig. 7, gradients, lambda, gates)
          signal_images=500,  # test images for the signal statistics
          seed=0,  # draws of lesions, swaps and path samples
      )
  )


def get_config(arg=None):
  """``arg``: the names of the module docstring; none: ResNet-110."""
  tokens = [
      cases.canonical_name(t) for t in str(arg or "").split(",") if t.strip()
  ]
  depth, sd, smoke, akamaster, imagenet = None, False, False, None, False
  for t in tokens:
    given = re.fullmatch(r"(?:resnet)?(\d+)", t)
    published = re.fullmatch(r"akamaster(\d+)", t)
    if t == "sd":
      sd = True
    elif t == cases.SMOKE:
      smoke = True
    elif t == "imagenet":
      imagenet = True
    elif given:
      depth = given.group(1)
    elif published and int(published.group(1)) in AKAMASTER_DEPTHS:
      akamaster = int(published.group(1))
    else:
      digits = re.sub(r"\D", "", t)
      examples = ["110", "resnet110", "sd", cases.SMOKE, "imagenet"] + [
          f"akamaster{d}" for d in AKAMASTER_DEPTHS
      ]
      if digits:
        examples.append(f"resnet{digits}")
      raise cases.unknown_name_error(
          "cifar_lesion.py",
          t,
          examples,
          "use a depth (110, resnet110 or resnet-110), 'sd', 'smoke', "
          "'imagenet' or a published network (akamaster20, akamaster56), "
          "comma-separated",
          what="arg",
      )
  if akamaster and imagenet:
    raise ValueError(
        "cifar_lesion.py: arg names both akamaster and imagenet; give one"
    )
  if imagenet:
    return _imagenet_config(int(depth or (18 if smoke else 200)), smoke)
  if akamaster:
    return _akamaster_config(akamaster)
  base = _cifar_resnet()
  if depth is None:
    # The smoke network: ResNet-20 at widths 4-8-8; the paper's: ResNet-110.
    depth = "20" if smoke else "110"
  config = base.get_config(depth)
  if sd:
    config.model.stochastic_depth = 0.5  # Huang et al.: p_L = 0.5
  config.lesion = lesion_defaults()
  config.lesion.vgg_widths = ml_collections.FieldReference(
      (64, 128, 256), field_type=tuple
  )
  config.lesion.path_lengths = ml_collections.FieldReference(
      (), field_type=tuple
  )
  if smoke:
    base.shrink(config)
    # Lesions need several units per stage: keep the depth, narrow stages.
    config.model.depth = int(depth)
    config.model.widths = (4, 8, 8)
    config.train.steps = 10
    config.train.log_every = 5
    config.train.eval_every = 0
    config.train.checkpoint_every = 0
    config.lesion.vgg_depth = 8
    config.lesion.vgg_widths = (4, 8, 8)
    config.lesion.lesions_per_call = 2
    config.lesion.max_k = 4
    config.lesion.draws_per_k = 3
    config.lesion.max_swaps = 3
    config.lesion.swap_draws = 3
    config.lesion.path_samples = 4
    config.lesion.path_batch = 8
    config.lesion.path_pool = 64
    config.lesion.signal_images = 16
  return config


def _imported(config: ml_collections.ConfigDict) -> None:
  """An imported network: only the ResNet, nothing trained."""
  config.lesion.vgg_depth = 0
  config.lesion.train_plain = False


def _akamaster_config(depth: int) -> ml_collections.ConfigDict:
  """akamaster's published ResNet-``depth`` on the JPEG CIFAR-10 export."""
  config = get_config(str(depth))
  config.model.update(TORCH_CIFAR_ARCH)  # what the imported net computes
  config.data.name = "cifar10"
  config.data.path = CIFAR_JPEG
  config.lesion.torch_cifar = os.path.join(AKAMASTER_DIR, f"resnet{depth}.npz")
  _imported(config)
  return config


def _imagenet_config(depth: int, smoke: bool) -> ml_collections.ConfigDict:
  """Veit Fig. 3 right: a torchvision-layout ImageNet ResNet, imported.

  ``config.lesion.torchvision`` (the checkpoint) and ``config.data.path``
  (an image folder of 224x224 centre crops) are the user's to give; the
  smoke variant reads synthetic 32x32 images instead.
  """
  config = get_config("smoke" if smoke else None)
  config.model.update(TORCHVISION_ARCH)
  config.model.depth = depth
  config.model.block = "bottleneck" if depth >= 50 else "basic"
  if not smoke:
    config.data.name = "imagenet"  # a label: the images come from data.path
    config.data.image_size = 224
    config.train.eval_batch_size = 100
    config.lesion.signal_images = 100  # 224x224 activations of every layer
  _imported(config)
  return config
