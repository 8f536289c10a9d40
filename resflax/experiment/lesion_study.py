"""The lesion and path study of Veit et al. 2016 as one command.

``resflax.runner.run`` sends a config with a ``lesion`` section here
(``experiments/cifar_lesion.py``). ``run(config, workdir)``:

1. obtains the networks: the ResNet (``config.lesion.checkpoint`` or trained
   into ``workdir/resnet``), the plain VGG (``vgg_checkpoint`` or trained
   into ``workdir/vgg``) and, for the signal statistics, the ResNet's plain
   twin (``plain_checkpoint`` or trained into ``workdir/plain``), each with
   ``resflax.training.train_and_evaluate`` and restored from its
   checkpoints;
2. runs the analyses of ``lesion_analysis``, all lesions of one network
   through one compiled evaluator (``resflax.lesion.LesionEvaluator``):
   single deletions (Fig. 3), k deletions (Fig. 5a), swaps (Fig. 5b), path
   lengths and gradients (Fig. 6), signal statistics (He et al. Fig. 7);
3. writes ``workdir/lesion/``: one JSON, CSV and PNG per study
   (``lesion_plots``), ``summary.md`` with the findings in numbers
   (``lesion_summary``) and ``results.json``.

The study's ``setting`` (``lesion_plots.study_setting``, saved in
``results.json``) says what the networks are: a study of networks trained
on synthetic data (the smoke config) opens every PNG title and the summary
with "SYNTHETIC DATA — not a result", and Veit et al.'s numbers are drawn
beside ours only for their network (54 modules, CIFAR-10).

A network trained with stochastic depth (Veit Fig. 8) goes through the same
studies by pointing ``config.lesion.checkpoint`` at its run directory; its
evaluation scales each residual branch by its survival probability.
"""

import contextlib
import copy
import dataclasses
import datetime
import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from resflax import data as data_lib
from resflax import fileio, training
from resflax.errors import CheckpointError, ConfigError, TrainingError
from resflax.experiment import (
    lesion_import,
    lesion_plots,
    lesion_summary,
    path_survival,
)
from resflax.experiment.lesion_analysis import (
    Net,
    k_deletion_study,
    make_evaluator,
    path_study,
    reorder_study,
    signal_study,
    single_deletion_study,
)
from resflax.training import checkpoint as checkpoint_lib
from resflax.training import resume
from resflax.training import workdir as workdir_lib

# Every file the study writes into workdir/lesion (tests check them all).
OUTPUT_FILES = (
    "single_deletion.json",
    "single_deletion.csv",
    "single_deletion.png",
    "k_deletion.json",
    "k_deletion.csv",
    "k_deletion.png",
    "reorder.json",
    "reorder.csv",
    "reorder.png",
    "path_lengths.json",
    "path_lengths.csv",
    "path_lengths.png",
    "paths_remaining.json",
    "paths_remaining.csv",
    "paths_remaining.png",
    "signal.json",
    "signal_response_std.csv",
    "signal_gradients.csv",
    "signal_scale.csv",
    "signal_gates.csv",
    "signal_response_std.png",
    "signal_gradients.png",
    "summary.md",
    "results.json",
)


# --------------------------------------------------------------------------
# Configs and networks


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates ``config.lesion`` before anything is trained.

  Raises:
    ConfigError: naming the key and what is allowed.
  """
  if "lesion" not in config:
    raise ConfigError(
        "config has no 'lesion' section; start from "
        "experiments/cifar_lesion.py"
    )
  c = config.lesion
  allowed = set(_lesion_keys())
  unknown = sorted(set(c.keys()) - allowed)
  if unknown:
    raise ConfigError(
        f"unknown config.lesion key(s) {unknown}; valid "
        f"keys: {', '.join(sorted(allowed))}"
    )
  for key in (
      "max_k",
      "max_swaps",
      "eval_images",
      "eval_batch_size",
      "vgg_depth",
  ):
    if c.get(key, 0) < 0:
      raise ConfigError(f"config.lesion.{key}={c[key]} must be >= 0")
  for key in (
      "draws_per_k",
      "swap_draws",
      "path_samples",
      "path_batch",
      "path_pool",
      "path_chunk",
      "lesions_per_call",
      "signal_images",
  ):
    if c.get(key, 1) < 1:
      raise ConfigError(f"config.lesion.{key}={c[key]} must be >= 1")
  if not 0 < c.get("effective_share", 0.9) <= 1:
    raise ConfigError(
        f"config.lesion.effective_share="
        f"{c.effective_share} must be in (0, 1]"
    )
  for key in ("checkpoint", "vgg_checkpoint", "plain_checkpoint"):
    path = c.get(key, "")
    if path and not os.path.isfile(os.path.join(path, "config.json")):
      raise ConfigError(
          f"config.lesion.{key}={path!r} is not a resflax run directory (no "
          "config.json in it); give the --workdir of a training run"
      )
  lesion_import.check_imported(config)


def _lesion_keys():
  # The keys experiments/cifar_lesion.py defines; kept here so a config
  # written by hand is checked against the same list.
  return (
      "checkpoint",
      *lesion_import.IMPORTERS,
      "vgg_checkpoint",
      "vgg_depth",
      "vgg_widths",
      "plain_checkpoint",
      "train_plain",
      "eval_images",
      "eval_batch_size",
      "lesions_per_call",
      "max_k",
      "draws_per_k",
      "max_swaps",
      "swap_draws",
      "path_lengths",
      "path_samples",
      "path_batch",
      "path_pool",
      "path_chunk",
      "effective_share",
      "signal",
      "signal_images",
      "seed",
  )


def training_config(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The config without its ``lesion`` section: what trains the ResNet.

  Dropping the section keeps a resumed training run from seeing a config
  change when only study settings changed.
  """
  c = copy.deepcopy(config)
  with c.unlocked():
    if "lesion" in c:
      del c["lesion"]
  return c


