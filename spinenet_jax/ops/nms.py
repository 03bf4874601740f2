"""Non-maximum suppression, static shapes, vectorized: the two variants the official code uses.

- `greedy_nms`: the TF1 kernel (`tf.image.non_max_suppression_padded`, NonMaxSuppressionV4) of the
  official detection generators (`ops/postprocess_ops.py`, v1).
- `sorted_nms_padded`: the repo's own tiled `ops/nms.py` `sorted_non_max_suppression_padded` of the
  Mask R-CNN proposal generator (`ops/roi_ops.py`); its semantics are in the comment block
  before it.

`greedy_nms`, as the official detection generator uses the kernel: candidates need
score > score_threshold; a candidate is suppressed when its IoU with an already selected box is
> iou_threshold; IoU has no +1, takes min/max of the coordinates and is 0 when either box has no
area; ties in score go to the lower index. Output indices are padded with 0.

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


# ------------------------------------------------------------------------------------------------
# The official tiled NMS for sorted boxes (`ops/nms.py`, `sorted_non_max_suppression_padded`),
# which the Mask R-CNN proposal generator uses. Semantics, all from the official source:
# - boxes and scores are cast to float32; boxes are assumed sorted by descending score (scores are
#   only carried along, never compared);
# - IoU is `box_utils.bbox_overlap` (no +1, union + 1e-8, -1 against a box whose largest
#   coordinate is negative); a box is suppressed when its IoU with a kept, higher-ranked box is
#   >= iou_threshold (unlike the TF1 kernel above, which needs >);
# - a box counts as selected only if one of its coordinates is > 0, so all-zero boxes (and boxes
#   entirely at negative coordinates) are never output; those that are not suppressed still
#   suppress later boxes, as in the official graph, where only suppressed boxes are zeroed;
# - output: the selected boxes in input order, then zero boxes with score -1.
#
# Algorithm (the official one, restated on masks instead of zeroed boxes): boxes are processed in
# tiles of NMS_TILE_SIZE. A tile is first suppressed by every kept box of earlier tiles at once;
# then within the tile, with edges i -> j (i < j, IoU >= thr), a fixed point is iterated: boxes with
# no incoming edge of IoU > thr from a still-live box "can suppress", the boxes they hit with
# IoU > thr stop being suppressors, until nothing changes; a box is kept when no live box has an
# edge (IoU >= thr) into it.
#
# Exactness: this equals sequential greedy NMS, except for one corner the official code has and
# that is reproduced here: in the official fixed point a box counts as "can suppress" when its
# largest incoming IoU is <= thr, so inside one tile a box B whose only suppressor A has IoU
# exactly thr is itself still used to suppress: with IoU(A, B) == thr and IoU(B, C) > thr, greedy
# keeps A and C, the official tile keeps only A. (Across tiles, and whenever no IoU equals thr
# exactly, the result is greedy.) The official loop stops when the tile's IoU sum drops by <= thr;
# in exact arithmetic that happens only when nothing that matters changed, so looping until the
# live set is stable is the same rule without depending on float32 summation order.
# ------------------------------------------------------------------------------------------------

NMS_TILE_SIZE = 512


def _rounded(product: Array) -> Array:
  """`product`, kept a separately rounded float32 value: XLA (measured on CPU) contracts a product
  that feeds an addition into one FMA, rounding once where TF rounds twice, which moves IoUs by
  an ulp and can flip a decision at the threshold. The select hides the multiplication from the
  contraction; it is the identity except that NaN becomes 0."""
  return jnp.where(jnp.isnan(product), 0.0, product)


def _areas(boxes: Array) -> Array:
  """[B, N, 4] -> [B, N] areas without +1 (negative for inverted boxes)."""
  return _rounded((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


def _overlap(rows: Array, row_areas: Array, cols: Array, col_areas: Array) -> Array:
  """Official `box_utils.bbox_overlap(rows, cols)`, float32 bit for bit: IoU [B, N, M].

  rows [B, N, 4] with `_areas` [B, N]; cols [B, M, 4] with areas [B, M]. No +1, the union gets
  + 1e-8, a column box whose largest coordinate is < 0 gets IoU -1. The areas are computed once
  per box, not per pair.
  """
  y0, x0, y1, x1 = (rows[..., :, None, i] for i in range(4))
  gy0, gx0, gy1, gx1 = (cols[..., None, :, i] for i in range(4))
  inter = _rounded(jnp.maximum(jnp.minimum(x1, gx1) - jnp.maximum(x0, gx0), 0.0) *
                   jnp.maximum(jnp.minimum(y1, gy1) - jnp.maximum(y0, gy0), 0.0))
  iou = inter / (row_areas[..., :, None] + col_areas[..., None, :] - inter + 1e-8)
  return jnp.where(jnp.max(cols, axis=-1)[..., None, :] < 0.0, -1.0, iou)


def _tile_fixed_point(iou: Array, alive: Array, iou_threshold: float) -> Array:
  """Kept mask [B, T] of one tile after the official self-suppression.

  iou: [B, T, T] float32 IoU of the tile with itself (row i suppresses column j).
  alive: [B, T] bool, boxes not suppressed by earlier tiles.
  """
  t = iou.shape[-1]
  upper = jnp.arange(t)[None, :] > jnp.arange(t)[:, None]   # only higher-ranked rows suppress
  edge = upper & (iou >= iou_threshold) & alive[..., :, None] & alive[..., None, :]
  # Official: a box "can suppress others" when its largest incoming IoU is <= thr, so only edges
  # strictly above thr block or suppress during the iteration.
  strong = edge & (iou > iou_threshold)

  def step(state):
    live, _ = state
    blocked = jnp.any(live[..., :, None] & strong, axis=-2)
    suppressing = live & ~blocked
    hit = jnp.any(suppressing[..., :, None] & strong, axis=-2)
    new_live = live & ~hit
    return new_live, jnp.any(new_live != live)

  live, _ = jax.lax.while_loop(lambda s: s[1], step, (alive, jnp.bool_(True)))
  # The final rule counts every edge, those exactly at thr included.
  return alive & ~jnp.any(live[..., :, None] & edge, axis=-2)


def sorted_nms_padded(boxes: Array, scores: Array, max_output: int, iou_threshold: float,
                      tile_size: int = NMS_TILE_SIZE) -> tuple[Array, Array]:
  """Official `sorted_non_max_suppression_padded` (`ops/nms.py`), tiled, jit-able, static shapes.

  Args:
    boxes: [B, N, 4] [ymin, xmin, ymax, xmax], sorted by descending score.
    scores: [B, N], sorted descending (only carried to the output).
    max_output: number of output slots M (static).
    iou_threshold: Python float in (0, 1]; a box is suppressed when IoU >= threshold.
    tile_size: boxes processed together; the official value 512 matters only in the corner case
      described above (IoU exactly at the threshold), so keep it for exactness.

  Returns:
    (scores [B, M] float32, boxes [B, M, 4] float32): the selected boxes in input order, then
    padding slots with score -1 and a zero box.

  Raises:
    ValueError: when iou_threshold is not > 0 (every pair would then "overlap").
  """
  if not iou_threshold > 0.0:
    raise ValueError(f'iou_threshold must be > 0, got {iou_threshold}.')
  b, n = scores.shape
  num_tiles = max(1, -(-n // tile_size))
  padded = num_tiles * tile_size
  boxes = jnp.pad(boxes.astype(jnp.float32), ((0, 0), (0, padded - n), (0, 0)))
  scores = jnp.pad(scores.astype(jnp.float32), ((0, 0), (0, padded - n)), constant_values=-1.0)
  areas = _areas(boxes)
  positions = jnp.arange(padded)

  def cond(state):
    tile, _, count = state
    # As officially, stop once every image has max_output boxes: later tiles cannot be output.
    return (tile < num_tiles) & (jnp.min(count) < max_output)

  def body(state):
    tile, alive, count = state
    start = tile * tile_size
    tile_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, tile_size, axis=1)
    tile_areas = jax.lax.dynamic_slice_in_dim(areas, start, tile_size, axis=1)
    # Cross-tile: all kept boxes of earlier tiles suppress the tile at once.
    earlier = (positions < start)[None, :, None] & alive[..., None]
    cross = _overlap(boxes, areas, tile_boxes, tile_areas) >= iou_threshold   # [B, padded, T]
    tile_alive = jax.lax.dynamic_slice_in_dim(alive, start, tile_size, axis=1)
    tile_alive &= ~jnp.any(earlier & cross, axis=1)
    kept = _tile_fixed_point(_overlap(tile_boxes, tile_areas, tile_boxes, tile_areas),
                             tile_alive, iou_threshold)
    alive = jax.lax.dynamic_update_slice_in_dim(alive, kept, start, axis=1)
    count += jnp.sum(kept & jnp.any(tile_boxes > 0.0, axis=-1), axis=1, dtype=jnp.int32)
    return tile + 1, alive, count

  alive = jnp.ones((b, padded), bool)
  state = (jnp.int32(0), alive, jnp.zeros((b,), jnp.int32))
  _, alive, count = jax.lax.while_loop(cond, body, state)
  # Tiles never processed keep alive = True, but they come after >= max_output selected boxes.
  selected = alive & jnp.any(boxes > 0.0, axis=-1)
  # Official: top-k of selected * (padded - position), i.e. selected boxes in input order.
  k = min(max_output, padded)
  key = jnp.where(selected, padded - positions, 0)
  idx = jnp.minimum(padded - jax.lax.top_k(key, k)[0], padded - 1)
  slots = jnp.arange(k)[None, :] < count[:, None]
  out_boxes = jnp.take_along_axis(boxes, idx[..., None], axis=1) * slots[..., None]
  out_scores = jnp.where(slots, jnp.take_along_axis(scores, idx, axis=1), -1.0)
  if k < max_output:   # more slots than (padded) boxes: the rest is padding
    out_boxes = jnp.pad(out_boxes, ((0, 0), (0, max_output - k), (0, 0)))
    out_scores = jnp.pad(out_scores, ((0, 0), (0, max_output - k)), constant_values=-1.0)
  return out_scores, out_boxes
