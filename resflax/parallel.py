"""Many runs in one compiled program: the train state vmapped over runs.

``config.train.parallel_runs = R`` (R > 1) makes ``train.train_and_evaluate``
call ``train_and_evaluate_parallel``: R runs that differ only in values that
keep every shape train together, one ``jax.vmap`` of ``train.train_step``
over a train state with a leading run axis. Run k is exactly the solo run
of ``run_configs(config)[k]``: seed ``config.seed + k`` and the k-th entry
of ``config.train.run_overrides`` applied; its initialisation, data order,
augmentation and dropout derive from its own seed, so its result equals
training it alone (to float tolerance: batched convolutions sum in another
order).

``config.train.run_overrides``: empty, or a tuple of R strings, one per
run, each ``"key=value;key=value"`` with dotted config keys (``""`` = none)::

  --config.train.parallel_runs=3
  --config.train.run_overrides="('', 'train.learning_rate=0.05',
      'train.learning_rate=0.2;model.gate_bias_init=-7')"

Only keys in ``ALLOWED_OVERRIDES`` may differ between runs: the seed, the
optimiser's scalars (traced per run inside the step) and initial values
(``model.gate_bias_init``: each group of runs sharing it is initialised
with its own model; ``apply`` never reads it). Anything else changes shapes
or the compiled program and is an error naming the key. Seeds must be
distinct (each run's files are named by its seed).

Workdir layout:
  config.json           the program's config
  checkpoints/<step>/   the stacked state (every leaf has the run axis first)
  results.json          ``{"parallel_runs": R, "runs": [{"seed", "dir",
                        "status": "ok"|"failed", "test_error", "error"}],
                        "steps", "wall_seconds", "train_seconds",
                        "images_per_second"}`` (images/s of all runs
                        together, without compilation and evaluation)
  seed<s>/config.json   the run's own config (what training it alone uses)
  seed<s>/results.json  the run's results: the keys of a solo run's
                        results.json plus ``parallel`` (runs, index)
  seed<s>/failed.json   instead of results.json when the run diverged
  seed<s>/events.*      the run's TensorBoard scalars

With ``config.train.on_nonfinite='stop'`` a run whose loss or parameters
become non-finite is frozen at its last good state (``train.train_step``
stops applying its updates) while the others train on; at the end it gets
failed.json and ``train.TrainingError`` names it. When every run has
failed the program stops at once. With ``'skip'`` each run skips its own
non-finite steps.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resflax.training import checkpoint as checkpoint_lib
from resflax import data as data_lib
from resflax.training import metrics as metrics_lib
from resflax import models
from resflax import fileio as results_lib
from resflax.experiment import sweep
from resflax import train

PyTree = Any

# key -> type of its value. "train.*" keys are read inside the step, so
# they are traced per run; "model.gate_bias_init" only sets initial values.
ALLOWED_OVERRIDES = {
    "seed": int,
    "train.learning_rate": float,
    "train.warmup_learning_rate": float,
    "train.lr_decay": float,
    "train.weight_decay": float,
    "train.momentum": float,
    "model.gate_bias_init": float,
}
_INIT_KEYS = ("model.gate_bias_init",)


def parse_run_overrides(config: ml_collections.ConfigDict
                        ) -> List[Dict[str, Any]]:
  """The per-run overrides of ``config.train.run_overrides``, typed.

  Returns:
    ``parallel_runs`` dicts (dotted key -> value); empty ones without
    overrides.

  Raises:
    train.ConfigError: a malformed entry, a key not in ALLOWED_OVERRIDES, a
      value of the wrong type, or a count other than ``parallel_runs``.
  """
  r = config.train.parallel_runs
  entries = tuple(config.train.run_overrides)
  if not entries:
    return [{} for _ in range(r)]
  if r == 1:
    raise train.ConfigError(
        "config.train.run_overrides needs config.train.parallel_runs > 1; "
        "for a single run set the keys themselves")
  if len(entries) != r:
    raise train.ConfigError(
        f"config.train.run_overrides has {len(entries)} entries; it needs one "
        f"per run, config.train.parallel_runs={r} ('' for a run without "
        "overrides)")
  out = []
  for k, entry in enumerate(entries):
    where = f"config.train.run_overrides[{k}]={entry!r}"
    if not isinstance(entry, str):
      raise train.ConfigError(f"{where}: each entry is a 'key=value;...' "
                              "string")
    parsed = {}
    for item in filter(None, (s.strip() for s in entry.split(";"))):
      key, sep, text = (s.strip() for s in item.partition("="))
      if not sep or not key:
        raise train.ConfigError(f"{where}: {item!r} is not key=value")
      if key not in ALLOWED_OVERRIDES:
        raise train.ConfigError(
            f"{where}: key {key!r} cannot differ between parallel runs (it "
            "changes shapes or the compiled program); allowed keys: "
            f"{', '.join(ALLOWED_OVERRIDES)}")
      try:
        parsed[key] = ALLOWED_OVERRIDES[key](text)
      except ValueError:
        raise train.ConfigError(
            f"{where}: {key}={text!r} is not a valid "
            f"{ALLOWED_OVERRIDES[key].__name__}") from None
    out.append(parsed)
  return out


def run_configs(config: ml_collections.ConfigDict
                ) -> List[ml_collections.ConfigDict]:
  """Each run's solo config: its seed and overrides, ``parallel_runs=1``.

  Raises:
    train.ConfigError: invalid overrides, an invalid run config, or two
      runs with the same seed.
  """
  configs = []
  for k, overrides in enumerate(parse_run_overrides(config)):
    c = config.copy_and_resolve_references()
    c.unlock()
    c.seed = config.seed + k
    c.update_from_flattened_dict(overrides)
    c.train.parallel_runs = 1
    c.train.run_overrides = ()
    c.lock()
    configs.append(c)
  seen = {}
  for k, c in enumerate(configs):
    if c.seed in seen:
      raise train.ConfigError(
          f"parallel runs {seen[c.seed]} and {k} both have seed {c.seed}; "
          "seeds must differ (each run's files are in seed<s>/)")
    seen[c.seed] = k
  return configs


def validate(config: ml_collections.ConfigDict,
             num_devices: Optional[int] = None) -> None:
  """Checks ``run_overrides`` and every run's config.

  ``train.validate_config`` calls it when ``parallel_runs > 1`` or
  ``run_overrides`` is set, before any data is loaded.

  Raises:
    train.ConfigError: naming the key and what is allowed.
  """
  if train.is_streamed(config) and config.train.parallel_runs > 1:
    raise train.ConfigError(
        f"config.train.parallel_runs={config.train.parallel_runs} needs an "
        f"in-memory dataset; config.data.name={config.data.name!r} is "
        "streamed. Train its runs one after another.")
  for c in run_configs(config):
    train.validate_config(c, num_devices)


def run_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed{seed}")


def step_hparams(configs: Sequence[ml_collections.ConfigDict]
                 ) -> Dict[str, np.ndarray]:
  """The step's scalars that differ between runs: dotted key -> (R,)."""
  out = {}
  for key in ALLOWED_OVERRIDES:
    if not key.startswith("train."):
      continue
    name = key.split(".", 1)[1]
    values = [float(c.train[name]) for c in configs]
    if len(set(values)) > 1:
      out[key] = np.asarray(values, np.float32)
  return out