def vgg_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The plain VGG-style net of Veit Fig. 3, trained with the same recipe."""
  c = training_config(config)
  with c.unlocked():
    c.model.name = "vgg"
    c.model.depth = int(config.lesion.vgg_depth)
    c.model.block = "single"
    c.model.shortcut = "none"
    c.model.projection = ""
    c.model.widths = tuple(config.lesion.vgg_widths)
    c.model.stochastic_depth = 1.0
    c.train.gradient_modules = 0
  return c


def plain_config(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The ResNet's plain twin (He et al.): the same net without shortcuts."""
  c = training_config(config)
  with c.unlocked():
    c.model.shortcut = "none"
    c.model.stochastic_depth = 1.0
    c.train.gradient_modules = 0
  return c


_DATASETS: dict[str, data_lib.Dataset] = {}


def _dataset(data_cfg, seed) -> data_lib.Dataset:
  # The three nets usually share their data: load (decode, statistics) once.
  key = json.dumps(
      {"data": data_cfg.to_dict(), "seed": seed}, sort_keys=True, default=str
  )
  if key not in _DATASETS:
    _DATASETS.clear()  # keep at most one dataset in host memory
    _DATASETS[key] = data_lib.load_dataset(data_cfg, seed=seed)
  return _DATASETS[key]


def load_run(run_dir: str, role: str = "resnet", *, data_path: str = "") -> Net:
  """Restores the newest intact checkpoint of a resflax run.

  Args:
    run_dir: the run's ``--workdir`` (holds ``config.json`` and
      ``checkpoints/``).
    role: a label for logs and outputs.
    data_path: if non-empty, replaces the run's ``config.data.path`` (the
      data moved since training).

  Returns:
    A Net.

  Raises:
    ConfigError: no ``config.json`` in ``run_dir``.
    CheckpointError: no checkpoint, or none restores.
  """
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(cfg_path):
    raise ConfigError(
        f"{run_dir} is not a resflax run directory: "
        f"{cfg_path} does not exist"
    )
  with open(cfg_path) as f:
    # Keys added to resflax since the run was written take their defaults.
    run_cfg = workdir_lib.with_defaults(json.load(f))
  if data_path:
    run_cfg.data.path = data_path
  dataset = _dataset(run_cfg.data, run_cfg.seed)
  spec = training.build_run(run_cfg, dataset.num_classes, dataset.num_train)
  model = spec.model
  # Abstract target: restoring needs shapes only, and compiling the
  # initialiser would cost more than the whole restore.
  target = jax.eval_shape(
      lambda: training.init_state(spec, run_cfg.seed, dataset.image_shape)
  )
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(
        f"{run_dir} has no checkpoints/ directory; train it first"
    )
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
  try:  # the training's own restore: any format resflax wrote, upgraded
    restored = resume.restore(ckpt, target, run_cfg.train.batch_size)
  finally:
    ckpt.close()
  if restored is None:
    raise CheckpointError(
        f"{ckpt_dir} holds no complete checkpoint; train {run_dir} first"
    )
  step, state = restored
  variables = dict(state.variables)
  variables["lesion"] = model.default_lesion()
  return Net(role, run_dir, run_cfg, model, variables, dataset, int(step))


def _obtain(
    role: str, checkpoint: str, train_cfg, workdir: str, data_path: str
) -> Net:
  if checkpoint:
    logging.info("lesion study: %s from %s", role, checkpoint)
    return load_run(checkpoint, role, data_path=data_path)
  run_dir = os.path.join(workdir, role)
  logging.info("lesion study: training the %s into %s", role, run_dir)
  training.train_and_evaluate(train_cfg, run_dir)
  return load_run(run_dir, role)


