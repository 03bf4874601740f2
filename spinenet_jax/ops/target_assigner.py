"""Anchor labelling for RetinaNet: IoU, the argmax matcher and targets, as the official code.

The official labeler (`AnchorLabeler`, an `ArgMaxMatcher` with force-matching over `IouSimilarity`)
runs in the input pipeline on a dynamic number of boxes. Here ground truth is padded to a fixed count,
so everything is static-shaped and jit-compatible: padded rows have IoU -1 with every anchor, so they
never match and never force-match.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from spinenet_jax.ops import box_ops

UNMATCHED = -1
IGNORED = -2


def argmax_match(similarity, valid_rows, match_threshold: float = 0.5,
                 unmatched_threshold: float = 0.5, force_match: bool = True):
  """Official ArgMaxMatcher (negatives_lower_than_unmatched=True) on [G, N] similarities.

  Returns [N] int32: the matched row, -1 (below unmatched_threshold) or -2 (between thresholds).
  Ties go to the lowest row; with force_match each valid row also claims its best column (lowest
  column on ties), and when several rows claim a column the lowest row wins.
  """
  similarity = jnp.where(valid_rows[:, None], similarity, -1.0)
  matches = jnp.argmax(similarity, axis=0).astype(jnp.int32)
  best = jnp.max(similarity, axis=0)
  matches = jnp.where(best < unmatched_threshold, UNMATCHED, matches)
  between = (best >= unmatched_threshold) & (best < match_threshold)
  matches = jnp.where(between, IGNORED, matches)
  if force_match:
    best_column = jnp.argmax(similarity, axis=1)
    claims = jax.nn.one_hot(best_column, similarity.shape[1], dtype=jnp.int32) * valid_rows[:, None]
    claimed = jnp.max(claims, axis=0) > 0
    matches = jnp.where(claimed, jnp.argmax(claims, axis=0).astype(jnp.int32), matches)
  # No valid ground truth at all: every anchor is unmatched (official `_match_when_rows_are_empty`).
  return jnp.where(jnp.any(valid_rows), matches, UNMATCHED)


class AnchorLabels(NamedTuple):
  cls_targets: jax.Array    # [N] int32: class id, -1 (negative) or -2 (ignored)
  box_targets: jax.Array    # [N, 4] encoded [ty, tx, th, tw]; 0 where not matched
  matches: jax.Array        # [N] int32 matcher result
  num_positives: jax.Array  # [] float32: anchors with a match >= 0


def label_anchors(anchors, gt_boxes, gt_classes, match_threshold: float = 0.5,
                  unmatched_threshold: float = 0.5) -> AnchorLabels:
  """Labels [N, 4] anchors with [G, 4] padded ground truth; rows with class <= 0 are padding."""
  valid = gt_classes > 0
  iou = box_ops.pairwise_iou(gt_boxes, anchors)
  matches = argmax_match(iou, valid, match_threshold, unmatched_threshold)
  matched = matches >= 0
  index = jnp.maximum(matches, 0)
  cls = jnp.where(matched, gt_classes[index].astype(jnp.int32), matches)
  boxes = box_ops.encode(gt_boxes[index], anchors)
  boxes = jnp.where(matched[:, None], boxes, 0.0)
  return AnchorLabels(cls, boxes, matches, jnp.sum(matched).astype(jnp.float32))


def label_batch(anchors, gt_boxes, gt_classes, match_threshold: float = 0.5,
                unmatched_threshold: float = 0.5) -> AnchorLabels:
  """`label_anchors` over a batch of [B, G, 4] boxes and [B, G] classes."""
  fn = lambda b, c: label_anchors(anchors, b, c, match_threshold, unmatched_threshold)  # noqa: E731
  return jax.vmap(fn)(gt_boxes, gt_classes)
