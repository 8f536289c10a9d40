"""The training step of the engine, for the benchmarks.

``build`` gives the step and its arguments as shapes only (with the
shardings training gives them), for benchmarks that lower and compile the
step without initialising or running it (``compile_time.py``,
``memory.py``). ``presets`` lists the paper presets of ``experiments/``
as the distinct training programs they compile. ``engine_step`` gives the
step and initial state that ``resflax.training.train_and_evaluate`` builds,
on a dataset held on the devices, for benchmarks that time steps
(``accelerator_check.py``, ``parallel_runs.py``, ``train_throughput.py``,
``vs_pytorch.py``).
"""

import dataclasses
import functools
import glob
import json
import os

import jax
import jax.numpy as jnp

from resflax import data as data_lib
from resflax import models, training
from resflax.training import loop, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_TRAIN = 50_000  # CIFAR-10/100 training images, held on every device


def data_args(spec, image_shape, streamed: bool):
  """Abstract data arguments of the step, sharded as training places them.

  In-memory data (CIFAR) is replicated on every device
  (``feeds.place_examples``, one process); a streamed batch (ImageNet) is
  split over the mesh's data axis.
  """
  sds, rep = jax.ShapeDtypeStruct, spec.replicated
  if streamed:
    batch, shard = spec.config.train.batch_size, spec.batch_sharding
    return (
        sds((batch,) + image_shape, jnp.uint8, sharding=shard),
        sds((batch,), jnp.int32, sharding=shard),
        sds(image_shape[-1:], jnp.float32, sharding=rep),
        sds(image_shape[-1:], jnp.float32, sharding=rep),
    )
  n = spec.num_train
  return (
      sds((n,) + image_shape, jnp.uint8, sharding=rep),
      sds((n,), jnp.int32, sharding=rep),
      sds(image_shape, jnp.float32, sharding=rep),
      sds(image_shape, jnp.float32, sharding=rep),
  )


def build(
    config,
    num_train: int,
    image_shape=(32, 32, 3),
    streamed: bool = False,
    num_classes: int | None = None,
):
  """The run spec, the jitted step and abstract (state, data) arguments.

  Args:
    config: an experiment config.
    num_train: training images the step's on-device dataset holds (ignored
      when ``streamed``).
    image_shape: one image's shape.
    streamed: the step takes a host batch (``step_on_batch``, ImageNet)
      instead of sampling one from a dataset on the devices.
    num_classes: the dataset's classes; default ``config.model.num_classes``.

  Returns:
    ``(spec, step, state, data)``: ``step(state, *data)`` lowers as training
    runs one run (state donated, replicated over every device).
  """
  spec = training.build_run(
      config,
      num_classes or config.model.num_classes,
      num_train=0 if streamed else num_train,
  )
  image_shape = tuple(image_shape)
  rep = spec.replicated
  state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
      jax.eval_shape(
          functools.partial(training.init_state, spec, 0, image_shape)
      ),
  )
  impl = training.step_on_batch if streamed else training.step_on_dataset
  # The program loop.make_step compiles for one run; it needs a feed, and
  # here there is no data, only its shapes.
  step = jax.jit(
      functools.partial(impl, spec), donate_argnums=0, **spec.jit_options
  )
  return spec, step, state, data_args(spec, image_shape, streamed)


@dataclasses.dataclass
class Preset:
  """One distinct training program of the paper presets.

  Attributes:
    name: ``file.py:case`` of its first case.
    path: the experiment file.
    case: the case whose config it compiles (``None``: the file's own).
    covers: every case compiling the same program (up to init-only keys
      and the class count, e.g. a ``_c100`` twin).
  """

  name: str
  path: str
  case: str | None
  covers: list[str]

  def config(self):
    """The training config of one run of the case (its first seed)."""
    from resflax.config import load_experiment  # pylint: disable=g-import-not-at-top
    from resflax.experiment import cases  # pylint: disable=g-import-not-at-top

    sweep = load_experiment(self.path, "all" if self.case else None)
    if self.case is None:
      return sweep
    return cases.case_config(sweep, self.case, seed=sweep.seed)


def program_key(config) -> str:
  """What decides a training program's shape: the model and step keys."""
  m = models.resolve(training.state.model_config(config, 8))
  skip = set(models.initial_value_keys(m)) | {"num_classes"}
  t = config.train
  return json.dumps(
      {
          "model": {
              k: v for k, v in dataclasses.asdict(m).items() if k not in skip
          },
          "train": [
              t.batch_size,
              t.bn_sync,
              t.gradient_modules,
              t.warmup_until_error > 0,
              t.on_nonfinite,
          ],
          "data": [
              config.data.name in ("imagenet2012",),
              config.data.image_size,
              config.data.augment,
          ],
      },
      sort_keys=True,
      default=str,
  )


