"""Random choices of modules: the one k-of-n mechanism.

Veit et al. 2016 draw k of a network's n residual modules uniformly at
random, for deleting them (lesion studies), for sampling paths of length k
(gradient per path length) and for training through k modules' branches
(sec. 5). All three use :func:`random_module_mask`, which takes ``k`` as
data, so every k runs through one compiled function.
"""

import jax
import jax.numpy as jnp


def random_module_mask(
    key: jax.Array, k, n: int, eligible: jax.Array | None = None
) -> jax.Array:
  """float32[n] with 1 at k modules drawn uniformly without replacement.

  Args:
    key: PRNG key.
    k: how many modules (int or traced int); more than are eligible takes
      them all.
    n: number of modules (static).
    eligible: optional bool[n]; only these modules are drawn.

  Returns:
    The 0/1 mask; the chosen modules are those whose random rank is below
    ``k``, so ``k`` may be traced.
  """
  scores = jax.random.uniform(key, (n,))
  if eligible is not None:
    scores = scores + jnp.where(eligible, 0.0, 2.0)  # ineligible rank last
  ranks = jnp.argsort(jnp.argsort(scores))
  chosen = ranks < k
  if eligible is not None:
    chosen = chosen & eligible
  return chosen.astype(jnp.float32)
