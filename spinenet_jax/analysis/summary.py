"""Model size and cost: trainable parameters, batch-norm statistics and forward multiply-adds.

Multiply-adds (the paper's "FLOPs") are counted from the traced computation rather than from a
hand-written formula: every convolution and matrix product in the jaxpr contributes
(output elements) x (kernel taps) x (input channels per group), so the count follows whatever the
model actually builds. Elementwise work (norms, activations, additions, pooling) is not counted, as in
the paper.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core


def count_leaves(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _conv_macs(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  in_per_group = rhs.shape[rhs_spec[1]]
  taps = math.prod(rhs.shape[d] for d in rhs_spec[2:])
  del lhs
  # A transposed conv is a conv over the input dilated with zeros: only 1 / prod(dilation) of the
  # taps meet an input value (exactly so when the stride equals the kernel, as the mask head's).
  dilation = math.prod(eqn.params.get('lhs_dilation') or (1,))
  return math.prod(out.shape) * taps * in_per_group // dilation


def _dot_macs(eqn) -> int:
  lhs, _ = (v.aval for v in eqn.invars[:2])
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  contracted = math.prod(lhs.shape[d] for d in lhs_contract)
  return math.prod(eqn.outvars[0].aval.shape) * contracted


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += _conv_macs(eqn)
    elif name == 'dot_general':
      total += _dot_macs(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _jaxpr_macs(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _jaxpr_macs(sub)
  return total


def count_macs(fn: Callable, *args: Any) -> int:
  """Multiply-adds of one call of `fn(*args)`; args may be arrays or jax.ShapeDtypeStruct."""
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def summarize(model, image_size: tuple[int, int], batch_size: int = 1,
              backbone_collection_key: str | None = None, backbone_model=None) -> dict:
  """Parameters, batch-norm statistics and GMACs (per image) of a Flax model at `image_size`.

  `backbone_collection_key` names the sub-tree of params that is the backbone (None: the whole
  model); with `backbone_model` (that backbone on its own) the backbone's GMACs are reported too.
  """
  images = jax.ShapeDtypeStruct((batch_size, *image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  params = variables['params']
  backbone = params[backbone_collection_key] if backbone_collection_key else params
  macs = count_macs(lambda v, x: model.apply(v, x), variables, images)
  result = {
      'image_size': list(image_size),
      'backbone_params': count_leaves(backbone),
      'total_params': count_leaves(params),
      'batch_norm_statistics': count_leaves(variables.get('batch_stats', {})),
      'gmacs': macs / batch_size / 1e9,
  }
  if backbone_model is not None:
    result['backbone_gmacs'] = summarize(backbone_model, image_size, batch_size)['gmacs']
  return result
