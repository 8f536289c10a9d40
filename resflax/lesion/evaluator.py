"""One compiled evaluator for every lesion of a network (Veit Fig. 3, 5).

Lesions and orders are data in a network's ``lesion`` collection (see
:mod:`resflax.lesion.ops`), so the test error of all of them, and of other
checkpoints of the same architecture, comes from one compiled program.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resflax import data as data_lib
from resflax.lesion import ops
from resflax.models import Network, scoring

__all__ = ["LesionEvaluator"]


class LesionEvaluator:
  """Test error of many lesions of one network, through one compilation.

  The images live on the device; a call evaluates a stack of lesions in
  chunks of ``lesions_per_call``, scanning over fixed-shape image batches.
  Chunks are padded with the intact lesion, so every call has the same
  shapes and the function compiles once for all lesions, orders and even
  other checkpoints of the same architecture.

  Inside the one program two branches are chosen by data (``lax.cond``):

  * the lesions of a chunk share one order (deletions, Veit Fig. 3/5a):
    the ``active`` arrays are vmapped, the weights are not, so the lesions
    run as one larger batch and the stem is computed once;
  * the orders differ (swaps, Fig. 5b): the lesions run one after another
    (``lax.map``). Vmapping differing orders would gather a different
    weight stack per lesion, turning every convolution into a batched-kernel
    (grouped) one, many times slower on CPU.

  Example::

    ev = LesionEvaluator(model, ds.test_images, ds.test_labels, ds.mean,
                         ds.std, batch_size=500, lesions_per_call=4)
    out = ev(variables, single_deletion_lesions(variables))
    out['error']          # numpy [n + 1]
    ev.compilations       # 1
  """

  def __init__(
      self,
      model: Network,
      images,
      labels,
      mean,
      std,
      *,
      batch_size: int = 500,
      lesions_per_call: int = 1,
  ):
    """Puts the evaluation set on the device and builds the jitted function.

    Args:
      model: the network (``resflax.models.create_model``).
      images: uint8 NHWC images (e.g. ``Dataset.test_images``).
      labels: int labels.
      mean, std: normalisation constants of the training set.
      batch_size: images per scanned batch (the last batch is padded and
        masked, so every image counts once).
      lesions_per_call: lesions evaluated per call (vmapped when they share
        an order). Memory grows linearly with it.

    Raises:
      ValueError: empty images, mismatched labels, or non-positive sizes.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or len(images) == 0 or len(images) != len(labels):
      raise ValueError(
          f"LesionEvaluator needs NHWC images and one label "
          f"each; got images {images.shape}, labels "
          f"{labels.shape}"
      )
    if batch_size <= 0 or lesions_per_call <= 0:
      raise ValueError(
          f"batch_size ({batch_size}) and lesions_per_call "
          f"({lesions_per_call}) must be positive"
      )
    self.model = model
    self.num_images = len(images)
    self.lesions_per_call = int(lesions_per_call)
    layout = data_lib.eval_batches(len(images), min(batch_size, len(images)))
    self._data = tuple(
        jax.device_put(a)
        for a in (
            images,
            labels.astype(np.int32),
            np.asarray(mean, np.float32),
            np.asarray(std, np.float32),
            layout.indices,
            layout.mask,
        )
    )
    self._fn = jax.jit(self._errors)
    self.calls = 0

  def _errors(
      self,
      params,
      batch_stats,
      lesions,
      shared_order,
      images,
      labels,
      mean,
      std,
      indices,
      mask,
  ):
    model = self.model
    dtype = jnp.dtype(model.config.dtype)
    num = jax.tree.leaves(lesions)[0].shape[0]

    def batch(idx, m):
      x = data_lib.normalize(images[idx], mean, std, dtype=dtype)
      return x, labels[idx], m

    def score(lesion, x, y, m):
      logits = model.apply(
          {"params": params, "batch_stats": batch_stats, "lesion": lesion}, x
      )
      return scoring.score_batch(logits, y, m)

    def shared(_):
      # One order for the chunk: only ``active`` is batched.
      actives = {s: l["active"] for s, l in lesions.items()}

      def body(carry, xs):
        x, y, m = batch(*xs)
        one = lambda act: score(
            {s: {"active": act[s], "order": shared_order[s]} for s in lesions},
            x,
            y,
            m,
        )
        w, l = jax.vmap(one)(actives)
        return (carry[0] + w, carry[1] + l), None

      zeros = jnp.zeros((num,), jnp.float32)
      out, _ = jax.lax.scan(body, (zeros, zeros), (indices, mask))
      return out

    def separate(_):
      def per_lesion(lesion):
        def body(carry, xs):
          w, l = score(lesion, *batch(*xs))
          return (carry[0] + w, carry[1] + l), None

        out, _ = jax.lax.scan(
            body, (jnp.float32(0), jnp.float32(0)), (indices, mask)
        )
        return out

      return jax.lax.map(per_lesion, lesions)

    same = jnp.all(
        jnp.stack(
            [
                jnp.all(l["order"] == shared_order[s][None])
                for s, l in lesions.items()
            ]
        )
    )
    wrong, loss = jax.lax.cond(same, shared, separate, None)
    total = jnp.sum(mask)
    return wrong / total, loss / total

  @property
  def compilations(self) -> int:
    """How many programs the evaluator has compiled (1 after any use)."""
    return self._fn._cache_size()  # pylint: disable=protected-access

  def __call__(
      self, variables: Mapping[str, Any], lesions: Any | None = None
  ) -> dict[str, np.ndarray]:
    """Evaluates lesions of ``variables``.

    Args:
      variables: the network's full variables pytree.
      lesions: a stacked lesion pytree (leading axis L, e.g. from
        ``single_deletion_lesions`` or a vmapped ``delete_modules``), a list
        of lesion dicts or variables, or None for ``variables``' own lesion.

    Returns:
      ``{'error': float64[L], 'loss': float64[L]}`` (fractions, mean loss).
    """
    if lesions is None:
      lesions = ops.stack_lesions([variables])
    elif isinstance(lesions, (list, tuple)):
      lesions = ops.stack_lesions(lesions)
    lesions = jax.tree.map(np.asarray, dict(lesions))
    count = jax.tree.leaves(lesions)[0].shape[0]
    per = self.lesions_per_call
    # Pad with the intact lesion's active flags and the last lesion's order,
    # so every call has the same shapes and padding never splits a chunk
    # that shares one order.
    pad = (-count) % per
    if pad:
      # Leading axis 1: it broadcasts to any number of padding lesions.
      intact = jax.tree.map(np.asarray, ops.stack_lesions([variables]))
      lesions = {
          s: {
              "active": np.concatenate(
                  [
                      l["active"],
                      np.broadcast_to(
                          intact[s]["active"], (pad,) + l["active"].shape[1:]
                      ),
                  ]
              ),
              "order": np.concatenate(
                  [
                      l["order"],
                      np.broadcast_to(
                          l["order"][-1:], (pad,) + l["order"].shape[1:]
                      ),
                  ]
              ),
          }
          for s, l in lesions.items()
      }
    errors, losses = [], []
    for start in range(0, count + pad, per):
      chunk = jax.tree.map(lambda a: a[start : start + per], lesions)
      # The first lesion's order; the program checks whether all share it.
      shared_order = {s: l["order"][0] for s, l in chunk.items()}
      e, l = self._fn(
          variables["params"],
          variables["batch_stats"],
          chunk,
          shared_order,
          *self._data,
      )
      self.calls += 1
      errors.append(e)
      losses.append(l)
    errors = np.concatenate(jax.device_get(errors))[:count]
    losses = np.concatenate(jax.device_get(losses))[:count]
    return {
        "error": errors.astype(np.float64),
        "loss": losses.astype(np.float64),
    }
