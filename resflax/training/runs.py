"""Many runs of one program: their configs and per-run hyper-parameters.

``config.train.parallel_runs = R`` trains R runs that differ only in values
that keep every shape in one compiled program, the train state carrying a
leading run axis. Run k is exactly the solo run of ``run_configs(config)[k]``:
seed ``config.seed + k`` and the k-th entry of ``config.train.run_overrides``
applied; its initialisation, data order, augmentation and dropout derive
from its own seed, so its result equals training it alone (to float
tolerance: batched convolutions sum in another order).

``config.train.run_overrides``: empty, or a tuple of R strings, one per
run, each ``"key=value;key=value"`` with dotted config keys (``""`` = none)::

  --config.train.parallel_runs=3
  --config.train.run_overrides="('', 'train.learning_rate=0.05',
      'train.learning_rate=0.2;model.gate_bias_init=-7')"

Only keys in ``allowed_overrides(config)`` may differ between runs: the
seed, the optimiser's scalars (traced per run inside the step) and the
model keys the network's pieces declare as only setting initial values
(each group of runs sharing them is initialised with its own model).
Anything else changes shapes or the compiled program and is an error naming
the key. Seeds must be distinct
(each run's files are named by its seed).

``Runs`` is such a group: configs, directories, and host copies of per-run
values. A single run does not go through this module (``trainer.Trainer``);
a group does (``parallel.GroupTrainer``), with what is here: its stacked
initial state (``stacked_initial_state``), its vmapped step
(``vmapped_step``) and its combined results (``write_combined``).
"""

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resflax import models
from resflax.errors import ConfigError, TrainingError
from resflax.training import state as state_lib
from resflax.training import workdir as workdir_lib
from resflax.training.state import (
    RunSpec,
    build_run,
    init_state,
    make_optimizer,
)

# key -> type of its value. "train.*" keys are read inside the step, so
# they are traced per run. The model keys that only set initial values are
# declared by the network's pieces (``models.initial_value_keys``).
STEP_OVERRIDES = {
    "seed": int,
    "train.learning_rate": float,
    "train.warmup_learning_rate": float,
    "train.lr_decay": float,
    "train.weight_decay": float,
    "train.momentum": float,
}


def run_seed(seed: int, k: int) -> int:
  """The seed of the ``k``-th run of a group whose first seed is ``seed``.

  The parallel runs of one program and a sweep case's seeds both count up
  from ``config.seed``.
  """
  return seed + k


def seed_dir(parent: str, seed: int) -> str:
  """The directory of the run with ``seed`` under ``parent``: ``seed<s>``."""
  return os.path.join(parent, f"seed{seed}")


def allowed_overrides(config: ml_collections.ConfigDict) -> dict[str, type]:
  """The keys that may differ between the parallel runs of ``config``."""
  init_only = {
      f"model.{k}": type(models.DEFAULTS[k])
      for k in models.initial_value_keys(config.model)
  }
  return {**STEP_OVERRIDES, **init_only}


def parse_run_overrides(
    config: ml_collections.ConfigDict,
) -> list[dict[str, Any]]:
  """The per-run overrides of ``config.train.run_overrides``, typed.

  Returns:
    ``parallel_runs`` dicts (dotted key -> value); empty ones without
    overrides.

  Raises:
    ConfigError: a malformed entry, a key not in ``allowed_overrides``, a
      value of the wrong type, or a count other than ``parallel_runs``.
  """
  r = config.train.parallel_runs
  entries = tuple(config.train.run_overrides)
  if not entries:
    return [{} for _ in range(r)]
  if r == 1:
    raise ConfigError(
        "config.train.run_overrides needs config.train.parallel_runs > 1; "
        "for a single run set the keys themselves"
    )
  if len(entries) != r:
    raise ConfigError(
        f"config.train.run_overrides has {len(entries)} entries; it needs one "
        f"per run, config.train.parallel_runs={r} ('' for a run without "
        "overrides)"
    )
  try:
    allowed = allowed_overrides(config)
  except ValueError as e:  # the model itself is invalid
    raise ConfigError(str(e)) from None
  out = []
  for k, entry in enumerate(entries):
    where = f"config.train.run_overrides[{k}]={entry!r}"
    if not isinstance(entry, str):
      raise ConfigError(f"{where}: each entry is a 'key=value;...' " "string")
    parsed = {}
    for item in filter(None, (s.strip() for s in entry.split(";"))):
      key, sep, text = (s.strip() for s in item.partition("="))
      if not sep or not key:
        raise ConfigError(f"{where}: {item!r} is not key=value")
      if key not in allowed:
        raise ConfigError(
            f"{where}: key {key!r} cannot differ between parallel runs (it "
            "changes shapes or the compiled program); allowed keys: "
            f"{', '.join(allowed)}"
        )
      try:
        parsed[key] = allowed[key](text)
      except ValueError:
        raise ConfigError(
            f"{where}: {key}={text!r} is not a valid "
            f"{allowed[key].__name__}"
        ) from None
    out.append(parsed)
  return out


