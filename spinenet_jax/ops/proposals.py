"""Mask R-CNN region proposals: the official `ops/roi_ops.py` `multilevel_propose_rois`.

Per level (sorted level keys), every image of the batch at once:
1. sigmoid of the RPN logits [B, h, w, A] -> [B, h*w*A], in (y, x, anchor) order, which is the order
   of `anchors.level_anchors` and of the official `Anchor.multilevel_boxes`;
2. decode the [B, h, w, 4A] deltas against the anchors with `box_ops.decode` (official
   `box_utils.decode_boxes`: no weights, +1 sizes, dh/dw clipped from above at log(1000/16));
3. clip to [0, size - 1] of `image_shape` (the official caller passes `image_info[:, 1, :]`, the
   output canvas, not the scaled image);
4. optional min-size filter and score filter (both off, 0.0, in every official config): filtered
   boxes become zero boxes with score 0, which NMS never outputs;
5. top k = min(anchors in the level, pre_nms_top_k) by score (lower index first on ties);
6. `nms.sorted_nms_padded` (float32; suppress at IoU >= threshold) keeping
   min(anchors in the level, post_nms_top_k_per_level) slots, the unused ones scored -1.
The levels' slots are concatenated and the top min(total slots, total_top_k) are kept; unused NMS
slots (score -1, zero box) take part, so they fill the output when too few boxes survive.

The official code passes one `rpn_post_nms_top_k` both per level and overall; here those are
`post_nms_top_k_per_level` and `total_top_k` (both 1000 by default, as officially).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spinenet_jax.ops import box_ops, nms

Array = jax.Array


def filter_boxes(boxes: Array, scores: Array, image_shape: Array,
                 min_size_threshold: float) -> tuple[Array, Array]:
  """Official `box_utils.filter_boxes`: zero the boxes (and scores) that are too small or whose
  centre lies outside the image.

  boxes [B, N, 4], scores [B, N], image_shape [B, 2] (height, width). A box stays when both its
  +1 sizes are > max(min_size_threshold, 1) and its centre is strictly inside (0, size).
  """
  image_shape = image_shape.astype(boxes.dtype)
  height, width = image_shape[:, None, 0], image_shape[:, None, 1]
  h = boxes[..., 2] - boxes[..., 0] + 1.0
  w = boxes[..., 3] - boxes[..., 1] + 1.0
  yc = boxes[..., 0] + 0.5 * h
  xc = boxes[..., 1] + 0.5 * w
  min_size = max(min_size_threshold, 1.0)
  keep = ((h > min_size) & (w > min_size) & (yc > 0.0) & (yc < height) & (xc > 0.0) &
          (xc < width))
  return boxes * keep[..., None].astype(boxes.dtype), jnp.where(keep, scores, 0.0)


def filter_boxes_by_scores(boxes: Array, scores: Array,
                           score_threshold: float) -> tuple[Array, Array]:
  """Official `box_utils.filter_boxes_by_scores`: zero boxes and scores with score <= threshold."""
  keep = scores > score_threshold
  return boxes * keep[..., None].astype(boxes.dtype), jnp.where(keep, scores, 0.0)


def top_k_boxes(boxes: Array, scores: Array, k: int) -> tuple[Array, Array]:
  """Official `box_utils.top_k_boxes`: the k best of [B, N] scores (sorted, lower index first on
  ties) and their boxes -> (boxes [B, k, 4], scores [B, k])."""
  top_scores, ids = jax.lax.top_k(scores, k)
  return jnp.take_along_axis(boxes, ids[..., None], axis=1), top_scores


def multilevel_propose_rois(
    rpn_scores: dict[int, Array], rpn_boxes: dict[int, Array], anchors: dict[int, Array],
    image_shape: Array, pre_nms_top_k: int = 2000, post_nms_top_k_per_level: int = 1000,
    nms_iou_threshold: float = 0.7, total_top_k: int = 1000, score_threshold: float = 0.0,
    min_size_threshold: float = 0.0, decode_boxes: bool = True,
    clip_boxes: bool = True) -> tuple[Array, Array]:
  """RoI proposals from multilevel RPN outputs (see the module docstring for the steps).

  Args:
    rpn_scores: {level: [B, h, w, A] logits}.
    rpn_boxes: {level: [B, h, w, 4A] deltas} (or boxes when `decode_boxes` is False).
    anchors: {level: anchors of that level, any shape holding h*w*A boxes in (y, x, anchor) order,
      e.g. [h*w*A, 4] or [h, w, 4A], optionally with a leading batch dim}, pixels of the canvas.
    image_shape: [B, 2] (height, width) boxes are clipped to, the official `image_info[:, 1, :]`.
    pre_nms_top_k: boxes per level entering NMS (official 2000 in training, 1000 at test).
    post_nms_top_k_per_level: NMS output slots per level.
    nms_iou_threshold: NMS suppresses at IoU >= this; must be > 0 (the official path without NMS
      refers to an undefined variable and cannot run).
    total_top_k: proposals kept over all levels.
    score_threshold, min_size_threshold: the official pre-NMS filters; off at 0.0.
    decode_boxes, clip_boxes: as officially, both True in the official caller.

  Returns:
    (rois [B, K, 4] float32 [ymin, xmin, ymax, xmax] pixels, roi_scores [B, K] float32 sigmoid
    probabilities, -1 for unused slots) with K = min(total_top_k, sum of the levels' NMS slots).

  Raises:
    ValueError: for nms_iou_threshold <= 0 or score/box/anchor counts that disagree.
  """
  if not nms_iou_threshold > 0.0:
    raise ValueError('multilevel_propose_rois needs NMS (nms_iou_threshold > 0); the official '
                     f'path without it is broken. Got {nms_iou_threshold}.')
  image_shape = jnp.asarray(image_shape)
  rois, roi_scores = [], []
  for level in sorted(rpn_scores):
    logits = rpn_scores[level]
    b, h, w, a = logits.shape
    n = h * w * a
    scores = jax.nn.sigmoid(logits.reshape(b, n))
    boxes = rpn_boxes[level].reshape(b, n, 4)
    level_anchors = jnp.asarray(anchors[level])
    if level_anchors.size not in (n * 4, b * n * 4):
      raise ValueError(f'Level {level}: {level_anchors.shape} anchors for {n} boxes.')
    # Official: anchors take the scores' dtype; decode casts the deltas to it.
    level_anchors = level_anchors.reshape(-1, n, 4).astype(scores.dtype)
    if decode_boxes:
      boxes = box_ops.decode(boxes, level_anchors)
    if clip_boxes:
      boxes = box_ops.clip_boxes(boxes, image_shape)
    if min_size_threshold > 0.0:
      boxes, scores = filter_boxes(boxes, scores, image_shape, min_size_threshold)
    if score_threshold > 0.0:
      boxes, scores = filter_boxes_by_scores(boxes, scores, score_threshold)
    boxes, scores = top_k_boxes(boxes, scores, min(n, pre_nms_top_k))
    level_scores, level_rois = nms.sorted_nms_padded(
        boxes, scores, min(n, post_nms_top_k_per_level), nms_iou_threshold)
    rois.append(level_rois)
    roi_scores.append(level_scores)
  rois = jnp.concatenate(rois, axis=1)
  roi_scores = jnp.concatenate(roi_scores, axis=1)
  return top_k_boxes(rois, roi_scores, min(roi_scores.shape[1], total_top_k))
