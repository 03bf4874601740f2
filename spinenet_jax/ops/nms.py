"""Greedy non-maximum suppression with the TF1 kernel's semantics, static shapes, vectorized.

`tf.image.non_max_suppression_padded` (NonMaxSuppressionV4), as the official detection generator
uses it: candidates need score > score_threshold; a candidate is suppressed when its IoU with an
already selected box is > iou_threshold; IoU has no +1, takes min/max of the coordinates and is 0
when either box has no area; ties in score go to the lower index. Output indices are padded with 0.

Instead of a priority queue, each step selects the highest-scoring candidate still alive (lowest
index on ties) and suppresses what it overlaps. This selects the same boxes in the same order,
because whether a candidate survives depends only on boxes selected before it. The loop stops as soon
as nothing is alive anywhere, so sparse predictions cost a few steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def iou_one_to_many(box: Array, boxes: Array) -> Array:
  """IoU of [..., 4] with [..., K, 4] in the TF NMS kernel's convention -> [..., K]."""
  def canon(b):
    return (jnp.minimum(b[..., 0], b[..., 2]), jnp.minimum(b[..., 1], b[..., 3]),
            jnp.maximum(b[..., 0], b[..., 2]), jnp.maximum(b[..., 1], b[..., 3]))
  y0, x0, y1, x1 = (v[..., None] for v in canon(box))
  ys0, xs0, ys1, xs1 = canon(boxes)
  area = (y1 - y0) * (x1 - x0)
  areas = (ys1 - ys0) * (xs1 - xs0)
  inter = (jnp.maximum(jnp.minimum(y1, ys1) - jnp.maximum(y0, ys0), 0.0) *
           jnp.maximum(jnp.minimum(x1, xs1) - jnp.maximum(x0, xs0), 0.0))
  valid = (area > 0) & (areas > 0)
  return jnp.where(valid, inter / jnp.where(valid, area + areas - inter, 1.0), 0.0)


def greedy_nms(boxes: Array, scores: Array, max_output: int, iou_threshold: float,
               score_threshold: float) -> tuple[Array, Array]:
  """NMS over [..., K, 4] boxes and [..., K] scores (any leading batch dims).

  Returns (indices [..., max_output] int32 padded with 0, num_valid [...] int32).
  """
  k = scores.shape[-1]
  lead = scores.shape[:-1]
  positions = jnp.arange(k)

  def cond(state):
    step, alive, _, _ = state
    return (step < max_output) & jnp.any(alive)

  def body(state):
    step, alive, selected, num = state
    idx = jnp.argmax(jnp.where(alive, scores, -jnp.inf), axis=-1)
    found = jnp.take_along_axis(alive, idx[..., None], axis=-1)[..., 0]
    box = jnp.take_along_axis(boxes, idx[..., None, None], axis=-2)[..., 0, :]
    suppressed = (iou_one_to_many(box, boxes) > iou_threshold) | (positions == idx[..., None])
    alive = alive & ~(suppressed & found[..., None])
    selected = selected.at[..., step].set(jnp.where(found, idx, 0).astype(jnp.int32))
    return step + 1, alive, selected, num + found.astype(jnp.int32)

  state = (jnp.int32(0), scores > score_threshold, jnp.zeros((*lead, max_output), jnp.int32),
           jnp.zeros(lead, jnp.int32))
  _, _, selected, num = jax.lax.while_loop(cond, body, state)
  return selected, num