def run_configs(
    config: ml_collections.ConfigDict,
) -> list[ml_collections.ConfigDict]:
  """Each run's solo config: its seed and overrides, ``parallel_runs=1``.

  Raises:
    ConfigError: invalid overrides, an invalid run config, or two
      runs with the same seed.
  """
  configs = []
  for k, overrides in enumerate(parse_run_overrides(config)):
    c = config.copy_and_resolve_references()
    c.unlock()
    c.seed = run_seed(config.seed, k)
    c.update_from_flattened_dict(overrides)
    c.train.parallel_runs = 1
    c.train.run_overrides = ()
    c.lock()
    configs.append(c)
  seen = {}
  for k, c in enumerate(configs):
    if c.seed in seen:
      raise ConfigError(
          f"parallel runs {seen[c.seed]} and {k} both have seed {c.seed}; "
          "seeds must differ (each run's files are in seed<s>/)"
      )
    seen[c.seed] = k
  return configs


def step_hparams(
    configs: Sequence[ml_collections.ConfigDict],
) -> dict[str, np.ndarray]:
  """The step's scalars that differ between runs: dotted key -> (R,)."""
  out = {}
  for key in STEP_OVERRIDES:
    if not key.startswith("train."):
      continue
    name = key.split(".", 1)[1]
    values = [float(c.train[name]) for c in configs]
    if len(set(values)) > 1:
      out[key] = np.asarray(values, np.float32)
  return out


class ConfigView:
  """A read-only config whose dotted keys in ``values`` read as given.

  ``step.sgd_update`` reads its hyper-parameters from the run spec's
  config; handing it this view with per-run (traced) values makes each run
  use its own without a second implementation of the step.
  """

  def __init__(self, base, values: Mapping[str, Any], prefix: str = ""):
    self._base = base
    self._values = values
    self._prefix = prefix

  def __getattr__(self, name):
    key = self._prefix + name
    if key in self._values:
      return self._values[key]
    value = getattr(self._base, name)
    if isinstance(value, ml_collections.ConfigDict):
      return ConfigView(value, self._values, key + ".")
    return value

  def __getitem__(self, name):
    return self.__getattr__(name)

  def __contains__(self, name):
    return name in self._base


def init_groups(
    configs: Sequence[ml_collections.ConfigDict], init_only_keys: Sequence[str]
) -> list[list[int]]:
  """Indices of the runs that share every init-only model key, grouped.

  Args:
    configs: the runs' configs (``run_configs``).
    init_only_keys: model keys (without ``model.``) that only set initial
      values; runs differing in them need their own model to initialise.
  """
  groups: dict[tuple, list[int]] = {}
  for k, c in enumerate(configs):
    groups.setdefault(tuple(c.model[n] for n in init_only_keys), []).append(k)
  return list(groups.values())


