"""ResNet-20 training step: resflax against PyTorch eager on the same CPU.

The same network (He et al. 2016 CIFAR ResNet-20: 3x3 conv stem, 3 stages of
3 basic units of widths 16/32/64, option-A zero-pad shortcuts, BN after each
conv, He init, global average pool, linear head) and the same step (batch
128, float32, softmax cross-entropy, SGD lr 0.1 momentum 0.9, weight decay
1e-4 added to the gradient, BN statistics over the whole batch) in

* PyTorch eager (``torch.nn`` + ``torch.optim.SGD``, NCHW, one pre-made
  normalised batch, no augmentation: the least work torch can do), with
  ``torch.set_num_threads`` = the usable cores;
* resflax: the jitted step that training runs
  (``resflax.training.loop.make_step`` of
  ``resflax.training.step_on_dataset``: batch sampled, normalised and
  augmented on the device, non-finite guard, metrics), and the bare step
  (the resflax model's value_and_grad + optax update on a pre-made batch,
  as torch gets it), both with ``donate_argnums``;
* plain Flax: the same bare step with a minimal ``flax.linen`` ResNet-20
  (``nn.Conv``/``nn.BatchNorm``), the control for "what does JAX itself do
  here" (``--no-plain-flax`` leaves it out).

After warm-up (and compilation), rounds alternate torch / resflax step /
bare resflax / plain Flax, ``--steps`` steps each, and report images/s per
round (with the 1-minute load average), the medians and CPU milliseconds per
image (process CPU time). On a shared machine read the load: under
contention PyTorch's OpenMP threads lose far more (their spin-waiting
barriers need every thread scheduled at once) than XLA's thread pool, so
the ratio swings from below 0.5x on an idle machine to 2-3x on a loaded
one. ``model.scan`` is chosen by a short probe (``--scan auto``; the faster
on this machine, printed) or forced with ``--scan on|off``. The last line
is the median over rounds of the resflax step's images/s over torch
images/s (printed as ``resflax train_step / torch eager``, the name
benchmarks/RESULTS.md cites). Before it, ``--kernels N`` (default 5) times
each framework's single convolutions at ResNet-20's shapes (forward, input
gradient, weight gradient): the kernels a step is made of, compared without
any framework around them.

  pip install torch==2.13.0   # or: pip install -e .[bench]
  python benchmarks/vs_pytorch.py [--rounds 5] [--steps 10] [--scan auto]
"""

import argparse
import functools
import os
import statistics
import sys
import time

import abstract_step
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resflax import data as data_lib
from resflax import training
from resflax.config import base_config
from resflax.models import cpu_conv
from resflax.training import feeds

BATCH = 128


def _require_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit(
        "vs_pytorch.py needs PyTorch (an optional dependency): "
        "pip install torch==2.13.0  (or pip install -e '.[bench]')"
    )
  return torch


def num_cores() -> int:
  """Cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------
# PyTorch


def torch_resnet20(torch, num_classes=10):
  """ResNet-20 as ``create_model(name='cifar_resnet', depth=20)`` builds it."""
  nn = torch.nn
  F = torch.nn.functional

  def conv3x3(cin, cout, stride):
    c = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c

  def bn(c):  # torch momentum 0.1 == flax/resflax momentum 0.9
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1, self.bn1 = conv3x3(cin, cout, stride), bn(cout)
      self.conv2, self.bn2 = conv3x3(cout, cout, 1), bn(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      h = F.relu(self.bn1(self.conv1(x)))
      h = self.bn2(self.conv2(h))
      s = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
      if self.extra:  # option A: zero-pad the new channels (at the end)
        s = F.pad(s, (0, 0, 0, 0, 0, self.extra))
      return F.relu(h + s)

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv, self.bn = conv3x3(3, 16, 1), bn(16)
      blocks, cin = [], 16
      for s, w in enumerate((16, 32, 64)):
        for u in range(3):
          blocks.append(Block(cin, w, 2 if (s > 0 and u == 0) else 1))
          cin = w
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
      x = F.relu(self.bn(self.conv(x)))
      x = self.blocks(x)
      return self.fc(x.mean((2, 3)))

  return ResNet()


class TorchRunner:
  """PyTorch eager training steps on one fixed batch."""

  def __init__(self, torch, images, labels):
    self.torch = torch
    torch.manual_seed(0)
    self.model = torch_resnet20(torch).train()
    self.opt = torch.optim.SGD(
        self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    self.x = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )
    self.y = torch.from_numpy(labels.astype(np.int64))
    self.loss = None

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns images/s."""
    F = self.torch.nn.functional
    start = time.perf_counter()
    for _ in range(steps):
      self.opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(self.model(self.x), self.y)
      loss.backward()
      self.opt.step()
    if steps:  # --warmup 0 runs no step
      self.loss = loss.item()  # eager: already computed
    return steps * BATCH / (time.perf_counter() - start)


