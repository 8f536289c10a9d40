"""He et al. 2016 (CVPR), CIFAR-10 ResNets: Table 6 and the plain twins (Fig. 6).

One network:
  python -m resflax.main --config experiments/cifar_resnet.py:110 --workdir runs/r110
  python -m resflax.main --config experiments/cifar_resnet.py:plain56 --workdir runs/p56
A tiny run that finishes in seconds on a CPU:
  python -m resflax.main --config experiments/cifar_resnet.py:smoke --workdir /tmp/smoke

Recipe (both He et al. papers): SGD momentum 0.9, weight decay 1e-4, batch
128 (BN statistics over 64 images, as on the papers' 2 GPUs), lr 0.1 divided
by 10 at 32k and 48k iterations, 64k iterations, pad-4/crop/flip
augmentation, per-pixel mean subtraction. ResNet-110 (and deeper) warms up
at lr 0.01 for 400 iterations.
"""

from resflax.config import base_config

DEPTHS = (20, 32, 44, 56, 110, 1202)


def get_config(arg=None):
  """``arg``: a depth ("110"), "plainN" for the plain twin, or "smoke"."""
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.bn_group_size = 64
  arg = "20" if arg in (None, "") else str(arg)
  smoke = arg == "smoke"
  if smoke:
    arg = "20"
  if arg.startswith("plain"):
    config.model.shortcut = "none"
    arg = arg[len("plain"):]
  try:
    config.model.depth = int(arg)
  except ValueError:
    raise ValueError(f"experiments/cifar_resnet.py: unknown arg {arg!r}; use "
                     "a depth like 110, plainN, or smoke") from None
  if config.model.depth >= 110:
    config.train.warmup_steps = 400
  if smoke:
    shrink(config)
  return config


def shrink(config):
  """The same experiment, small enough for seconds on a CPU."""
  config.data.name = "synthetic"
  config.data.synthetic_train_size = 256
  config.data.synthetic_test_size = 128
  config.model.bn_group_size = 0
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  config.train.steps = 20
  config.train.scale_schedule = True
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.checkpoint_every = 10
  return config
