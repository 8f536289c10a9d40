"""Scoring a network's logits: classification errors and cross-entropy.

The one place that turns logits and labels into the counts every evaluation
sums (training's evaluation, the lesion evaluator): a masked batch gives the
number of wrong predictions and the summed loss of its real examples.
"""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )


def score_batch(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Wrong predictions and summed loss over a batch's real examples.

  Args:
    logits: ``(..., batch, classes)``.
    labels: ``(..., batch)`` integer labels.
    mask: ``(..., batch)`` 1 for real examples, 0 for padding; None = all.

  Returns:
    ``(wrong, loss)``: float32 sums over the batch axis.
  """
  wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  loss = cross_entropy(logits, labels)
  if mask is not None:
    wrong, loss = wrong * mask, loss * mask
  return wrong.sum(-1), loss.sum(-1)