# --------------------------------------------------------------------------
# The command

_SIGNAL_FIELDS = {
    "response_std": [
        "network",
        "label",
        "layer",
        "position",
        "module",
        "stage",
        "unit",
        "downsampling",
        "conv",
        "std",
    ],
    "gradients": [
        "network",
        "label",
        "position",
        "module",
        "stage",
        "unit",
        "downsampling",
        "grad_norm",
    ],
    "scale": [
        "network",
        "position",
        "module",
        "stage",
        "downsampling",
        "lambda",
        "predicted",
        "ratio_full",
        "ratio_shortcut_only",
    ],
    "gates": [
        "network",
        "position",
        "module",
        "stage",
        "unit",
        "downsampling",
        "gate_mean",
    ],
}


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str):
  """Records the block's wall time in ``seconds[name]``, even if it raises."""
  tick = time.perf_counter()
  try:
    yield
  finally:
    seconds[name] = time.perf_counter() - tick


def _write(out: str, name: str, study, rows, fieldnames=None) -> None:
  fileio.write_json(os.path.join(out, f"{name}.json"), study)
  fileio.write_csv(
      os.path.join(out, f"{name}.csv"), rows, fieldnames=fieldnames
  )


def _networks(
    config, workdir: str, seconds: dict[str, float]
) -> tuple[Net, Net | None, Net | None, list[str]]:
  """``(resnet, vgg, plain, notes)``: trained or restored; None if unused."""
  c = config.lesion

  def obtain(role, checkpoint, cfg):
    with _timed(seconds, f"{role} (train or restore)"):
      return _obtain(role, checkpoint, cfg, workdir, config.data.path)

  # An imported network was trained elsewhere: nothing is trained for it,
  # and the VGG and plain twin come only from given runs.
  imported = lesion_import.imported_key(c)
  if imported:
    with _timed(seconds, "resnet (import)"):
      dataset = _dataset(config.data, config.seed)
      resnet = lesion_import.load_imported(config, dataset)
  else:
    resnet = obtain("resnet", c.checkpoint, training_config(config))
  vgg = (
      obtain("vgg", c.vgg_checkpoint, vgg_config(config))
      if c.vgg_checkpoint or (c.vgg_depth and not imported)
      else None
  )
  plain, notes = None, []
  if c.signal and (c.plain_checkpoint or (c.train_plain and not imported)):
    try:
      plain = obtain("plain", c.plain_checkpoint, plain_config(config))
    except TrainingError as e:
      # Deep plain nets may diverge (He et al.'s point); the other studies
      # still stand.
      notes.append(f"the plain twin did not train: {e}")
  return resnet, vgg, plain, notes


def _setting(nets) -> lesion_plots.Setting:
  """What the networks are (``nets[0]`` the ResNet), for titles and marks."""
  resnet, others = nets[0], [n for n in nets[1:] if n is not None]
  return lesion_plots.study_setting(
      resnet.model.num_modules,
      resnet.config.data.name,
      [n.config.data.name for n in others],
  )


def _lesion_studies(
    resnet: Net,
    vgg: Net | None,
    config,
    keys,
    out: str,
    seconds: dict[str, float],
    setting: lesion_plots.Setting,
) -> dict[str, Any]:
  """Fig. 3, 5a and 5b, one evaluator per network; writes their files."""
  c = config.lesion
  k_key, swap_key = keys
  chance = 1.0 - 1.0 / resnet.dataset.num_classes
  with _timed(seconds, "single deletions"):
    evaluators = {"resnet": make_evaluator(resnet, config)}
    single = {"resnet": single_deletion_study(resnet, evaluators["resnet"])}
    if vgg is not None:
      evaluators["vgg"] = make_evaluator(vgg, config)
      single["vgg"] = single_deletion_study(vgg, evaluators["vgg"])
  intact = single["resnet"]["stats"]["intact_error"]
  _write(
      out,
      "single_deletion",
      single,
      [r for st in single.values() for r in st["rows"]],
  )
  lesion_plots.plot_single(
      os.path.join(out, "single_deletion.png"), single, chance, setting=setting
  )

  ev = evaluators["resnet"]
  with _timed(seconds, "k deletions"):
    kd = k_deletion_study(resnet, ev, c.max_k, c.draws_per_k, k_key)
  kd["intact_error"] = intact
  _write(out, "k_deletion", kd, kd["rows"], ["k", "draw", "error", "loss"])
  lesion_plots.plot_k(
      os.path.join(out, "k_deletion.png"), kd, intact, setting=setting
  )

  with _timed(seconds, "swaps"):
    ro = reorder_study(resnet, ev, c.max_swaps, c.swap_draws, swap_key)
  ro["intact_error"] = intact
  _write(
      out,
      "reorder",
      ro,
      ro["rows"],
      ["swaps", "draw", "kendall_tau", "error", "loss"],
  )
  lesion_plots.plot_reorder(
      os.path.join(out, "reorder.png"), ro, intact, setting=setting
  )

  compilations = {role: e.compilations for role, e in evaluators.items()}
  return {
      "chance_error": chance,
      "eval_images": ev.num_images,
      "single_deletion": single,
      "k_deletion": kd,
      "reorder": ro,
      "compilations": max(compilations.values()),
      "evaluator_compilations": compilations,
  }