def presets(names: str | None = None) -> list[Preset]:
  """Every distinct training program of ``experiments/*.py``, in file order.

  Args:
    names: comma-separated substrings; keeps the presets whose name or
      covered cases contain one (``"preact,wide"``); None keeps all.
  """
  out = list(_all_presets())
  if names:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    out = [p for p in out if any(w in c for w in wanted for c in p.covers)]
  return out


@functools.cache
def _all_presets() -> tuple[Preset, ...]:
  """``presets()``, loaded once per process (every experiment file)."""
  from resflax.config import load_experiment  # pylint: disable=g-import-not-at-top
  from resflax.experiment import cases  # pylint: disable=g-import-not-at-top

  out, seen = [], {}
  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
    base = os.path.basename(path)
    if base == "__init__.py":
      continue
    try:
      sweep = load_experiment(path, "all")
    except Exception:  # pylint: disable=broad-except
      sweep = load_experiment(path)  # a file without cases (the lesion study)
    found = cases.case_names(sweep) if "sweep_cases" in sweep else [None]
    for case in found:
      p = Preset(f"{base[:-3]}:{case or 'default'}", path, case, [])
      key = program_key(p.config())
      if key in seen:
        seen[key].covers.append(p.name)
        continue
      p.covers.append(p.name)
      seen[key] = p
      out.append(p)
  return tuple(out)


def preset_step(config):
  """``build`` for a preset: its dataset's image shape, classes and size."""
  info = data_lib.source_info(config.data)
  return build(
      config,
      CIFAR_TRAIN,
      image_shape=tuple(info.image_shape),
      streamed=info.streams,
      num_classes=info.num_classes,
  )


def memory(compiled) -> dict | None:
  """XLA's memory analysis of ``compiled``, per device, as a dict of bytes.

  Peak = arguments + outputs - aliased (donated) + temporaries, XLA's own
  buffer-assignment bound; None where the backend gives no analysis.
  """
  ma = compiled.memory_analysis()
  if ma is None:
    return None
  get = lambda k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
  out = {
      k: get(k)
      for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def run_group(config) -> loop.Runs:
  """The engine's runs of ``config`` (``runs.run_configs``), no workdir."""
  return loop.Runs(config, runs.run_configs(config), workdir="", is_main=False)


def engine_step(config, feed):
  """The engine's step and initial state of ``config`` on ``feed``'s data.

  Args:
    config: an experiment config; ``train.parallel_runs > 1`` stacks its
      runs (``resflax.training.runs.run_configs``) on a leading axis.
    feed: a ``resflax.training.feeds.InMemoryFeed`` whose dataset every run
      shares.

  Returns:
    ``(spec, step, state)``: ``step(state, *feed.step_args())`` is one step
    of every run, as ``train_and_evaluate`` compiles it (state donated);
    ``state`` is the runs' initial state. A single run's ``step`` is a
    ``jax.jit`` function (it has ``lower``).
  """
  spec = training.build_run(config, feed.num_classes, num_train=feed.num_train)
  group = run_group(config)
  return (
      spec,
      loop.make_step(group, spec, feed),
      runs.initial_state(group, spec, feed.image_shape),
  )


def fake_devices(count: int = 8) -> None:
  """Asks XLA:CPU for ``count`` devices; call before JAX initialises."""
  flag = f"--xla_force_host_platform_device_count={count}"
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def deepest_first(found: list[Preset]) -> list[Preset]:
  """``found`` by network depth, deepest first (then wider, bigger batch)."""

  def size(p):
    m = models.resolve(training.state.model_config(p.config(), 8))
    return (m.depth, m.width or 1, p.config().train.batch_size)

  return sorted(found, key=size, reverse=True)


def shape_of(preset: Preset) -> tuple[str, int]:
  """A short description of the preset's network and its per-device batch."""
  c = preset.config()
  m = models.resolve(training.state.model_config(c, 8))
  net = f"{m.name} {m.depth} {m.block}/{m.unit}/{m.shortcut}" + (
      f" k={m.width}" if m.name == "wide_resnet" else ""
  )
  return net, c.train.batch_size


def done_names(jsonl: str | None) -> set[str]:
  """Presets already in ``jsonl``: a rerun of the same command resumes."""
  if not jsonl or not os.path.exists(jsonl):
    return set()
  with open(jsonl) as f:
    return {json.loads(line)["preset"] for line in f if line.strip()}