class _ConfigView:
  """A read-only config whose dotted keys in ``values`` read as given.

  ``train.train_step`` reads its hyper-parameters from the task's config;
  handing it this view with per-run (traced) values makes each run use its
  own without a second implementation of the step.
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
      return _ConfigView(value, self._values, key + ".")
    return value

  def __getitem__(self, name):
    return self.__getattr__(name)

  def __contains__(self, name):
    return name in self._base


def make_step(task: train.Task, per_run_data: bool):
  """The jitted step of every run at once.

  Returns:
    ``step(state, hparams, images, labels, mean, std) -> state``: one
    ``train.train_step`` vmapped over the state's run axis. ``hparams``
    comes from ``step_hparams`` (arrays of shape (R,)); the data has a run
    axis too when ``per_run_data``.
  """

  def one(state, hparams, images, labels, mean, std):
    run_task = task
    if hparams:
      cfg = _ConfigView(task.config, hparams)
      run_task = dataclasses.replace(
          task, config=cfg, optimizer=train.make_optimizer(cfg.train))
    return train.train_step(run_task, state, images, labels, mean, std)

  d = 0 if per_run_data else None
  return jax.jit(jax.vmap(one, in_axes=(0, 0, d, d, d, d)),
                 donate_argnums=0)


def make_eval(task: train.Task, per_run_data: bool):
  """The jitted evaluation of all runs (``train.evaluate`` vmapped)."""
  d = 0 if per_run_data else None
  return jax.jit(jax.vmap(functools.partial(train.evaluate, task),
                          in_axes=(0, d, d, d, d, None, None)))


def make_model(config, num_classes: int) -> models.Network:
  """The network ``train.train_and_evaluate`` builds for ``config``."""
  mcfg = train.model_config(config, jax.device_count())
  mcfg["num_classes"] = num_classes
  return models.create_model(mcfg)


def init_states(task: train.Task, configs, image_shape,
                num_classes: int) -> PyTree:
  """The stacked initial state of every run, replicated.

  Runs sharing their init-only keys are initialised by one vmapped
  ``train.init_state`` of their own model.
  """
  groups: Dict[Tuple, List[int]] = {}
  for k, c in enumerate(configs):
    key = tuple(c.model[name.split(".", 1)[1]] for name in _INIT_KEYS)
    groups.setdefault(key, []).append(k)
  parts = {}
  for members in groups.values():
    group_task = dataclasses.replace(
        task, model=make_model(configs[members[0]], num_classes))
    init = jax.jit(jax.vmap(lambda s, t=group_task: train.init_state(
        t, s, image_shape)), out_shardings=task.replicated)
    stacked = init(jnp.asarray([configs[k].seed for k in members], jnp.int32))
    for j, k in enumerate(members):
      parts[k] = jax.tree.map(lambda x, j=j: x[j], stacked)
  if len(groups) == 1:
    return stacked
  return jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
                 out_shardings=task.replicated)(
                     *[parts[k] for k in range(len(configs))])


def _data_depends_on_seed(data_cfg) -> bool:
  # resflax.data.load_dataset: only synthetic data is drawn from the seed;
  # real datasets, splits and subsets use fixed seeds.
  return data_cfg.name == "synthetic" and not data_cfg.path


def _datasets(configs, dataset: data_lib.Dataset, seed: int):
  """Each run's dataset when the data depends on the seed, else None."""
  if not _data_depends_on_seed(configs[0].data):
    return None
  return [dataset if c.seed == seed else
          data_lib.load_dataset(c.data, seed=c.seed) for c in configs]


