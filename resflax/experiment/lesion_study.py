"""The lesion and path study of Veit et al. 2016 as one command.

``resflax.runner.run`` sends a config with a ``lesion`` section here
(``experiments/cifar_lesion.py``). ``run(config, workdir)``:

1. obtains the networks: the ResNet (``config.lesion.checkpoint`` or trained
   into ``workdir/resnet``), the plain VGG (``vgg_checkpoint`` or trained
   into ``workdir/vgg``) and, for the signal statistics, the ResNet's plain
   twin (``plain_checkpoint`` or trained into ``workdir/plain``), each with
   ``resflax.train.train_and_evaluate`` and restored from its checkpoints;
2. runs the studies, all lesions of one network through one compiled
   evaluator (``resflax.lesion.LesionEvaluator``):
   single deletions (Fig. 3), k deletions (Fig. 5a), swaps (Fig. 5b), path
   lengths and gradients (Fig. 6), signal statistics (He et al. Fig. 7);
3. writes ``workdir/lesion/``: one JSON, CSV and PNG per study,
   ``summary.md`` with the findings in numbers and ``results.json``.

A network trained with stochastic depth (Veit Fig. 8) goes through the same
studies by pointing ``config.lesion.checkpoint`` at its run directory; its
evaluation scales each residual branch by its survival probability.
"""

import copy
import dataclasses
import datetime
import json
import os
import time
from typing import Any, Dict, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resflax.training import checkpoint as checkpoint_lib
from resflax import data as data_lib
from resflax import lesion as lesion_lib
from resflax import models
from resflax.lesion import paths as paths_lib
from resflax import fileio as results_lib
from resflax.lesion import signal_stats
from resflax import train

PyTree = Any

# Every file the study writes into workdir/lesion (tests check them all).
OUTPUT_FILES = (
    "single_deletion.json", "single_deletion.csv", "single_deletion.png",
    "k_deletion.json", "k_deletion.csv", "k_deletion.png",
    "reorder.json", "reorder.csv", "reorder.png",
    "path_lengths.json", "path_lengths.csv", "path_lengths.png",
    "signal.json", "signal_response_std.csv", "signal_gradients.csv",
    "signal_scale.csv", "signal_gates.csv", "signal_response_std.png",
    "signal_gradients.png",
    "summary.md", "results.json",
)
SIGNAL_FILES = tuple(f for f in OUTPUT_FILES if f.startswith("signal"))


@dataclasses.dataclass
class Net:
  """A trained network ready for the studies.

  Attributes:
    role: 'resnet', 'vgg' or 'plain'.
    run_dir: its run directory.
    config: the run's config (from ``run_dir/config.json``).
    model: the network.
    variables: restored variables (with the intact lesion).
    dataset: the run's dataset (test split and normalisation).
    step: the restored checkpoint's step.
  """
  role: str
  run_dir: str
  config: ml_collections.ConfigDict
  model: models.Network
  variables: PyTree
  dataset: data_lib.Dataset
  step: int

  def describe(self) -> str:
    c = self.model.config
    sd = (f", stochastic depth p_L={c.stochastic_depth}"
          if c.stochastic_depth < 1 else "")
    return (f"{c.name}-{c.depth} ({c.block} blocks, shortcut {c.shortcut}, "
            f"unit {c.unit}{sd}; {self.model.num_modules} modules; "
            f"{self.run_dir} step {self.step})")


