"""How signals and gradients propagate through a network.

* ``response_stds``: the std of each conv layer's response (after BN, before
  ReLU and addition), layer by layer: He et al. 2016 Fig. 7, where residual
  functions respond less than plain layers.
* ``module_input_gradients``: the norm of the loss gradient at the input of
  every module (plain vs residual; with gradient masks, e.g. shortcuts only).
* ``scale_comparison``: Identity Mappings sec. 3.1: with a scaled shortcut
  h(x) = lambda x the shortcut term of dL/dx_l carries a factor
  lambda^(L-l); measured gradients of a scaled twin next to that factor.
* ``gate_statistics``: the mean gate g(x) of every gated module (gated
  shortcuts, highway networks; Veit sec. 6: trained gates lean towards the
  skip).

Every result is a list of rows (dicts) in execution order, ready for
``resflax.results.write_csv``. The gradients at module inputs are measured by
adding a zero perturbation to each module's input (flax method interception
on an unrolled copy of the model) and differentiating with respect to it, so
the model code needs no hooks.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resflax import models
from resflax.lesion import ops
from resflax.models import Network, scoring
from resflax.models.network import Head
from resflax.models.unit import ResidualUnit

__all__ = [
    "gate_statistics",
    "module_input_gradients",
    "response_stds",
    "scale_comparison",
    "unrolled_twin",
]


def _rows_meta(model: Network, variables) -> list[dict[str, Any]]:
  """Execution position -> module number, stage, unit, downsampling."""
  order = np.asarray(ops.module_order(variables))
  info = model.modules
  return [
      {
          "position": p,
          "module": int(m),
          "stage": info[m].stage,
          "unit": info[m].unit,
          "downsampling": info[m].downsampling,
      }
      for p, m in enumerate(order)
  ]


@functools.lru_cache(maxsize=16)
def _capture_fn(model: Network):
  # One program per network for response_stds and gate_statistics alike.
  return jax.jit(lambda v, x: model.apply(v, x, capture=True)[1])


def _capture(model, variables, images):
  return jax.device_get(_capture_fn(model)(variables, images))


def _per_position(model, inter, path):
  """Values sown under ``path`` (e.g. ('response_std0',)) in execution order.

  Returns one float (or None where a unit sowed nothing) per module.
  """
  out = []
  for s, st in enumerate(model.stages):
    stage = inter.get(f"stage{s}", {})
    for part, count in (("unit0", 1), ("units", st.units - 1)):
      if count <= 0:
        continue
      node = stage.get(part, {})
      for key in path:
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
      if isinstance(node, tuple):  # flax sow stores a 1-tuple
        vals = np.asarray(node[0], np.float64).reshape(-1)
        out.extend(float(v) for v in vals)
      else:
        out.extend([None] * count)
  return out


def response_stds(
    model: Network, variables: Mapping[str, Any], images
) -> list[dict[str, Any]]:
  """He et al. Fig. 7: std of every conv layer's response, in forward order.

  Args:
    model: the network.
    variables: its variables (evaluation mode: BN running statistics).
    images: a normalised float NHWC batch (e.g. test images).

  Returns:
    One row per conv layer of the residual branches (the stem conv is not
    sown): ``layer`` (1-based, forward order), ``position``, ``module``,
    ``stage``, ``unit``, ``downsampling``, ``conv`` (index within the
    module), ``std``.
  """
  inter = _capture(model, variables, jnp.asarray(images))
  meta = _rows_meta(model, variables)
  convs = 0
  per_conv = []
  while True:
    vals = _per_position(model, inter, (f"response_std{convs}",))
    if all(v is None for v in vals):
      break
    per_conv.append(vals)
    convs += 1
  rows, layer = [], 0
  for p, m in enumerate(meta):
    for c in range(convs):
      if per_conv[c][p] is None:
        continue
      layer += 1
      rows.append({**m, "layer": layer, "conv": c, "std": per_conv[c][p]})
  return rows


def gate_statistics(
    model: Network, variables: Mapping[str, Any], images
) -> list[dict[str, Any]]:
  """Mean gate value of every gated module, in execution order.

  For ``exclusive_gate`` (highway) y = (1 - g) x + g F(x) and for
  ``shortcut_gate`` y = (1 - g) x + F(x): a mean g near 0 means the module
  mostly passes its input along the skip.

  Returns:
    One row per module with a gate (``gate_mean``); empty when the network
    has no gates.
  """
  inter = _capture(model, variables, jnp.asarray(images))
  vals = _per_position(model, inter, ("shortcut", "gate_mean"))
  return [
      {**m, "gate_mean": v}
      for m, v in zip(_rows_meta(model, variables), vals)
      if v is not None
  ]


def unrolled_twin(model: Network, **overrides) -> Network:
  """The same network with ``scan`` and ``remat`` off (same variables).

  Unrolled, each module is traced once in forward order, which is what
  ``module_input_gradients`` relies on. ``overrides`` change further model
  keys whose variables have the same layout (e.g. ``shortcut='scale'``).
  """
  cfg = dataclasses.asdict(model.config)
  cfg.update(scan=False, remat=False, **overrides)
  return models.create_model(cfg)


def _perturbed_loss(
    probe: Network,
    variables,
    images,
    labels,
    residual_grad,
    skip_grad,
    eps,
    shapes,
):
  """Summed cross-entropy with ``eps[i]`` added to the i-th module's input.

  The i-th call of a ``ResidualUnit`` (and last the ``Head``) in tracing
  order is the i-th module in execution order because ``probe`` is
  unrolled. With ``shapes`` a list, the input shapes are recorded instead.
  """
  count = [0]

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(
        context.module, (ResidualUnit, Head)
    ):
      i = count[0]
      count[0] += 1
      x = args[0]
      if shapes is not None:
        shapes.append(jax.ShapeDtypeStruct(x.shape, jnp.float32))
      if eps is not None:
        x = x + eps[i].astype(x.dtype)
      args = (x,) + tuple(args[1:])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    logits = probe.apply(
        variables, images, residual_grad=residual_grad, skip_grad=skip_grad
    )
  return scoring.cross_entropy(logits, labels).sum()


@functools.lru_cache(maxsize=16)
def _input_grad_fn(model: Network):
  """Jitted (variables, images, labels, residual_grad, skip_grad) -> the
  mean per-image gradient norm at each of the n + 1 module/head inputs."""
  probe = unrolled_twin(model)
  expected = model.num_modules + 1

  @jax.jit
  def fn(variables, images, labels, residual_grad, skip_grad):
    shapes = []
    args = (probe, variables, images, labels, residual_grad, skip_grad)
    jax.eval_shape(lambda: _perturbed_loss(*args, None, shapes))
    if len(shapes) != expected:
      raise RuntimeError(
          f"module_input_gradients traced {len(shapes)} module/head calls, "
          f"expected {expected}: the network's call structure changed; "
          "update resflax/lesion/signal_stats.py"
      )
    eps = [jnp.zeros(s.shape, jnp.float32) for s in shapes]
    grads = jax.grad(lambda e: _perturbed_loss(*args, e, None))(eps)
    return jnp.stack(
        [
            jnp.mean(
                jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))
            )
            for g in grads
        ]
    )

  return fn


def module_input_gradients(
    model: Network,
    variables: Mapping[str, Any],
    images,
    labels,
    *,
    residual_grad: Any | None = None,
    skip_grad: Any | None = None,
) -> list[dict[str, Any]]:
  """Norm of the loss gradient at the input of every module.

  Args:
    model: the network.
    variables: its variables (evaluation mode).
    images: a normalised float NHWC batch; labels: its int labels.
    residual_grad, skip_grad: optional gradient masks per module (as in
      ``model.apply``), e.g. zeros / ones for "shortcuts only".

  Returns:
    n + 1 rows in execution order: one per module input (``position``,
    ``module``, ...) and a last one (``module`` = None) for the input of the
    head (the output x_L of the last module). ``grad_norm`` is the mean over
    images of the L2 norm of d loss_i / d x (each image's own loss).
  """
  n = model.num_modules
  # Masks are arguments (ones = ordinary backward pass), so the plain
  # gradient and any masked one share a compiled program.
  residual_grad = (
      jnp.ones((n,), jnp.float32)
      if residual_grad is None
      else (jnp.asarray(residual_grad, jnp.float32))
  )
  skip_grad = (
      jnp.ones((n,), jnp.float32)
      if skip_grad is None
      else (jnp.asarray(skip_grad, jnp.float32))
  )
  norms = jax.device_get(
      _input_grad_fn(model)(
          variables,
          jnp.asarray(images, jnp.float32),
          jnp.asarray(labels, jnp.int32),
          residual_grad,
          skip_grad,
      )
  )
  norms = [float(v) for v in norms]
  meta = _rows_meta(model, variables)
  rows = [{**m, "grad_norm": v} for m, v in zip(meta, norms)]
  rows.append(
      {
          "position": model.num_modules,
          "module": None,
          "stage": None,
          "unit": None,
          "downsampling": None,
          "grad_norm": norms[-1],
      }
  )
  return rows


def scale_comparison(
    model: Network,
    variables: Mapping[str, Any],
    images,
    labels,
    lam: float | None = None,
) -> list[dict[str, Any]]:
  """Identity Mappings eq. (7): gradients with shortcut h(x) = lambda x.

  Builds the ``scale`` twin of ``model`` (same variables, shortcut
  h(x) = lambda x) unless ``model`` already has a ``scale`` shortcut, and
  measures the gradient at every module input relative to the gradient at
  the head's input x_L, once through the whole network and once through
  the shortcuts only. The shortcut-only ratio is lambda^(L-l) times what
  the identity shortcut passes (exactly lambda^(L-l) within a stage for
  placements without ops after the addition; ReLUs after the addition and
  the zero-padded channels of option A change it).

  Args:
    lam: lambda; None takes ``model.config.shortcut_scale``.

  Returns:
    n + 1 rows: ``position``, ``module``, ``stage``, ``downsampling``,
    ``lambda``, ``predicted`` = lambda^(n - position), ``ratio_full``,
    ``ratio_shortcut_only``.
  """
  lam = float(model.config.shortcut_scale if lam is None else lam)
  twin = (
      model
      if model.config.shortcut == "scale" and lam == model.config.shortcut_scale
      else unrolled_twin(
          model, shortcut="scale", shortcut_scale=lam, scale_residual=False
      )
  )
  n = model.num_modules
  full = module_input_gradients(twin, variables, images, labels)
  skip_only = module_input_gradients(
      twin,
      variables,
      images,
      labels,
      residual_grad=jnp.zeros((n,), jnp.float32),
      skip_grad=jnp.ones((n,), jnp.float32),
  )
  top_full, top_skip = full[-1]["grad_norm"], skip_only[-1]["grad_norm"]
  rows = []
  for f, s in zip(full, skip_only):
    rows.append(
        {
            "position": f["position"],
            "module": f["module"],
            "stage": f["stage"],
            "downsampling": f["downsampling"],
            "lambda": lam,
            "predicted": lam ** (n - f["position"]),
            "ratio_full": f["grad_norm"] / top_full if top_full else 0.0,
            "ratio_shortcut_only": (
                s["grad_norm"] / top_skip if top_skip else 0.0
            ),
        }
    )
  return rows