# --------------------------------------------------------------------------
# resflax


def make_config(scan: bool):
  """ResNet-20, batch 128, float32, BN over the whole batch (as torch)."""
  config = base_config()
  config.model.name = "cifar_resnet"
  config.model.depth = 20
  config.model.scan = scan
  config.model.bn_group_size = 0
  config.train.batch_size = BATCH
  config.data.name = "synthetic"
  config.data.synthetic_train_size = 10 * BATCH
  config.data.synthetic_test_size = BATCH
  return config


class _JaxRunner:
  """Steps ``self.step(self.state, *self.args)``; subclasses set all three."""

  def compile(self) -> float:
    start = time.perf_counter()
    self.run(1)
    return time.perf_counter() - start

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.state = self.step(self.state, *self.args)
    jax.block_until_ready(self.state)
    return steps * BATCH / (time.perf_counter() - start)


class TrainStepRunner(_JaxRunner):
  """The engine's jitted step (on-device sampling + augmentation)."""

  def __init__(self, config, feed):
    self.spec, self.step, self.state = abstract_step.engine_step(config, feed)
    self.args = feed.step_args()


class _PlainUnit(nn.Module):
  """Basic unit, option A shortcut, in plain flax.linen."""

  cin: int
  cout: int
  stride: int

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    conv = functools.partial(
        nn.Conv, self.cout, (3, 3), padding=1, use_bias=False, kernel_init=init
    )
    bn = functools.partial(
        nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5
    )
    h = nn.relu(bn()(conv(strides=self.stride)(x)))
    h = bn()(conv()(h))
    s = x[:, :: self.stride, :: self.stride] if self.stride > 1 else x
    if self.cout > self.cin:
      s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, self.cout - self.cin)))
    return nn.relu(h + s)


class PlainResNet20(nn.Module):
  """ResNet-20 in plain flax.linen: the "JAX itself" control."""

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=init)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9)(x))
    cin = 16
    for s, w in enumerate((16, 32, 64)):
      for u in range(3):
        x = _PlainUnit(cin, w, 2 if (s > 0 and u == 0) else 1)(x)
        cin = w
    return nn.Dense(10)(x.mean((1, 2)))


class _PlainAdapter:
  """``PlainResNet20`` behind the resflax ``init``/``apply`` signature."""

  def __init__(self):
    self.net = PlainResNet20()

  def init(self, key, x):
    return self.net.init(key, x)

  def apply(self, variables, x, train):
    del train
    logits, upd = self.net.apply(variables, x, mutable=["batch_stats"])
    return logits, {**variables, **upd}


class BareRunner(_JaxRunner):
  """Model value_and_grad + optax SGD on one fixed batch (as torch gets).

  Args:
    spec: the run spec of the engine's step (``TrainStepRunner.spec``): its
      model (unless ``plain_flax``) and optimiser are the ones used here.
    images, labels: the fixed normalised batch.
    plain_flax: use ``PlainResNet20`` instead of the resflax model.
  """

  def __init__(self, spec, images, labels, plain_flax: bool = False):
    self.model = _PlainAdapter() if plain_flax else spec.model
    variables = self.model.init(jax.random.key(0), jnp.asarray(images[:2]))
    tx = spec.optimizer  # the engine's SGD at the config's rate
    self.state = (variables, tx.init(variables["params"]), jnp.float32(0))
    self.args = (jnp.asarray(images), jnp.asarray(labels))
    model = self.model

    def step(state, x, y):
      variables, opt_state, _ = state

      def loss_fn(params):
        logits, new_vars = model.apply(
            {**variables, "params": params}, x, train=True
        )
        return (
            optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            new_vars,
        )

      (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          variables["params"]
      )
      updates, opt_state = tx.update(grads, opt_state, variables["params"])
      params = optax.apply_updates(variables["params"], updates)
      return {**new_vars, "params": params}, opt_state, loss

    self.step = jax.jit(step, donate_argnums=0)


def fixed_batch(dataset):
  """One normalised float32 NHWC batch and its labels (numpy)."""
  x = data_lib.normalize(
      dataset.train_images[:BATCH], dataset.mean, dataset.std
  )
  return np.asarray(x, np.float32), dataset.train_labels[:BATCH]