# --------------------------------------------------------------------------
# Configs and networks


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates ``config.lesion`` before anything is trained.

  Raises:
    train.ConfigError: naming the key and what is allowed.
  """
  if "lesion" not in config:
    raise train.ConfigError("config has no 'lesion' section; start from "
                            "experiments/cifar_lesion.py")
  c = config.lesion
  allowed = set(_lesion_keys())
  unknown = sorted(set(c.keys()) - allowed)
  if unknown:
    raise train.ConfigError(f"unknown config.lesion key(s) {unknown}; valid "
                            f"keys: {', '.join(sorted(allowed))}")
  for key in ("max_k", "max_swaps", "eval_images", "eval_batch_size",
              "vgg_depth"):
    if c.get(key, 0) < 0:
      raise train.ConfigError(f"config.lesion.{key}={c[key]} must be >= 0")
  for key in ("draws_per_k", "swap_draws", "path_samples", "path_batch",
              "path_pool", "path_chunk", "lesions_per_call",
              "signal_images"):
    if c.get(key, 1) < 1:
      raise train.ConfigError(f"config.lesion.{key}={c[key]} must be >= 1")
  if not 0 < c.get("effective_share", 0.9) <= 1:
    raise train.ConfigError(f"config.lesion.effective_share="
                            f"{c.effective_share} must be in (0, 1]")
  for key in ("checkpoint", "vgg_checkpoint", "plain_checkpoint"):
    path = c.get(key, "")
    if path and not os.path.isfile(os.path.join(path, "config.json")):
      raise train.ConfigError(
          f"config.lesion.{key}={path!r} is not a resflax run directory (no "
          "config.json in it); give the --workdir of a training run")


def _lesion_keys():
  # The keys experiments/cifar_lesion.py defines; kept here so a config
  # written by hand is checked against the same list.
  return ("checkpoint", "vgg_checkpoint", "vgg_depth", "vgg_widths",
          "plain_checkpoint", "train_plain", "eval_images", "eval_batch_size",
          "lesions_per_call", "max_k", "draws_per_k", "max_swaps",
          "swap_draws", "path_lengths", "path_samples", "path_batch",
          "path_pool", "path_chunk", "effective_share", "signal",
          "signal_images", "seed")


def training_config(config: ml_collections.ConfigDict
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


def plain_config(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  """The ResNet's plain twin (He et al.): the same net without shortcuts."""
  c = training_config(config)
  with c.unlocked():
    c.model.shortcut = "none"
    c.model.stochastic_depth = 1.0
    c.train.gradient_modules = 0
  return c


_DATASETS: Dict[str, data_lib.Dataset] = {}


def _dataset(data_cfg, seed) -> data_lib.Dataset:
  # The three nets usually share their data: load (decode, statistics) once.
  key = json.dumps({"data": data_cfg.to_dict(), "seed": seed},
                   sort_keys=True, default=str)
  if key not in _DATASETS:
    _DATASETS.clear()  # keep at most one dataset in host memory
    _DATASETS[key] = data_lib.load_dataset(data_cfg, seed=seed)
  return _DATASETS[key]