def train_and_evaluate_parallel(config: ml_collections.ConfigDict,
                                workdir: str,
                                dataset: data_lib.Dataset) -> Dict[str, Any]:
  """Trains the ``parallel_runs`` runs of ``config`` in one program.

  Called by ``train.train_and_evaluate`` after it validated the config,
  checked the workdir and loaded ``dataset`` (with ``config.seed``).

  Returns:
    The content of ``workdir/results.json`` (see the module docstring), or
    ``{"interrupted": True, "step": step}`` after SIGTERM.

  Raises:
    train.ConfigError: invalid ``run_overrides`` or run config.
    train.TrainingError: a run diverged (``on_nonfinite='stop'``); the other
      runs' results are written first.
  """
  configs = run_configs(config)  # validated by train.validate_config
  r = len(configs)
  t = config.train
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    results_lib.write_atomic(os.path.join(workdir, "config.json"),
                             config.to_json(indent=2, sort_keys=True))
    for c in configs:
      results_lib.write_atomic(
          os.path.join(run_dir(workdir, c.seed), "config.json"),
          c.to_json(indent=2, sort_keys=True))

  mesh = train.make_mesh()
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  put = lambda a: jax.device_put(a, rep)
  per_run = _datasets(configs, dataset, config.seed)

  def split(get_images, get_labels):
    """A split on the devices: shared (as train places it) or per run."""
    if per_run is None:
      return train.place_examples(mesh, get_images(dataset),
                                  get_labels(dataset))
    return (put(np.stack([get_images(d) for d in per_run])),
            put(np.stack([get_labels(d) for d in per_run])))

  def constant(get):
    return put(get(dataset) if per_run is None
               else np.stack([get(d) for d in per_run]))

  train_images, train_labels = split(lambda d: d.train_images,
                                     lambda d: d.train_labels)
  mean, std = constant(lambda d: d.mean), constant(lambda d: d.std)
  num_train = int(train_labels.shape[-1])
  model = make_model(config, dataset.num_classes)
  task = train.Task(model, config, mesh, num_train, train.make_optimizer(t))
  hparams = {k: put(v) for k, v in step_hparams(configs).items()}

  state = init_states(task, configs, dataset.image_shape, dataset.num_classes)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=t.max_checkpoints)
  restored = ckpt.restore_latest_good(state)
  if restored is not None:
    logging.info("resumed %s from step %d", workdir, restored[0])
    state = restored[1]
  start_step = int(train.fetch(state["step"])[0])

  step_fn = make_step(task, per_run is not None)
  eval_fn = make_eval(task, per_run is not None)
  placed = {}

  def evaluate(variables, which="eval"):
    """Error and loss of every run on a split: two arrays of shape (R,)."""
    if which not in placed:
      images, labels = split(
          lambda d: getattr(d, f"{which}_images"),
          lambda d: getattr(d, f"{which}_labels"))
      layout = data_lib.eval_batches(int(labels.shape[-1]),
                                     t.eval_batch_size)
      placed[which] = (images, labels, put(layout.indices), put(layout.mask))
    images, labels, idx, mask = placed[which]
    ev = train.fetch(eval_fn(variables, images, labels, mean, std, idx, mask))
    return np.asarray(ev["error"]), np.asarray(ev["loss"])

  writers = [metrics_lib.create_writer(run_dir(workdir, c.seed))
             for c in configs]
  if start_step == 0:
    for w, c in zip(writers, configs):
      # pylint: disable-next=protected-access
      w.write_hparams(c.to_dict())
  progress = metrics_lib.ProgressLogger(
      t.steps, every_steps=t.log_every or None,
      every_secs=None if t.log_every else 60.0, start_step=start_step)

  def fetch_metrics(state):
    return {k: np.asarray(v) for k, v in train.fetch(state["metrics"]).items()}

  last = fetch_metrics(state)
  histories: List[List[Dict[str, Any]]] = [[] for _ in configs]
  failed: Dict[int, str] = {}
  eval_errors = train_errors = None
  # As in train: throughput excludes the first step (compilation) and the
  # evaluations.
  timing = {"start": None, "from_step": start_step, "eval_seconds": 0.0}
  wall_start = time.perf_counter()
  loop_end = None
  step = start_step
  name = dataset.eval_split

  def check_finite(state):
    if t.on_nonfinite != "stop":
      return
    bad = np.asarray(train.fetch(state["nonfinite_step"]))
    value = np.asarray(train.fetch(state["nonfinite_value"]))
    for k in np.flatnonzero(bad >= 0):
      if k not in failed:
        failed[k] = (f"non-finite loss or parameters at step {bad[k] + 1} "
                     f"(loss = {float(value[k])}); the run was frozen at its "
                     "last good state. Lower config.train.learning_rate, add "
                     "warm-up, or set config.train.on_nonfinite='skip'.")
        logging.warning("run %d (seed %d): %s", k, configs[k].seed, failed[k])
    if len(failed) == r:
      if is_main:
        for k, c in enumerate(configs):
          sweep.write_failure(run_dir(workdir, c.seed), train.TrainingError(
              failed[k]), seed=c.seed, step=int(bad[k]) + 1)
      raise train.TrainingError(
          f"all {r} parallel runs in {workdir} diverged; first: {failed[0]}")

  check_finite(state)
  try:
    with train._StopSignal() as stop:  # pylint: disable=protected-access
      while step < t.steps:
        state = step_fn(state, hparams, train_images, train_labels, mean, std)
        step += 1
        if timing["start"] is None:
          jax.block_until_ready(state["step"])
          timing["start"], timing["from_step"] = time.perf_counter(), step
        if stop.received is not None:
          ckpt.save(step, state)
          logging.warning("received signal %d: saved step %d to %s and "
                          "stopped; run the same command to resume",
                          stop.received, step, ckpt.directory)
          for w in writers:
            w.flush()
          return {"interrupted": True, "step": step}
        report = progress.should_report(step)
        do_eval = (t.eval_every and step % t.eval_every == 0) or step == t.steps
        do_ckpt = t.checkpoint_every and step % t.checkpoint_every == 0
        if not (report or do_eval or do_ckpt):
          continue
        m = fetch_metrics(state)
        check_finite(state)
        seen = m["seen"] - last["seen"]
        if seen.max() > 0:
          losses = (m["loss"] - last["loss"]) / np.maximum(seen / t.batch_size,
                                                           1)
          train_errors = (m["errors"] - last["errors"]) / np.maximum(seen, 1)
          last = m
          warm = np.asarray(train.fetch(state["warm"]))
          for k, (w, c) in enumerate(zip(writers, configs)):
            if k in failed:
              continue
            w.write_scalars(step, {
                "train_loss": float(losses[k]),
                "train_error": float(train_errors[k]),
                "learning_rate": float(train.learning_rate(
                    step - 1, bool(warm[k]), c.train))})
          if report:
            ok = [k for k in range(r) if k not in failed] or list(range(r))
            progress.report(step, t.batch_size * r, {
                "train_loss_mean": float(np.mean(losses[ok])),
                "train_error_mean": float(np.mean(train_errors[ok])),
                "failed_runs": len(failed)})
        if do_eval:
          eval_start = time.perf_counter()
          eval_errors, eval_losses = evaluate(state["variables"])
          for k, w in enumerate(writers):
            w.write_scalars(step, {f"{name}_error": float(eval_errors[k]),
                                   f"{name}_loss": float(eval_losses[k])})
            histories[k].append({"step": step,
                                 f"{name}_error": float(eval_errors[k])})
          logging.info("step %d: %s errors %s", step, name,
                       np.round(eval_errors, 4).tolist())
          timing["eval_seconds"] += time.perf_counter() - eval_start
        if do_ckpt or step == t.steps:
          ckpt.save(step, state)
        for w in writers:
          w.flush()
        if do_eval:
          progress.reset_timer(step)
      if ckpt.latest_step() != step:
        ckpt.save(step, state)
      jax.block_until_ready(state["step"])
      loop_end = time.perf_counter()
  finally:
    ckpt.close()
    for w in writers:
      w.close()

  check_finite(state)
  train_seconds = (loop_end - timing["start"] - timing["eval_seconds"]
                   if timing["start"] is not None else 0.0)
  if eval_errors is None:  # resumed at the end: evaluate once more
    eval_errors, _ = evaluate(state["variables"])
  test_errors = (eval_errors if name == "test"
                 else evaluate(state["variables"], "test")[0])
  total_rate = ((step - timing["from_step"]) * t.batch_size * r
                / train_seconds if train_seconds else None)
  skipped = np.asarray(train.fetch(state["skipped"]))
  variables = train.fetch(state["variables"])
  wall_seconds = time.perf_counter() - wall_start
  summary = []
  for k, c in enumerate(configs):
    path = run_dir(workdir, c.seed)
    entry = {"seed": c.seed, "dir": os.path.basename(path)}
    if k in failed:
      summary.append({**entry, "status": "failed", "error": failed[k]})
      if is_main:
        sweep.write_failure(path, train.TrainingError(failed[k]), seed=c.seed)
      continue
    result = {
        "test_error": float(test_errors[k]),
        "eval_split": name,
        "steps": step,
        "skipped_steps": int(skipped[k]),
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        # Each run's share of the program's throughput.
        "images_per_second": None if total_rate is None else total_rate / r,
        "final_train_error": (None if train_errors is None
                              else float(train_errors[k])),
        "num_params": models.num_params(
            jax.tree.map(lambda x, k=k: x[k], variables)),
        "history": histories[k],
        "config": json.loads(c.to_json()),
        "versions": train._versions(),  # pylint: disable=protected-access
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "parallel": {"runs": r, "index": k, "workdir": workdir},
    }
    if name != "test":
      result[f"{name}_error"] = float(eval_errors[k])
    if is_main:
      results_lib.write_json(os.path.join(path, sweep.RESULTS_FILE), result)
    summary.append({**entry, "status": "ok",
                    "test_error": result["test_error"]})
  combined = {"parallel_runs": r, "runs": summary, "steps": step,
              "wall_seconds": wall_seconds, "train_seconds": train_seconds,
              "images_per_second": total_rate,
              "config": json.loads(config.to_json())}
  if is_main:
    results_lib.write_json(os.path.join(workdir, sweep.RESULTS_FILE),
                           combined)
  if failed:
    raise train.TrainingError(
        f"{len(failed)} of {r} parallel runs in {workdir} diverged ("
        + "; ".join(f"seed {configs[k].seed}: {failed[k]}"
                    for k in sorted(failed))
        + "); the others' results are written")
  return combined