def choose_scan(feed, steps: int):
  """Times the engine's step with scan on/off (alternated).

  Returns:
    (the faster scan setting, its compiled runner, its compile seconds).
  """
  runners = {s: TrainStepRunner(make_config(s), feed) for s in (True, False)}
  compile_s = {s: r.compile() for s, r in runners.items()}
  for r in runners.values():
    r.run(1)
  rates = {True: [], False: []}
  for _ in range(2):
    for s, r in runners.items():
      rates[s].append(r.run(steps))
  best = {s: max(v) for s, v in rates.items()}
  print(
      f"scan probe (step_on_dataset, {steps} steps x 2): scan=True "
      f"{best[True]:.1f} img/s, scan=False {best[False]:.1f} img/s",
      flush=True,
  )
  scan = max(best, key=best.get)
  return scan, runners[scan], compile_s[scan]


# --------------------------------------------------------------------------
# One convolution at a time: what each framework's kernels can do


def kernel_table(torch, repeats: int):
  """Milliseconds of one 3x3 convolution of ResNet-20, per framework.

  For each stage's shape (batch 128, stride 1, 'SAME'): the forward
  convolution, its input gradient and its weight gradient, each jitted
  alone in JAX (XLA:CPU) and called alone in torch (oneDNN); calls
  alternate and the minimum of ``repeats`` is kept. A step is about 19 x
  these three, so their ratio bounds what a JAX program made of XLA's
  kernels can gain. The ``resflax`` rows are the gradients of
  ``resflax.models.cpu_conv.conv2d`` (its CPU backward pass) against the
  same torch kernels.

  Returns:
    Rows ``(stage width, op, jax ms, torch ms)``.
  """
  rows = []
  for width, size in ((16, 32), (32, 16), (64, 8)):
    rng = np.random.default_rng(width)
    x = rng.standard_normal((BATCH, size, size, width), np.float32)
    k = rng.standard_normal((3, 3, width, width), np.float32) * 0.1
    dy = rng.standard_normal((BATCH, size, size, width), np.float32)
    conv = lambda a, b: jax.lax.conv_general_dilated(
        a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    ours = lambda a, b: cpu_conv.conv2d(a, b)
    jax_ops = {
        "forward": jax.jit(conv),
        "input grad": jax.jit(
            lambda a, b, g: jax.vjp(lambda a_: conv(a_, b), a)[1](g)[0]
        ),
        "weight grad": jax.jit(
            lambda a, b, g: jax.vjp(lambda b_: conv(a, b_), b)[1](g)[0]
        ),
        "resflax input grad": jax.jit(
            lambda a, b, g: jax.vjp(lambda a_: ours(a_, b), a)[1](g)[0]
        ),
        "resflax weight grad": jax.jit(
            lambda a, b, g: jax.vjp(lambda b_: ours(a, b_), b)[1](g)[0]
        ),
    }
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    gt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
    back = lambda mask: torch.ops.aten.convolution_backward(
        gt, xt, kt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
    )
    torch_ops = {
        "forward": lambda: torch.nn.functional.conv2d(xt, kt, padding=1),
        "input grad": lambda: back([True, False, False]),
        "weight grad": lambda: back([False, True, False]),
    }
    torch_ops["resflax input grad"] = torch_ops["input grad"]
    torch_ops["resflax weight grad"] = torch_ops["weight grad"]
    args = {op: (x, k) if op == "forward" else (x, k, dy) for op in jax_ops}
    with torch.no_grad():
      for op, fn in jax_ops.items():
        a = [jnp.asarray(v) for v in args[op]]
        jax.block_until_ready(fn(*a))
        torch_ops[op]()
        best = {"jax": float("inf"), "torch": float("inf")}
        for _ in range(repeats):
          t = time.perf_counter()
          jax.block_until_ready(fn(*a))
          best["jax"] = min(best["jax"], time.perf_counter() - t)
          t = time.perf_counter()
          torch_ops[op]()
          best["torch"] = min(best["torch"], time.perf_counter() - t)
        rows.append((width, op, 1e3 * best["jax"], 1e3 * best["torch"]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
      "--steps", type=int, default=10, help="steps per round and framework"
  )
  parser.add_argument(
      "--warmup",
      type=int,
      default=3,
      help="untimed steps of each before the rounds",
  )
  parser.add_argument(
      "--scan",
      choices=("auto", "on", "off"),
      default="auto",
      help="model.scan for resflax; auto = faster in a probe",
  )
  parser.add_argument(
      "--no-plain-flax",
      dest="plain_flax",
      action="store_false",
      help="leave out the plain flax.linen control",
  )
  parser.add_argument(
      "--kernels",
      type=int,
      default=5,
      metavar="N",
      help="also time single convolutions, min of N (0: no)",
  )
  args = parser.parse_args()
  torch = _require_torch()
  cores = num_cores()
  torch.set_num_threads(cores)

  base = make_config(True)
  dataset = data_lib.load_dataset(base.data)
  images, labels = fixed_batch(dataset)
  # One copy of the data on the device for every step runner.
  feed = feeds.InMemoryFeed(
      [dataset], training.make_mesh(), base.train.eval_batch_size
  )
  compile_s = {}
  if args.scan == "auto":
    scan, step_runner, compile_s["resflax"] = choose_scan(
        feed, max(3, args.steps // 2)
    )
  else:
    scan = args.scan == "on"
    step_runner = TrainStepRunner(make_config(scan), feed)
    compile_s["resflax"] = step_runner.compile()

  runners = {
      "torch": TorchRunner(torch, images, labels),
      "resflax": step_runner,
      "bare_resflax": BareRunner(step_runner.spec, images, labels),
  }
  if args.plain_flax:
    runners["plain_flax"] = BareRunner(step_runner.spec, images, labels, True)
  for k in runners:
    if k not in ("torch", "resflax"):
      compile_s[k] = runners[k].compile()
  for r in runners.values():
    r.run(args.warmup)

  rates = {k: [] for k in runners}
  cpu_ms = {k: [] for k in runners}
  for i in range(args.rounds):
    for k, r in runners.items():
      cpu = time.process_time()
      rates[k].append(r.run(args.steps))
      cpu_ms[k].append((time.process_time() - cpu) * 1e3 / (args.steps * BATCH))
    print(
        f"round {i}: "
        + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
        + f" img/s (load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )

  med = {k: statistics.median(v) for k, v in rates.items()}
  per_round = [a / b for a, b in zip(rates["resflax"], rates["torch"])]
  ratio = lambda a, b: statistics.median(
      [x / y for x, y in zip(rates[a], rates[b])]
  )
  print(
      f"machine: {cores} cores; torch {torch.__version__} "
      f"({torch.get_num_threads()} threads), jax {jax.__version__} "
      f"{jax.devices()[0].platform}"
  )
  print(
      f"resflax: model.scan={scan} "
      f"({'chosen by probe' if args.scan == 'auto' else 'forced'}); "
      "compile (excluded): "
      + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items())
  )
  print(
      "torch: eager NCHW, fixed pre-made batch, no augmentation; resflax: "
      "jitted training.step_on_dataset (on-device sampling + "
      "pad/crop/flip); "
      "bare_resflax / plain_flax: value_and_grad + optax on a fixed batch"
  )
  print("median img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
  print(
      "median CPU ms/img: "
      + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in cpu_ms.items())
  )
  others = [k for k in runners if k not in ("torch", "resflax")]
  print(
      "median per-round ratios: "
      + "; ".join(
          [f"{k}/torch {ratio(k, 'torch'):.2f}" for k in others]
          + [f"resflax/{k} {ratio('resflax', k):.2f}" for k in others]
      )
  )
  if args.kernels:
    print(
        "single 3x3 convolutions, batch 128, min of "
        f"{args.kernels} (ms): jax (XLA:CPU) / torch (oneDNN)"
    )
    total = {"xla": [0.0, 0.0], "resflax": [0.0, 0.0]}
    for width, op, jax_ms, torch_ms in kernel_table(torch, args.kernels):
      groups = (
          ["xla", "resflax"]
          if op == "forward"
          else ["resflax"]
          if op.startswith("resflax")
          else ["xla"]
      )
      for g in groups:
        total[g][0] += jax_ms
        total[g][1] += torch_ms
      print(
          f"  width {width:2d} {op:19s} {jax_ms:7.2f} / {torch_ms:7.2f}"
          f"  = {torch_ms / jax_ms:.2f}x"
      )
    for g, (jax_ms, torch_ms) in total.items():
      print(
          f"  {g} kernels (forward + both gradients, 3 widths): torch / "
          f"jax = {torch_ms / jax_ms:.2f}x"
      )
  print("per-round resflax/torch: " + " ".join(f"{r:.2f}" for r in per_round))
  print(
      f"resflax train_step / torch eager = "
      f"{statistics.median(per_round):.2f}x (target >= 4x)"
  )


if __name__ == "__main__":
  main()
