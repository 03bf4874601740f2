"""RPN training targets on device: official `dataloader/anchor.py` `RpnAnchorLabeler`.

The official labeler runs in the input pipeline on each image's unpadded boxes:
  1. `IouSimilarity` (no +1) between ground truth and all anchors of all levels;
  2. `ArgMaxMatcher(0.7, 0.3, negatives_lower_than_unmatched=True, force_match_for_each_row=True)`:
     IoU >= 0.7 matched, < 0.3 unmatched (-1), [0.3, 0.7) ignored (-2), then every ground-truth box
     claims its best anchor (lowest anchor on ties, lowest box when several claim one anchor);
  3. box targets by `FasterRcnnBoxCoder()` (no scale factors, no +1) for every matched anchor,
     sampled or not, 0 elsewhere;
  4. `BalancedPositiveNegativeSampler(positive_fraction=0.5, is_static=False)` draws 256 anchors
     over all levels together: a uniform random subset of at most 128 positives, then a uniform
     random subset of at most 256 - (positives drawn) negatives (match -1); ignored anchors never;
  5. score targets 1 (sampled positive), 0 (sampled negative), -1 (everything else).

Here the ground truth is padded to a fixed count (rows with class <= 0 are padding and never match
nor force-match, as in `target_assigner.argmax_match`), and the sampler is static-shaped: one
uniform random permutation of all anchors orders the candidates, and the first 128 positives and
the first 256 - k negatives in that order are kept. Restricted to the positives (or the negatives)
a uniform permutation is a uniform random order, independently of the other set, so each subset
has exactly the distribution of the official `tf.random_shuffle(tf.where(indicator))[:n]`; only the
random stream differs. `subsample_with_order` is the deterministic part, testable against the
official slicing rule for a given order.

Targets are packed over all anchors in `anchors.generate_anchors` order ([B, N] and [B, N, 4]);
`unpack_levels` gives the official per-level dicts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import box_ops, target_assigner

MATCH_THRESHOLD = 0.7
UNMATCHED_THRESHOLD = 0.3
BATCH_SIZE_PER_IMAGE = 256
FG_FRACTION = 0.5


class RpnTargets(NamedTuple):
  score_targets: jax.Array  # [..., N] int32: 1 positive, 0 negative, -1 not sampled or ignored
  box_targets: jax.Array    # [..., N, 4] FasterRcnnBoxCoder [ty, tx, th, tw]; 0 where unmatched
  matches: jax.Array        # [..., N] int32 matcher result: gt row, -1 unmatched, -2 ignored


def subsample_with_order(indicator: jax.Array, labels: jax.Array, order: jax.Array,
                         sample_size: int = BATCH_SIZE_PER_IMAGE,
                         positive_fraction: float = FG_FRACTION) -> jax.Array:
  """The official non-static `BalancedPositiveNegativeSampler.subsample` for a given random order.

  Args:
    indicator: [N] bool, the entries that may be sampled.
    labels: [N] bool, positives (True) and negatives (False).
    order: [N] int32, a permutation of range(N); it plays the official shuffles
      (`minibatch_sampler.subsample_indicator`): candidates earlier in `order` are kept first.
    sample_size: the minibatch size (official `batch_size`).
    positive_fraction: at most int(sample_size * positive_fraction) positives.

  Returns:
    [N] bool: the sampled entries; min(#positives, max) positives and
    min(#negatives, sample_size - positives drawn) negatives.
  """
  positive = indicator & labels
  negative = indicator & ~labels
  max_positives = int(positive_fraction * sample_size)
  pos_in_order = positive[order]
  take_pos = pos_in_order & (jnp.cumsum(pos_in_order) <= max_positives)
  num_pos = jnp.sum(take_pos)
  neg_in_order = negative[order]
  take_neg = neg_in_order & (jnp.cumsum(neg_in_order) <= sample_size - num_pos)
  return jnp.zeros_like(indicator).at[order].set(take_pos | take_neg)


def score_targets_from_matches(matches: jax.Array, order: jax.Array,
                               sample_size: int = BATCH_SIZE_PER_IMAGE,
                               positive_fraction: float = FG_FRACTION) -> jax.Array:
  """[N] int32 score targets from [N] matcher results (official `_get_rpn_samples`)."""
  indicator = matches > -2   # matched or unmatched: ignored anchors are never sampled
  labels = matches > -1
  sampled = subsample_with_order(indicator, labels, order, sample_size, positive_fraction)
  return jnp.where(sampled, jnp.where(labels, 1, 0), -1).astype(jnp.int32)


def label_rpn_anchors(key: jax.Array, anchors: jax.Array, gt_boxes: jax.Array,
                      gt_classes: jax.Array, match_threshold: float = MATCH_THRESHOLD,
                      unmatched_threshold: float = UNMATCHED_THRESHOLD,
                      sample_size: int = BATCH_SIZE_PER_IMAGE,
                      positive_fraction: float = FG_FRACTION,
                      order: jax.Array | None = None) -> RpnTargets:
  """RPN targets of one image.

  Args:
    key: PRNG key for the sampling order (unused when `order` is given).
    anchors: [N, 4] anchors of all levels, [ymin, xmin, ymax, xmax] pixels of the padded image.
    gt_boxes: [G, 4] ground truth in the same pixels, padded rows arbitrary (-1 from the parser).
    gt_classes: [G] class ids; rows with class <= 0 are padding.
    match_threshold, unmatched_threshold: the ArgMaxMatcher thresholds (0.7, 0.3).
    sample_size, positive_fraction: the sampler's 256 anchors and 0.5.
    order: optional [N] permutation replacing the random order (for tests).

  Returns:
    `RpnTargets` with [N] score targets, [N, 4] box targets and [N] matches.
  """
  valid = gt_classes > 0
  iou = box_ops.pairwise_iou(gt_boxes, anchors)
  matches = target_assigner.argmax_match(iou, valid, match_threshold, unmatched_threshold,
                                         force_match=True)
  matched = matches >= 0
  box_targets = box_ops.encode(gt_boxes[jnp.maximum(matches, 0)], anchors)
  box_targets = jnp.where(matched[:, None], box_targets, 0.0)
  if order is None:
    order = jax.random.permutation(key, anchors.shape[0])
  scores = score_targets_from_matches(matches, order, sample_size, positive_fraction)
  return RpnTargets(scores, box_targets, matches)


def label_rpn_batch(key: jax.Array, anchors: jax.Array, gt_boxes: jax.Array,
                    gt_classes: jax.Array, match_threshold: float = MATCH_THRESHOLD,
                    unmatched_threshold: float = UNMATCHED_THRESHOLD,
                    sample_size: int = BATCH_SIZE_PER_IMAGE,
                    positive_fraction: float = FG_FRACTION,
                    orders: jax.Array | None = None) -> RpnTargets:
  """`label_rpn_anchors` over [B, G, 4] boxes and [B, G] classes; one key split per image (or
  [B, N] `orders`). Returns [B, N] scores, [B, N, 4] box targets, [B, N] matches."""
  batch = gt_boxes.shape[0]
  if orders is None:
    orders = jax.vmap(lambda k: jax.random.permutation(k, anchors.shape[0]))(
        jax.random.split(key, batch))

  def one(boxes, classes, order):
    return label_rpn_anchors(None, anchors, boxes, classes, match_threshold, unmatched_threshold,
                             sample_size, positive_fraction, order=order)
  return jax.vmap(one)(gt_boxes, gt_classes, orders)


def unpack_levels(targets: RpnTargets, config: anchor_ops.AnchorConfig,
                  image_size: tuple[int, int]) -> tuple[dict, dict]:
  """Official per-level layout: ({level: [..., H_l, W_l, A]} scores,
  {level: [..., H_l, W_l, 4A]} boxes), as `Anchor.unpack_labels`.

  Raises:
    ValueError: if the anchors do not tile `image_size` (see `anchors.unpack_levels`).
  """
  scores = anchor_ops.unpack_levels(targets.score_targets[..., None], config, image_size)
  boxes = anchor_ops.unpack_levels(targets.box_targets, config, image_size)
  return scores, boxes
