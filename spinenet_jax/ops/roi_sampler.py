"""Fast R-CNN RoI sampling and targets on device: official `ops/target_ops.py` (`ROISampler`,
`box_matching`, `assign_and_sample_proposals`) and the static
`BalancedPositiveNegativeSampler(is_static=True)`.

Per image (the official code loops over the batch; here `vmap`):
  1. The padded ground-truth boxes are appended to the proposals (`mix_gt_boxes`): N + G boxes.
  2. `box_matching`: argmax `bbox_overlap` IoU (first ground truth on ties). A box whose best IoU is
     <= 0 gets class 0, a zero matched box and index -1 (IoU -1 means no valid ground truth).
  3. Foreground: IoU > 0.5 strictly (the official docstring says >=). Background: 0 <= IoU < 0.5;
     its class and index become 0 (its matched box stays the ground truth it overlaps). IoU exactly
     0.5 and IoU < 0 are no candidates, and keep their class and index.
  4. The static sampler picks 512 boxes, at most 25% foreground, with the exact selection rule of
     `_static_subsample` given its random permutation (see `static_balanced_subsample`).
  5. The sampled boxes are gathered in increasing index order (`top_k` of the 0/1 indicator).
  6. Box targets: `encode_boxes(matched gt, roi, weights=(10, 10, 5, 5))`, +1 convention, zeroed
     where the class is 0.

The only randomness is the permutation (`tf.random_shuffle(tf.range(N + G))` officially,
`jax.random.permutation` here): given the same permutation the result is identical; across
streams the distribution is the same (a uniform permutation either way).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from spinenet_jax.ops import box_ops

FRCNN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class Matches(NamedTuple):
  gt_boxes: jax.Array   # [B, N, 4] matched ground truth; 0 where the best IoU <= 0
  classes: jax.Array    # [B, N] int32 matched class; 0 where the best IoU <= 0
  indices: jax.Array    # [B, N] int32 matched ground-truth row; -1 where the best IoU <= 0
  iou: jax.Array        # [B, N] the best IoU (-1: no valid ground truth)


class RoiSamples(NamedTuple):
  rois: jax.Array         # [B, K, 4] sampled boxes (proposals or ground truth)
  gt_boxes: jax.Array     # [B, K, 4] their matched ground truth (see `Matches`)
  classes: jax.Array      # [B, K] int32 class targets, 0 = background
  gt_indices: jax.Array   # [B, K] int32 ground-truth rows (0 for background, -1 without gt)
  box_targets: jax.Array  # [B, K, 4] encode_boxes(gt, roi, (10, 10, 5, 5)); 0 for background


def box_matching(boxes: jax.Array, gt_boxes: jax.Array, gt_classes: jax.Array) -> Matches:
  """Official `target_ops.box_matching` on [B, N, 4] boxes, [B, G, 4] and [B, G] ground truth
  padded with -1 (padding detected from the boxes, as `bbox_overlap` does)."""
  iou = box_ops.bbox_overlap(boxes, gt_boxes)
  best_iou = jnp.max(iou, axis=-1)
  background = best_iou <= 0.0
  index = jnp.argmax(iou, axis=-1).astype(jnp.int32)
  gt = jnp.take_along_axis(gt_boxes, index[..., None], axis=-2)
  gt = jnp.where(background[..., None], jnp.zeros_like(gt), gt)
  classes = jnp.take_along_axis(gt_classes, index, axis=-1).astype(jnp.int32)
  classes = jnp.where(background, 0, classes)
  index = jnp.where(background, -1, index)
  return Matches(gt, classes, index, best_iou)


def static_balanced_subsample(indicator: jax.Array, labels: jax.Array, permutation: jax.Array,
                              sample_size: int, positive_fraction: float) -> jax.Array:
  """Official `BalancedPositiveNegativeSampler._static_subsample` for a given permutation.

  The rule, step by step as officially:
    - if fewer than `sample_size` entries are indicated, the first non-indicated entries (in index
      order) are added until there are `sample_size`; they count as negatives unless labelled;
    - in permuted order, positives get +(position + 1), negatives -(position + 1), the rest 0;
      sorted descending, the first min(#positives, int(sample_size * positive_fraction)) values and
      the last sample_size - that many are kept: the positives and the negatives that come *last*
      in the permutation. With fewer negatives than that, the last slots reach back into the
      non-indicated 0s and then into the positives, so more positives than the cap come out (e.g.
      over 128 foreground RoIs when an image has few background boxes);
    - a kept value v marks permuted position |v| - 1, and a kept 0 marks permuted position 0 --
      an official quirk kept for exactness; several kept 0s mark it once, so fewer than
      `sample_size` entries can come out.

  Args:
    indicator: [N] bool, entries that may be sampled.
    labels: [N] bool, positives.
    permutation: [N] int, the official `tf.random_shuffle(tf.range(N))`.
    sample_size: minibatch size.
    positive_fraction: the cap on positives as a fraction of `sample_size`.

  Returns:
    [N] bool sampled entries.
  """
  n = indicator.shape[-1]
  num_true = jnp.sum(indicator.astype(jnp.int32))
  extra = jnp.cumsum((~indicator).astype(jnp.int32)) <= sample_size - num_true
  indicator = indicator | extra
  position = jnp.arange(1, n + 1, dtype=jnp.int32)
  signed = jnp.where(indicator[permutation], position, 0) * jnp.where(labels[permutation], 1, -1)
  ordered = -jnp.sort(-signed)           # descending; values are distinct except the zeros
  num_pos = jnp.minimum(int(sample_size * positive_fraction), jnp.sum(ordered > 0))
  num_neg = sample_size - num_pos
  r = jnp.arange(n)
  chosen = (r < num_pos) | (r >= n - num_neg)
  slot = jnp.where(chosen, jnp.cumsum(chosen) - 1, sample_size)   # out of range: dropped
  picked = jnp.zeros(sample_size, jnp.int32).at[slot].set(ordered, mode='drop')
  sampled_permuted = jnp.zeros(n, bool).at[jnp.maximum(jnp.abs(picked) - 1, 0)].set(True)
  return jnp.zeros(n, bool).at[permutation].set(sampled_permuted)


def sample_rois(key: jax.Array | None, proposals: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, num_samples_per_image: int = 512,
                fg_fraction: float = 0.25, fg_iou_thresh: float = 0.5,
                bg_iou_thresh_hi: float = 0.5, bg_iou_thresh_lo: float = 0.0,
                mix_gt_boxes: bool = True, permutations: jax.Array | None = None) -> RoiSamples:
  """Official `ROISampler.__call__` plus the Fast R-CNN box targets of `maskrcnn_model.py`.

  Args:
    key: PRNG key for the per-image permutations (unused when `permutations` is given).
    proposals: [B, N, 4] RoIs in pixels of the scaled image (e.g. the 1000 proposals, with their
      zero-box padding).
    gt_boxes: [B, G, 4] ground truth, padded rows -1.
    gt_classes: [B, G] class ids, padded -1.
    num_samples_per_image, fg_fraction, fg_iou_thresh, bg_iou_thresh_hi, bg_iou_thresh_lo,
      mix_gt_boxes: the official `roi_sampling` parameters (defaults as `maskrcnn_config.py`).
    permutations: optional [B, N + G] (N without `mix_gt_boxes`) permutations replacing the random
      ones (for tests).

  Returns:
    `RoiSamples`, K = num_samples_per_image.

  Raises:
    ValueError: if there are fewer boxes than `num_samples_per_image` (the official `top_k` fails).
  """
  boxes = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], axis=1) \
      if mix_gt_boxes else proposals
  batch, n = boxes.shape[:2]
  if n < num_samples_per_image:
    raise ValueError(f'{n} boxes per image cannot give {num_samples_per_image} samples.')
  match = box_matching(boxes, gt_boxes, gt_classes)
  positive = match.iou > fg_iou_thresh
  negative = (match.iou >= bg_iou_thresh_lo) & (match.iou < bg_iou_thresh_hi)
  ignored = match.iou < 0.0
  classes = jnp.where(negative, 0, match.classes)
  indices = jnp.where(negative, 0, match.indices)
  candidates = (positive | negative) & ~ignored
  if permutations is None:
    permutations = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, batch))
  sampled = jax.vmap(lambda c, p, perm: static_balanced_subsample(
      c, p, perm, num_samples_per_image, fg_fraction))(candidates, positive, permutations)
  # Indicator top_k: sampled boxes first, each group in increasing index order.
  _, picked = jax.lax.top_k(sampled.astype(jnp.int32), num_samples_per_image)

  def take(x):
    return jnp.take_along_axis(x, picked.reshape(picked.shape + (1,) * (x.ndim - 2)), axis=1)
  rois, gt, classes, indices = take(boxes), take(match.gt_boxes), take(classes), take(indices)
  targets = box_ops.encode_boxes(gt, rois, weights=FRCNN_BOX_WEIGHTS)
  targets = jnp.where((classes == 0)[..., None], jnp.zeros_like(targets), targets)
  return RoiSamples(rois, gt, classes, indices, targets)