def _signal(
    config,
    resnet: Net,
    vgg: Net | None,
    plain: Net | None,
    notes: list[str],
    out: str,
    setting: lesion_plots.Setting,
) -> dict[str, Any]:
  """The signal statistics of the ResNet and a plain net; writes files."""
  # He et al. compare a ResNet with its plain twin; the VGG stands in as
  # the plain network only when there is no twin.
  sig = signal_study(
      [resnet, plain] if plain else [n for n in (resnet, vgg) if n], config
  )
  if plain is None and vgg is None:
    notes = notes + ["no plain network: the statistics of the ResNet alone"]
  elif plain is None:
    notes = notes + [
        "no plain twin (config.lesion.train_plain=False and no "
        "plain_checkpoint): the VGG is the plain network here"
    ]
  sig["notes"] = notes
  fileio.write_json(os.path.join(out, "signal.json"), sig)
  for name, fields in _SIGNAL_FIELDS.items():
    fileio.write_csv(
        os.path.join(out, f"signal_{name}.csv"), sig[name], fieldnames=fields
    )
  lesion_plots.plot_response(
      os.path.join(out, "signal_response_std.png"),
      sig["response_std"],
      setting=setting,
  )
  lesion_plots.plot_gradients(
      os.path.join(out, "signal_gradients.png"),
      sig["gradients"],
      sig["scale"],
      setting=setting,
  )
  return sig


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains or restores the networks and runs every study.

  Args:
    config: an experiment config with a ``lesion`` section
      (``experiments/cifar_lesion.py``).
    workdir: output directory; networks go to ``resnet/``, ``vgg/``,
      ``plain/`` and the study to ``lesion/`` (``OUTPUT_FILES``).

  Returns:
    The content of ``workdir/lesion/results.json``.

  Raises:
    ConfigError: an invalid ``config.lesion`` key.
    CheckpointError: a given run has no usable checkpoint.
  """
  check_config(config)
  c = config.lesion
  out = os.path.join(workdir, "lesion")
  os.makedirs(out, exist_ok=True)
  seconds: dict[str, float] = {}
  resnet, vgg, plain, notes = _networks(config, workdir, seconds)
  k_key, swap_key, path_key = jax.random.split(jax.random.key(c.seed), 3)
  setting = _setting((resnet, vgg, plain))
  res: dict[str, Any] = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "networks": {n.role: n.describe() for n in (resnet, vgg, plain) if n},
      "setting": dataclasses.asdict(setting),
  }
  res.update(
      _lesion_studies(
          resnet, vgg, config, (k_key, swap_key), out, seconds, setting
      )
  )
  with _timed(seconds, "paths"):
    res["paths"] = path_study(resnet, config, path_key)
  _write(out, "path_lengths", res["paths"], res["paths"]["rows"])
  lesion_plots.plot_paths(
      os.path.join(out, "path_lengths.png"), res["paths"], setting=setting
  )
  # Veit Fig. 7 for the deletions of Fig. 5a: weights play no part.
  deleted = {0, 1, 2, 5, *range(10, c.max_k + 1, 10), c.max_k}
  survival = path_survival.survival_study(resnet.model.num_modules, deleted)
  res["paths_remaining"] = survival["deleted"]
  _write(
      out, "paths_remaining", survival, survival["rows"], path_survival.FIELDS
  )
  path_survival.plot_survival(
      os.path.join(out, "paths_remaining.png"), survival, setting=setting
  )
  if c.signal:
    with _timed(seconds, "signal"):
      res["signal"] = _signal(config, resnet, vgg, plain, notes, out, setting)
  res["seconds"] = seconds
  res["config"] = json.loads(config.to_json())
  summary = lesion_summary.write_summary(os.path.join(out, "summary.md"), res)
  fileio.write_json(os.path.join(out, "results.json"), res)
  logging.info("lesion study written to %s\n%s", out, summary)
  return res