def load_run(run_dir: str, role: str = "resnet", *,
             data_path: str = "") -> Net:
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
    train.ConfigError: no ``config.json`` in ``run_dir``.
    checkpoint_lib.CheckpointError: no checkpoint, or none restores.
  """
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(cfg_path):
    raise train.ConfigError(f"{run_dir} is not a resflax run directory: "
                            f"{cfg_path} does not exist")
  with open(cfg_path) as f:
    run_cfg = ml_collections.ConfigDict(json.load(f))
  if data_path:
    run_cfg.data.path = data_path
  dataset = _dataset(run_cfg.data, run_cfg.seed)
  mcfg = train.model_config(run_cfg, jax.device_count())
  mcfg["num_classes"] = dataset.num_classes
  model = models.create_model(mcfg)
  task = train.Task(model, run_cfg, train.make_mesh(), dataset.num_train,
                    train.make_optimizer(run_cfg.train))
  # Abstract target: restoring needs shapes only, and compiling the
  # initialiser would cost more than the whole restore.
  target = jax.eval_shape(
      lambda: train.init_state(task, run_cfg.seed, dataset.image_shape))
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise checkpoint_lib.CheckpointError(
        f"{run_dir} has no checkpoints/ directory; train it first")
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
  try:
    restored = ckpt.restore_latest_good(target)
  finally:
    ckpt.close()
  if restored is None:
    raise checkpoint_lib.CheckpointError(
        f"{ckpt_dir} holds no complete checkpoint; train {run_dir} first")
  step, state = restored
  variables = dict(state["variables"])
  variables["lesion"] = model.default_lesion()
  return Net(role, run_dir, run_cfg, model, variables, dataset, int(step))


def _obtain(role: str, checkpoint: str, train_cfg, workdir: str,
            data_path: str) -> Net:
  if checkpoint:
    logging.info("lesion study: %s from %s", role, checkpoint)
    return load_run(checkpoint, role, data_path=data_path)
  run_dir = os.path.join(workdir, role)
  logging.info("lesion study: training the %s into %s", role, run_dir)
  train.train_and_evaluate(train_cfg, run_dir)
  return load_run(run_dir, role)


# --------------------------------------------------------------------------
# Studies


def eval_subset(num: int, count: int) -> np.ndarray:
  """Indices of ``count`` of ``num`` test images (all for count <= 0).

  A fixed random subset, in order: image-folder test splits are sorted by
  class, so the first N images would be a few classes only.
  """
  if count <= 0 or count >= num:
    return np.arange(num)
  return np.sort(np.random.default_rng(0).permutation(num)[:count])


def _eval_set(net: Net, count: int):
  ds = net.dataset
  idx = eval_subset(len(ds.test_labels), count)
  return ds.test_images[idx], ds.test_labels[idx]


def make_evaluator(net: Net, config) -> lesion_lib.LesionEvaluator:
  c = config.lesion
  images, labels = _eval_set(net, c.eval_images)
  batch = c.eval_batch_size or config.train.eval_batch_size
  return lesion_lib.LesionEvaluator(
      net.model, images, labels, net.dataset.mean, net.dataset.std,
      batch_size=batch, lesions_per_call=c.lesions_per_call)


def single_deletion_study(net: Net, evaluator) -> Dict[str, Any]:
  """Veit Fig. 3: the error with each single module deleted."""
  out = evaluator(net.variables,
                  lesion_lib.single_deletion_lesions(net.variables))
  intact = float(out["error"][0])
  rows = []
  for info, err, loss in zip(net.model.modules, out["error"][1:],
                             out["loss"][1:]):
    rows.append({"network": net.role, "module": info.index,
                 "stage": info.stage, "unit": info.unit,
                 "downsampling": info.downsampling,
                 "changes_shape": info.changes_shape, "error": float(err),
                 "loss": float(loss), "intact_error": intact})
  errs = np.array([r["error"] for r in rows])
  down = np.array([r["downsampling"] for r in rows], bool)
  stats = {"intact_error": intact, "num_modules": len(rows),
           "mean_error": float(errs.mean()), "max_error": float(errs.max()),
           "min_error": float(errs.min())}
  if (~down).any():
    stats["mean_error_non_downsampling"] = float(errs[~down].mean())
    stats["max_error_non_downsampling"] = float(errs[~down].max())
  if down.any():
    stats["mean_error_downsampling"] = float(errs[down].mean())
  return {"rows": rows, "stats": stats}


def k_deletion_study(net: Net, evaluator, max_k: int, draws: int,
                     key) -> Dict[str, Any]:
  """Veit Fig. 5a: error after deleting k random modules, k = 1..max_k."""
  n = net.model.num_modules
  ks = np.repeat(np.arange(1, min(max_k, n) + 1), draws)
  if ks.size == 0:
    return {"rows": [], "per_k": []}
  keys = jax.random.split(key, ks.size)
  # k is data here: one small compiled function builds every lesion.
  lesions = jax.jit(jax.vmap(lambda k, kk: lesion_lib.delete_modules(
      net.variables, k, key=kk)["lesion"]))(jnp.asarray(ks, jnp.int32), keys)
  out = evaluator(net.variables, lesions)
  rows = [{"k": int(k), "draw": i % draws, "error": float(e),
           "loss": float(l)}
          for i, (k, e, l) in enumerate(zip(ks, out["error"], out["loss"]))]
  per_k = []
  for k in sorted(set(ks.tolist())):
    e = out["error"][ks == k]
    per_k.append({"k": k, "mean": float(e.mean()), "std": float(e.std()),
                  "min": float(e.min()), "max": float(e.max()),
                  "draws": int(e.size)})
  return {"rows": rows, "per_k": per_k}


def reorder_study(net: Net, evaluator, max_swaps: int, draws: int,
                  key) -> Dict[str, Any]:
  """Veit Fig. 5b: error after s random swaps against Kendall's tau."""
  sizes = lesion_lib.stage_sizes(net.variables)
  if max_swaps == 0 or not any(s - 1 >= 2 for s in sizes):
    return {"rows": [], "skipped": "no stage has two same-shape modules to "
                                   "swap" if max_swaps else "max_swaps = 0"}
  ss = np.repeat(np.arange(1, max_swaps + 1), draws)
  keys = jax.random.split(key, ss.size)

  def one(s, kk):
    new, tau = lesion_lib.reorder_modules(net.variables, s, key=kk)
    return new["lesion"], tau

  lesions, taus = jax.jit(jax.vmap(one))(jnp.asarray(ss, jnp.int32), keys)
  out = evaluator(net.variables, lesions)
  rows = [{"swaps": int(s), "draw": i % draws, "kendall_tau": float(t),
           "error": float(e), "loss": float(l)}
          for i, (s, t, e, l) in enumerate(zip(ss, np.asarray(taus),
                                               out["error"], out["loss"]))]
  tau = np.array([r["kendall_tau"] for r in rows])
  err = np.array([r["error"] for r in rows])
  corr = (float(np.corrcoef(tau, err)[0, 1])
          if tau.std() > 0 and err.std() > 0 else None)
  return {"rows": rows, "pearson_tau_error": corr}