@dataclasses.dataclass
class Runs:
  """The runs one program trains: their configs, directories and logs."""

  config: ml_collections.ConfigDict
  configs: list[ml_collections.ConfigDict]
  workdir: str
  is_main: bool

  @property
  def stacked(self) -> bool:
    return self.config.train.parallel_runs > 1

  @property
  def count(self) -> int:
    return len(self.configs)

  @property
  def dirs(self) -> list[str]:
    if not self.stacked:
      return [self.workdir]
    return [seed_dir(self.workdir, c.seed) for c in self.configs]

  def config_files(self) -> list[tuple[ml_collections.ConfigDict, str]]:
    """``(config, directory)`` of each config.json: the group's, each run's."""
    own = list(zip(self.configs, self.dirs)) if self.stacked else []
    return [(self.config, self.workdir)] + own


def stacked_initial_state(group: Runs, spec: RunSpec, image_shape) -> Any:
  """Every run's initial state, stacked on a leading run axis.

  Runs that differ in a key that only sets initial values
  (``models.initial_value_keys``) are initialised by their own model.
  Drawn with classic threefry, as ``state.initial_state`` explains.
  """
  with jax.threefry_partitionable(False):
    return _stacked_initial_state(group, spec, image_shape)


def _stacked_initial_state(group: Runs, spec: RunSpec, image_shape) -> Any:
  parts = {}
  for members in init_groups(
      group.configs, models.initial_value_keys(spec.model.config)
  ):
    member_spec = dataclasses.replace(
        spec,
        model=build_run(
            group.configs[members[0]],
            spec.model.config.num_classes,
            mesh=spec.mesh,
        ).model,
    )
    stacked = jax.jit(
        jax.vmap(lambda s, t=member_spec: init_state(t, s, image_shape)),
        out_shardings=spec.replicated,
        **spec.jit_options,
    )(jnp.asarray([group.configs[k].seed for k in members], jnp.int32))
    for j, k in enumerate(members):
      parts[k] = jax.tree.map(lambda x, j=j: x[j], stacked)
  return jax.jit(
      lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
      out_shardings=spec.replicated,
  )(*[parts[k] for k in range(group.count)])


def vmapped_step(group: Runs, spec: RunSpec, feed):
  """The feed's step vmapped over the runs, each with its own scalars.

  Returns:
    ``step(state, *feed.step_args()) -> state``, jitted, state donated.
  """
  hparams = jax.device_put(step_hparams(group.configs), spec.replicated)

  def one(state, hp, *data):
    run_spec = spec
    if hp:
      cfg = ConfigView(spec.config, hp)
      run_spec = dataclasses.replace(
          spec, config=cfg, optimizer=make_optimizer(cfg.train)
      )
    return feed.step_impl(run_spec, state, *data)

  d = feed.data_axis
  vstep = jax.jit(
      jax.vmap(one, in_axes=(0, 0, d, d, d, d)),
      donate_argnums=0,
      **spec.jit_options,
  )
  return lambda state, *data: vstep(state, hparams, *data)


def write_combined(
    group: Runs, summary, step: int, timing, rate, wall_start: float
) -> dict[str, Any]:
  """The group's results.json: each run's status beside the shared timing."""
  combined = {
      "parallel_runs": group.count,
      "runs": summary,
      "steps": step,
      "wall_seconds": time.perf_counter() - wall_start,
      "train_seconds": timing["train_seconds"],
      "images_per_second": rate,
      "config": group.config.to_dict(),
  }
  if group.is_main:
    workdir_lib.write_json(
        os.path.join(group.workdir, workdir_lib.RESULTS_FILE), combined
    )
  return combined


def initial_state(group: Runs, spec: RunSpec, image_shape) -> Any:
  """The initial state: one run's (``state.initial_state``), or every run's
  stacked (``stacked_initial_state``)."""
  if group.stacked:
    return stacked_initial_state(group, spec, image_shape)
  return state_lib.initial_state(spec, group.config.seed, image_shape)


def partly_diverged(group: Runs, failed: Mapping[int, str]) -> TrainingError:
  """The error of a group whose runs in ``failed`` (index -> why) diverged
  while the others finished (their results are written)."""
  why = "; ".join(
      f"seed {group.configs[k].seed}: {failed[k]}" for k in sorted(failed)
  )
  return TrainingError(
      f"{len(failed)} of {group.count} parallel runs in {group.workdir} "
      f"diverged ({why}); the others' results are written"
  )
