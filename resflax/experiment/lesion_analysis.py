"""The analyses of the lesion study, one trained network at a time.

Veit et al. 2016: single deletions (Fig. 3), k deletions (Fig. 5a), swaps
(Fig. 5b), path lengths and the gradient per length (Fig. 6); He et al.
2016: the signal statistics (Fig. 7). Each takes a :class:`Net` and returns
a JSON-ready dict; all lesions of one network run through one compiled
``resflax.lesion.LesionEvaluator``. ``resflax.experiment.lesion_study``
obtains the networks and writes the results.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resflax import data as data_lib
from resflax import lesion as lesion_lib
from resflax import models
from resflax.errors import ConfigError
from resflax.experiment import paper
from resflax.lesion import paths as paths_lib
from resflax.lesion import signal_stats

PyTree = Any


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
    """One line naming the architecture, run directory and step."""
    c = self.model.config
    sd = (
        f", stochastic depth p_L={c.stochastic_depth}"
        if c.stochastic_depth < 1
        else ""
    )
    return (
        f"{c.name}-{c.depth} ({c.block} blocks, shortcut {c.shortcut}, "
        f"unit {c.unit}{sd}; {self.model.num_modules} modules; "
        f"{self.run_dir} step {self.step})"
    )


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
  """The compiled evaluator of ``net`` on the study's test images.

  Args:
    net: the network.
    config: the study's config (``config.lesion.eval_images``,
      ``eval_batch_size`` and ``lesions_per_call``).

  Returns:
    A ``resflax.lesion.LesionEvaluator``.
  """
  c = config.lesion
  images, labels = _eval_set(net, c.eval_images)
  batch = c.eval_batch_size or config.train.eval_batch_size
  return lesion_lib.LesionEvaluator(
      net.model,
      images,
      labels,
      net.dataset.mean,
      net.dataset.std,
      batch_size=batch,
      lesions_per_call=c.lesions_per_call,
  )


def single_deletion_study(net: Net, evaluator) -> dict[str, Any]:
  """Veit Fig. 3: the error with each single module deleted."""
  out = evaluator(
      net.variables, lesion_lib.single_deletion_lesions(net.variables)
  )
  intact = float(out["error"][0])
  rows = []
  for info, err, loss in zip(
      net.model.modules, out["error"][1:], out["loss"][1:]
  ):
    rows.append(
        {
            "network": net.role,
            "module": info.index,
            "stage": info.stage,
            "unit": info.unit,
            "downsampling": info.downsampling,
            "changes_shape": info.changes_shape,
            "error": float(err),
            "loss": float(loss),
            "intact_error": intact,
        }
    )
  errs = np.array([r["error"] for r in rows])
  down = np.array([r["downsampling"] for r in rows], bool)
  stats = {
      "intact_error": intact,
      "num_modules": len(rows),
      "mean_error": float(errs.mean()),
      "max_error": float(errs.max()),
      "min_error": float(errs.min()),
  }
  if (~down).any():
    stats["mean_error_non_downsampling"] = float(errs[~down].mean())
    stats["max_error_non_downsampling"] = float(errs[~down].max())
  if down.any():
    stats["mean_error_downsampling"] = float(errs[down].mean())
  return {"rows": rows, "stats": stats}


def k_deletion_study(
    net: Net, evaluator, max_k: int, draws: int, key
) -> dict[str, Any]:
  """Veit Fig. 5a: error after deleting k random modules, k = 1..max_k."""
  n = net.model.num_modules
  ks = np.repeat(np.arange(1, min(max_k, n) + 1), draws)
  if ks.size == 0:
    return {"rows": [], "per_k": []}
  keys = jax.random.split(key, ks.size)
  # k is data here: one small compiled function builds every lesion.
  lesions = jax.jit(
      jax.vmap(
          lambda k, kk: lesion_lib.delete_modules(net.variables, k, key=kk)[
              "lesion"
          ]
      )
  )(jnp.asarray(ks, jnp.int32), keys)
  out = evaluator(net.variables, lesions)
  rows = [
      {"k": int(k), "draw": i % draws, "error": float(e), "loss": float(l)}
      for i, (k, e, l) in enumerate(zip(ks, out["error"], out["loss"]))
  ]
  per_k = []
  for k in sorted(set(ks.tolist())):
    e = out["error"][ks == k]
    per_k.append(
        {
            "k": k,
            "mean": float(e.mean()),
            "std": float(e.std()),
            "min": float(e.min()),
            "max": float(e.max()),
            "draws": int(e.size),
        }
    )
  return {"rows": rows, "per_k": per_k}


def reorder_study(
    net: Net, evaluator, max_swaps: int, draws: int, key
) -> dict[str, Any]:
  """Veit Fig. 5b: error after s random swaps against Kendall's tau.

  Tau is ``reorder_modules``' own: over the modules that can move.
  """
  if max_swaps == 0 or lesion_lib.movable_modules(net.variables).size == 0:
    return {
        "rows": [],
        "skipped": "no stage has two same-shape modules to " "swap"
        if max_swaps
        else "max_swaps = 0",
    }
  ss = np.repeat(np.arange(1, max_swaps + 1), draws)
  keys = jax.random.split(key, ss.size)

  def one(s, kk):
    new, tau = lesion_lib.reorder_modules(net.variables, s, key=kk)
    return new["lesion"], tau

  lesions, taus = jax.jit(jax.vmap(one))(jnp.asarray(ss, jnp.int32), keys)
  out = evaluator(net.variables, lesions)
  rows = [
      {
          "swaps": int(s),
          "draw": i % draws,
          "kendall_tau": float(t),
          "error": float(e),
          "loss": float(l),
      }
      for i, (s, t, e, l) in enumerate(
          zip(ss, np.asarray(taus), out["error"], out["loss"])
      )
  ]
  tau = np.array([r["kendall_tau"] for r in rows])
  err = np.array([r["error"] for r in rows])
  corr = (
      float(np.corrcoef(tau, err)[0, 1])
      if tau.std() > 0 and err.std() > 0
      else None
  )
  return {"rows": rows, "pearson_tau_error": corr}


def path_pool(
    dataset: data_lib.Dataset, size: int, seed: int
) -> tuple[jax.Array, jax.Array]:
  """The training images the gradient-per-path samples draw batches from.

  A class-balanced random sample (``resflax.data.balanced_sample``; Veit et
  al. use random training batches): folder and archive loaders keep the
  classes in order, so the first ``size`` images would be one or two
  classes only.

  Args:
    dataset: the run's dataset.
    size: images in the pool (all of them if larger than the split).
    seed: seed of the sample.

  Returns:
    ``(images, labels)``: normalised float32 NHWC images and int32 labels.
  """
  idx = data_lib.balanced_sample(
      dataset.train_labels, min(size, dataset.num_train), seed
  )
  images = data_lib.normalize(
      jnp.asarray(dataset.train_images[idx]), dataset.mean, dataset.std
  )
  return images, jnp.asarray(dataset.train_labels[idx], jnp.int32)


def path_study(net: Net, config, key) -> dict[str, Any]:
  """Veit Fig. 6: path counts, gradient per length, total per length."""
  c = config.lesion
  n = net.model.num_modules
  lengths = list(c.path_lengths) or list(range(n + 1))
  bad = [k for k in lengths if not 0 <= k <= n]
  if bad:
    raise ConfigError(
        f"config.lesion.path_lengths has {bad}, outside "
        f"0..{n} (the network has {n} modules)"
    )
  images, labels = path_pool(net.dataset, c.path_pool, c.seed)
  pool = len(labels)
  grads = paths_lib.gradient_norm_by_path_length(
      net.model,
      net.variables,
      images,
      labels,
      lengths=lengths,
      samples=c.path_samples,
      key=key,
      batch_size=min(c.path_batch, pool),
      chunk=c.path_chunk,
  )
  counts = paths_lib.path_length_distribution(n)
  eff = paths_lib.effective_paths(
      n, grads.lengths, grads.mean, c.effective_share
  )
  # The shortest range holding Veit's share of all paths (equal weights).
  bulk = paths_lib.effective_paths(
      n,
      np.arange(n + 1),
      np.ones(n + 1),
      paper.lookup("veit", "path_length_bulk_pct") / 100,
  )
  # Decay per module: slope of log magnitude over the measured lengths.
  pos = grads.mean > 0
  decay = (
      float(
          np.exp(np.polyfit(grads.lengths[pos], np.log(grads.mean[pos]), 1)[0])
      )
      if pos.sum() >= 2
      else None
  )
  measured = dict(zip(grads.lengths.tolist(), zip(grads.mean, grads.std)))
  rows = []
  for k in range(n + 1):
    m = measured.get(k)
    rows.append(
        {
            "length": k,
            "paths": counts[k],
            "path_fraction": counts[k] / 2**n,
            "grad_mean": None if m is None else float(m[0]),
            "grad_std": None if m is None else float(m[1]),
            "total_gradient_share": float(eff.total[k]),
        }
    )
  return {
      "rows": rows,
      "num_modules": n,
      "gradients": grads.to_json(),
      "effective": eff.to_json(),
      "paths_95": {
          "low": bulk.low,
          "high": bulk.high,
          "path_share": bulk.path_share,
      },
      "decay_per_module": decay,
      "samples": c.path_samples,
      "batch": min(c.path_batch, pool),
      "pool": pool,
  }


def response_std_rows(net: Net, count: int, label: str) -> list[dict]:
  """He et al. Fig. 7 for one network: the std of each layer's response.

  The lesion study's signal statistics and a sweep's declared Fig. 7
  (``resflax.experiment.figures``) both take their rows from here.

  Args:
    net: the trained network.
    count: test images to measure on (``eval_subset``; <= 0: all).
    label: names the network in the rows (its line in the figure).

  Returns:
    ``signal_stats.response_stds``' rows, each with ``network`` (the
    net's role) and ``label``.
  """
  images, _ = _eval_set(net, count)
  x = data_lib.normalize(jnp.asarray(images), net.dataset.mean, net.dataset.std)
  return [
      {"network": net.role, "label": label, **r}
      for r in signal_stats.response_stds(net.model, net.variables, x)
  ]


def signal_study(nets: Sequence[Net], config) -> dict[str, Any]:
  """He et al. Fig. 7 and gradient / gate / lambda statistics per network."""
  out = {"response_std": [], "gradients": [], "scale": [], "gates": []}
  for net in nets:
    images, labels = _eval_set(net, config.lesion.signal_images)
    x = data_lib.normalize(
        jnp.asarray(images), net.dataset.mean, net.dataset.std
    )
    name = f"{net.role} ({net.model.config.name}-{net.model.config.depth})"
    out["response_std"] += response_std_rows(
        net, config.lesion.signal_images, name
    )
    for r in signal_stats.module_input_gradients(
        net.model, net.variables, x, labels
    ):
      out["gradients"].append({"network": net.role, "label": name, **r})
    for r in signal_stats.gate_statistics(net.model, net.variables, x):
      out["gates"].append({"network": net.role, **r})
    if net.role == "resnet":
      for r in signal_stats.scale_comparison(
          net.model, net.variables, x, labels
      ):
        out["scale"].append({"network": net.role, **r})
  return out