def path_study(net: Net, config, key) -> Dict[str, Any]:
  """Veit Fig. 6: path counts, gradient per length, total per length."""
  c = config.lesion
  n = net.model.num_modules
  lengths = list(c.path_lengths) or list(range(n + 1))
  bad = [k for k in lengths if not 0 <= k <= n]
  if bad:
    raise train.ConfigError(f"config.lesion.path_lengths has {bad}, outside "
                            f"0..{n} (the network has {n} modules)")
  ds = net.dataset
  pool = min(c.path_pool, ds.num_train)
  images = data_lib.normalize(jnp.asarray(ds.train_images[:pool]), ds.mean,
                              ds.std)
  labels = jnp.asarray(ds.train_labels[:pool], jnp.int32)
  grads = paths_lib.gradient_norm_by_path_length(
      net.model, net.variables, images, labels, lengths=lengths,
      samples=c.path_samples, key=key, batch_size=min(c.path_batch, pool),
      chunk=c.path_chunk)
  counts = paths_lib.path_length_distribution(n)
  eff = paths_lib.effective_paths(n, grads.lengths, grads.mean,
                                  c.effective_share)
  # Veit: "more than 95% of paths pass through 19 to 35 modules" (n = 54).
  bulk = paths_lib.effective_paths(n, np.arange(n + 1), np.ones(n + 1), 0.95)
  # Decay per module: slope of log magnitude over the measured lengths.
  pos = grads.mean > 0
  decay = (float(np.exp(np.polyfit(grads.lengths[pos],
                                    np.log(grads.mean[pos]), 1)[0]))
           if pos.sum() >= 2 else None)
  measured = dict(zip(grads.lengths.tolist(), zip(grads.mean, grads.std)))
  rows = []
  for k in range(n + 1):
    m = measured.get(k)
    rows.append({"length": k, "paths": counts[k],
                 "path_fraction": counts[k] / 2 ** n,
                 "grad_mean": None if m is None else float(m[0]),
                 "grad_std": None if m is None else float(m[1]),
                 "total_gradient_share": float(eff.total[k])})
  return {"rows": rows, "num_modules": n, "gradients": grads.to_json(),
          "effective": eff.to_json(), "paths_95": {
              "low": bulk.low, "high": bulk.high,
              "path_share": bulk.path_share},
          "decay_per_module": decay, "samples": c.path_samples,
          "batch": min(c.path_batch, pool)}


def signal_study(nets: Sequence[Net], config) -> Dict[str, Any]:
  """He et al. Fig. 7 and gradient / gate / lambda statistics per network."""
  out = {"response_std": [], "gradients": [], "scale": [], "gates": []}
  for net in nets:
    images, labels = _eval_set(net, config.lesion.signal_images)
    x = data_lib.normalize(jnp.asarray(images), net.dataset.mean,
                           net.dataset.std)
    name = f"{net.role} ({net.model.config.name}-{net.model.config.depth})"
    for r in signal_stats.response_stds(net.model, net.variables, x):
      out["response_std"].append({"network": net.role, "label": name, **r})
    for r in signal_stats.module_input_gradients(net.model, net.variables, x,
                                                 labels):
      out["gradients"].append({"network": net.role, "label": name, **r})
    for r in signal_stats.gate_statistics(net.model, net.variables, x):
      out["gates"].append({"network": net.role, **r})
    if net.role == "resnet":
      for r in signal_stats.scale_comparison(net.model, net.variables, x,
                                             labels):
        out["scale"].append({"network": net.role, **r})
  return out


# --------------------------------------------------------------------------
# Figures


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _ref_line(ax, value, label="intact network"):
  ax.axhline(value, color="k", ls="--", lw=1, label=f"{label} ({value:.3f})")


def plot_single(path, studies: Mapping[str, Dict[str, Any]], chance: float):
  plt = _plt()
  fig, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 4),
                           squeeze=False)
  for ax, (role, st) in zip(axes[0], studies.items()):
    rows = st["rows"]
    idx = np.array([r["module"] for r in rows]) + 1
    err = np.array([r["error"] for r in rows])
    down = np.array([r["downsampling"] for r in rows], bool)
    ax.plot(idx, err, "-", color="tab:blue", lw=1)
    ax.plot(idx[~down], err[~down], "o", color="tab:blue", ms=4,
            label="module deleted")
    if down.any():
      ax.plot(idx[down], err[down], "s", color="tab:red", ms=6,
              label="downsampling module deleted")
    _ref_line(ax, st["stats"]["intact_error"])
    ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance ({chance:.2f})")
    what = "module" if role == "resnet" else "layer"
    ax.set_xlabel(f"deleted {what} (forward order)")
    ax.set_ylabel("test error")
    ax.set_ylim(0, 1)
    ax.set_title(f"{role}: one {what} deleted (Veit Fig. 3)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_k(path, study, intact):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  per = study["per_k"]
  ks = [p["k"] for p in per]
  ax.errorbar(ks, [p["mean"] for p in per], yerr=[p["std"] for p in per],
              fmt="o-", capsize=3, label="mean ± std over draws")
  r = study["rows"]
  ax.plot([x["k"] for x in r], [x["error"] for x in r], ".", color="gray",
          alpha=0.5, label="single draws")
  _ref_line(ax, intact)
  ax.set_xlabel("number of modules deleted (k)")
  ax.set_ylabel("test error")
  ax.set_title("k random modules deleted (Veit Fig. 5a)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_reorder(path, study, intact):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  rows = study["rows"]
  if rows:
    sc = ax.scatter([r["kendall_tau"] for r in rows],
                    [r["error"] for r in rows], c=[r["swaps"] for r in rows],
                    cmap="viridis", s=14)
    fig.colorbar(sc, ax=ax, label="pairs swapped")
  else:
    ax.text(0.5, 0.5, study.get("skipped", "no swaps"), ha="center",
            transform=ax.transAxes)
  _ref_line(ax, intact)
  ax.invert_xaxis()  # tau falls from 1 as the order is corrupted
  ax.set_xlabel("Kendall tau between new and original order")
  ax.set_ylabel("test error")
  ax.set_title("random pairs of modules swapped (Veit Fig. 5b)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_paths(path, study):
  plt = _plt()
  rows = study["rows"]
  n = study["num_modules"]
  k = np.arange(n + 1)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4))
  ax = axes[0]
  ax.bar(k, [r["path_fraction"] for r in rows], color="tab:blue")
  ax.set_xlabel("path length (modules)")
  ax.set_ylabel("fraction of all 2^n paths")
  ax.set_title(f"(a) path length distribution, n = {n}")
  ax = axes[1]
  g = study["gradients"]
  ax.errorbar(g["lengths"], g["mean"], yerr=g["std"], fmt="o", ms=3,
              capsize=2)
  ax.set_yscale("log")
  ax.set_xlabel("path length k")
  ax.set_ylabel("gradient norm at the input")
  ax.set_title(f"(b) gradient per path length ({g['samples']} samples)")
  ax = axes[2]
  eff = study["effective"]
  ax.plot(k, [r["total_gradient_share"] for r in rows], "-o", ms=3)
  ax.axvspan(eff["low"] - 0.5, eff["high"] + 0.5, color="tab:orange",
             alpha=0.25, label=f"{eff['gradient_share']:.0%} of the "
                               f"gradient: {eff['low']}-{eff['high']}")
  ax.set_xlabel("path length k")
  ax.set_ylabel("share of the total gradient")
  ax.set_title("(c) total gradient per path length")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_response(path, rows):
  plt = _plt()
  fig, axes = plt.subplots(2, 1, figsize=(7, 7))
  for label in dict.fromkeys(r["label"] for r in rows):
    std = np.array([r["std"] for r in rows if r["label"] == label])
    axes[0].plot(np.arange(1, std.size + 1), std, "-", label=label)
    axes[1].plot(np.arange(1, std.size + 1), np.sort(std)[::-1], "-",
                 label=label)
  axes[0].set_xlabel("layer index (original)")
  axes[1].set_xlabel("layer index (sorted by magnitude)")
  for ax in axes:
    ax.set_ylabel("std of response (after BN, before ReLU/add)")
    ax.legend(fontsize=8)
  axes[0].set_title("layer responses (He et al. 2016 Fig. 7)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_gradients(path, grad_rows, scale_rows):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(13, 4))
  ax = axes[0]
  for label in dict.fromkeys(r["label"] for r in grad_rows):
    rs = [r for r in grad_rows if r["label"] == label]
    ax.plot([r["position"] for r in rs], [r["grad_norm"] for r in rs], "-o",
            ms=3, label=label)
  ax.set_yscale("log")
  ax.set_xlabel("module input (forward order; last = head input)")
  ax.set_ylabel("norm of d loss / d x")
  ax.set_title("gradient at every module input")
  ax.legend(fontsize=8)
  ax = axes[1]
  if scale_rows:
    lam = scale_rows[0]["lambda"]
    pos = [r["position"] for r in scale_rows]
    ax.plot(pos, [r["predicted"] for r in scale_rows], "k--",
            label=f"lambda^(L-l), lambda = {lam}")
    ax.plot(pos, [r["ratio_shortcut_only"] for r in scale_rows], "-o", ms=3,
            label="measured, shortcuts only")
    ax.plot(pos, [r["ratio_full"] for r in scale_rows], "-s", ms=3,
            label="measured, whole network")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
  ax.set_xlabel("module input l")
  ax.set_ylabel("gradient at x_l / gradient at x_L")
  ax.set_title("scaled shortcut h(x) = lambda x (Identity Mappings eq. 7)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# --------------------------------------------------------------------------
# Summary


def _pct(x):
  return "n/a" if x is None else f"{100 * x:.2f}%"


def write_summary(path, res: Mapping[str, Any]) -> str:
  """Writes ``summary.md``: the findings in numbers."""
  lines = ["# Lesion and path study (Veit et al. 2016)", ""]
  lines.append(f"Date: {res['date']}. Networks:")
  for role, desc in res["networks"].items():
    lines.append(f"- {role}: {desc}")
  lines.append(f"- evaluated on {res['eval_images']} test images; "
               f"{res['compilations']} compilation(s) of the lesion "
               "evaluator per network")
  lines += ["", "## Deleting single modules (Fig. 3)", ""]
  for role, st in res["single_deletion"].items():
    s = st["stats"]
    lines.append(f"- {role}: intact error {_pct(s['intact_error'])}; one "
                 f"module deleted: mean {_pct(s['mean_error'])}, worst "
                 f"{_pct(s['max_error'])}.")
    if "mean_error_non_downsampling" in s and "mean_error_downsampling" in s:
      lines.append(
          f"  Non-downsampling module deleted: mean "
          f"{_pct(s['mean_error_non_downsampling'])} (worst "
          f"{_pct(s['max_error_non_downsampling'])}); downsampling module "
          f"deleted: mean {_pct(s['mean_error_downsampling'])}.")
  lines.append(f"- chance level: {_pct(res['chance_error'])}.")
  k = res["k_deletion"]["per_k"]
  if k:
    lines += ["", "## Deleting k modules (Fig. 5a)", "",
              "| k | mean error | std | min | max |", "|---|---|---|---|---|"]
    for p in k:
      lines.append(f"| {p['k']} | {_pct(p['mean'])} | {_pct(p['std'])} | "
                   f"{_pct(p['min'])} | {_pct(p['max'])} |")
  r = res["reorder"]
  lines += ["", "## Swapping modules (Fig. 5b)", ""]
  if r["rows"]:
    taus = [x["kendall_tau"] for x in r["rows"]]
    errs = [x["error"] for x in r["rows"]]
    corr = r["pearson_tau_error"]
    lines.append(
        f"- Kendall tau {min(taus):.3f}..{max(taus):.3f}; error "
        f"{_pct(min(errs))}..{_pct(max(errs))}; Pearson correlation of tau "
        f"and error: {'n/a' if corr is None else f'{corr:.2f}'}.")
  else:
    lines.append(f"- skipped: {r.get('skipped')}")
  p = res["paths"]
  e = p["effective"]
  lines += ["", "## Paths (Fig. 6)", "",
            f"- n = {p['num_modules']} modules, 2^{p['num_modules']} paths; "
            f"95% of the paths have length {p['paths_95']['low']} to "
            f"{p['paths_95']['high']} (Veit, n = 54: 19 to 35).",
            f"- Gradient magnitude per extra module on the path: x"
            f"{p['decay_per_module']:.3f} (fit over the measured lengths; "
            f"{p['samples']} samples of {p['batch']} images per length)."
            if p["decay_per_module"] is not None else
            "- Gradient magnitude: too few lengths measured for a fit.",
            f"- Effective paths: lengths {e['low']} to {e['high']} carry "
            f"{e['gradient_share']:.1%} of the total gradient and are "
            f"{e['path_share']:.2%} of all paths (Veit, ResNet-110: 5 to 17, "
            "0.45%)."]
  sig = res.get("signal")
  if sig:
    lines += ["", "## Signal propagation (He et al. Fig. 7)", ""]
    by = {}
    for row in sig["response_std"]:
      by.setdefault(row["label"], []).append(row["std"])
    for label, v in by.items():
      lines.append(f"- {label}: response std mean {np.mean(v):.3f}, "
                   f"median {np.median(v):.3f} over {len(v)} layers.")
    gby = {}
    for row in sig["gradients"]:
      gby.setdefault(row["label"], []).append(row["grad_norm"])
    for label, v in gby.items():
      ratio = v[0] / v[-1] if v[-1] else float("nan")
      lines.append(f"- {label}: gradient at the first module input / at "
                   f"the head input = {ratio:.3g}.")
    if sig["scale"]:
      first = sig["scale"][0]
      lines.append(
          f"- lambda = {first['lambda']}: shortcut-only gradient at the "
          f"first module relative to x_L = {first['ratio_shortcut_only']:.3g}"
          f" against lambda^L = {first['predicted']:.3g}; whole network "
          f"{first['ratio_full']:.3g}.")
    if sig["gates"]:
      gm = [g["gate_mean"] for g in sig["gates"]]
      lines.append(f"- gates: mean g = {np.mean(gm):.3f} (min {min(gm):.3f},"
                   f" max {max(gm):.3f}); below 0.5 leans to the skip.")
    else:
      lines.append("- no gated shortcuts in these networks.")
    for note in sig.get("notes", []):
      lines.append(f"- {note}")
  lines += ["", "## Time", ""]
  for name, sec in res["seconds"].items():
    lines.append(f"- {name}: {sec:.1f} s")
  text = "\n".join(lines) + "\n"
  results_lib.write_atomic(path, text)
  return text


# --------------------------------------------------------------------------
# The command


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains or restores the networks and runs every study.

  Args:
    config: an experiment config with a ``lesion`` section
      (``experiments/cifar_lesion.py``).
    workdir: output directory; networks go to ``resnet/``, ``vgg/``,
      ``plain/`` and the study to ``lesion/``.

  Returns:
    The content of ``workdir/lesion/results.json``.

  Raises:
    train.ConfigError: an invalid ``config.lesion`` key.
    checkpoint_lib.CheckpointError: a given run has no usable checkpoint.
  """
  check_config(config)
  c = config.lesion
  out = os.path.join(workdir, "lesion")
  os.makedirs(out, exist_ok=True)
  seconds = {}
  data_path = config.data.path

  tick = time.perf_counter()
  resnet = _obtain("resnet", c.checkpoint, training_config(config), workdir,
                   data_path)
  seconds["resnet (train or restore)"] = time.perf_counter() - tick
  vgg = plain = None
  if c.vgg_checkpoint or c.vgg_depth:
    tick = time.perf_counter()
    vgg = _obtain("vgg", c.vgg_checkpoint, vgg_config(config), workdir,
                  data_path)
    seconds["vgg (train or restore)"] = time.perf_counter() - tick
  notes = []
  if c.signal and (c.plain_checkpoint or c.train_plain):
    tick = time.perf_counter()
    try:
      plain = _obtain("plain", c.plain_checkpoint, plain_config(config),
                      workdir, data_path)
    except train.TrainingError as e:
      # Deep plain nets may diverge (He et al.'s point); the other studies
      # still stand.
      notes.append(f"the plain twin did not train: {e}")
    seconds["plain (train or restore)"] = time.perf_counter() - tick

  key = jax.random.key(c.seed)
  k_key, swap_key, path_key = jax.random.split(key, 3)
  res: Dict[str, Any] = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "networks": {n.role: n.describe() for n in (resnet, vgg, plain) if n},
      "chance_error": 1.0 - 1.0 / resnet.dataset.num_classes,
  }

  tick = time.perf_counter()
  ev = make_evaluator(resnet, config)
  res["eval_images"] = ev.num_images
  single = {"resnet": single_deletion_study(resnet, ev)}
  compilations = {"resnet": None}
  if vgg is not None:
    ev_vgg = make_evaluator(vgg, config)
    single["vgg"] = single_deletion_study(vgg, ev_vgg)
    compilations["vgg"] = ev_vgg.compilations
  seconds["single deletions"] = time.perf_counter() - tick
  intact = single["resnet"]["stats"]["intact_error"]
  res["single_deletion"] = single
  rows = [r for st in single.values() for r in st["rows"]]
  results_lib.write_json(os.path.join(out, "single_deletion.json"), single)
  results_lib.write_csv(os.path.join(out, "single_deletion.csv"), rows)
  plot_single(os.path.join(out, "single_deletion.png"), single,
              res["chance_error"])

  tick = time.perf_counter()
  kd = k_deletion_study(resnet, ev, c.max_k, c.draws_per_k, k_key)
  kd["intact_error"] = intact
  seconds["k deletions"] = time.perf_counter() - tick
  res["k_deletion"] = kd
  results_lib.write_json(os.path.join(out, "k_deletion.json"), kd)
  results_lib.write_csv(os.path.join(out, "k_deletion.csv"), kd["rows"],
                        fieldnames=["k", "draw", "error", "loss"])
  plot_k(os.path.join(out, "k_deletion.png"), kd, intact)

  tick = time.perf_counter()
  ro = reorder_study(resnet, ev, c.max_swaps, c.swap_draws, swap_key)
  ro["intact_error"] = intact
  seconds["swaps"] = time.perf_counter() - tick
  res["reorder"] = ro
  compilations["resnet"] = ev.compilations
  results_lib.write_json(os.path.join(out, "reorder.json"), ro)
  results_lib.write_csv(os.path.join(out, "reorder.csv"), ro["rows"],
                        fieldnames=["swaps", "draw", "kendall_tau", "error",
                                    "loss"])
  plot_reorder(os.path.join(out, "reorder.png"), ro, intact)
  res["compilations"] = max(v for v in compilations.values() if v)
  res["evaluator_compilations"] = compilations

  tick = time.perf_counter()
  ps = path_study(resnet, config, path_key)
  seconds["paths"] = time.perf_counter() - tick
  res["paths"] = ps
  results_lib.write_json(os.path.join(out, "path_lengths.json"), ps)
  results_lib.write_csv(os.path.join(out, "path_lengths.csv"), ps["rows"])
  plot_paths(os.path.join(out, "path_lengths.png"), ps)

  if c.signal:
    tick = time.perf_counter()
    # He et al. compare a ResNet with its plain twin; the VGG stands in as
    # the plain network only when there is no twin.
    sig = signal_study([resnet, plain] if plain else
                       [n for n in (resnet, vgg) if n], config)
    if plain is None:
      notes.append("no plain twin (config.lesion.train_plain=False and no "
                   "plain_checkpoint): the VGG is the plain network here")
    sig["notes"] = notes
    seconds["signal"] = time.perf_counter() - tick
    res["signal"] = sig
    results_lib.write_json(os.path.join(out, "signal.json"), sig)
    for name, fields in (
        ("response_std", ["network", "label", "layer", "position", "module",
                          "stage", "unit", "downsampling", "conv", "std"]),
        ("gradients", ["network", "label", "position", "module", "stage",
                       "unit", "downsampling", "grad_norm"]),
        ("scale", ["network", "position", "module", "stage", "downsampling",
                   "lambda", "predicted", "ratio_full",
                   "ratio_shortcut_only"]),
        ("gates", ["network", "position", "module", "stage", "unit",
                   "downsampling", "gate_mean"])):
      results_lib.write_csv(os.path.join(out, f"signal_{name}.csv"),
                            sig[name], fieldnames=fields)
    plot_response(os.path.join(out, "signal_response_std.png"),
                  sig["response_std"])
    plot_gradients(os.path.join(out, "signal_gradients.png"),
                   sig["gradients"], sig["scale"])

  res["seconds"] = seconds
  res["config"] = json.loads(config.to_json())
  summary = write_summary(os.path.join(out, "summary.md"), res)
  results_lib.write_json(os.path.join(out, "results.json"), res)
  logging.info("lesion study written to %s\n%s", out, summary)
  return res
