"""RPN targets (`ops/rpn_targets.py`) against hand-computed cases and a numpy transcription of the
official `RpnAnchorLabeler` (IouSimilarity, ArgMaxMatcher, FasterRcnnBoxCoder, sampler)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import rpn_targets

GT = [0.0, 0.0, 10.0, 10.0]
# IoU with GT: 0.8, 0.7, 0.5, 0.3, 0.2, 0 (widths 8, 7, 5, 3, 2; then a far box).
ANCHORS = [[0, 0, 10, 8], [0, 0, 10, 7], [0, 0, 10, 5], [0, 0, 10, 3], [0, 0, 10, 2],
           [50, 50, 60, 60]]


def _label(anchors, boxes, classes, **kw):
  return rpn_targets.label_rpn_anchors(jax.random.key(0), jnp.asarray(anchors, jnp.float32),
                                       jnp.asarray(boxes, jnp.float32), jnp.asarray(classes), **kw)


def test_matcher_thresholds_are_07_and_03_with_an_ignore_band():
  out = _label(ANCHORS, [GT, [-1] * 4], [1, -1])
  # >= 0.7 matched (0.7 itself included), [0.3, 0.7) ignored, < 0.3 unmatched.
  np.testing.assert_array_equal(out.matches, [0, 0, -2, -2, -1, -1])
  np.testing.assert_array_equal(out.score_targets, [1, 1, -1, -1, 0, 0])


def test_force_match_semantics():
  anchors = [[0, 0, 10, 4], [0, 0, 10, 4], [0, 0, 10, 3], [100, 100, 110, 110],
             [100, 100, 110, 104]]
  boxes = [GT,                     # best IoU 0.4, tied on anchors 0 and 1: the first one is claimed
           [100, 100, 110, 110],   # IoU 1 with anchor 3
           [100, 100, 110, 110],   # same best anchor as row 1: the lower row keeps it
           [100, 100, 110, 104]]   # padding (class -1): IoU 1 with anchor 4, must claim nothing
  out = _label(anchors, boxes, [1, 2, 3, -1])
  np.testing.assert_array_equal(out.matches, [0, -2, -2, 1, -2])
  np.testing.assert_array_equal(out.score_targets, [1, -1, -1, 1, -1])
  # A valid box overlapping no anchor claims anchor 0 (argmax of zeros) and, being the lower row,
  # takes it from GT, whose best anchor it also is.
  out = _label(anchors, [[200, 200, 210, 210], GT], [4, 1])
  np.testing.assert_array_equal(out.matches, [0, -2, -2, -1, -1])
  out = _label(anchors, [[-1] * 4, [-1] * 4], [-1, -1])           # no ground truth at all
  np.testing.assert_array_equal(out.matches, [-1] * 5)
  np.testing.assert_array_equal(out.score_targets, [0] * 5)
  np.testing.assert_array_equal(out.box_targets, np.zeros((5, 4)))


def test_box_targets_cover_all_matched_anchors_hand_computed():
  anchors = [[0, 0, 10, 8], [1, 0, 11, 9], [40, 40, 50, 50]]   # IoU 0.8, 81/109, 0
  # sample_size 1 allows int(0.5 * 1) = 0 positives: only the negative is sampled, yet both
  # matched anchors get box targets.
  out = _label(anchors, [GT], [1], sample_size=1)
  np.testing.assert_array_equal(out.matches, [0, 0, -1])
  np.testing.assert_array_equal(out.score_targets, [-1, -1, 0])
  # FasterRcnnBoxCoder, no +1, no weights. GT: centre (5, 5), size 10 x 10.
  expected = [[0.0, (5 - 4) / 8, 0.0, math.log(10 / 8)],
              [(5 - 6) / 10, (5 - 4.5) / 9, 0.0, math.log(10 / 9)],
              [0, 0, 0, 0]]
  np.testing.assert_allclose(out.box_targets, expected, rtol=1e-6, atol=1e-7)


def _many_anchors(num_pos, num_ign, num_neg):
  pos = [[0, 0, 10, 10]] * num_pos
  ign = [[0, 0, 10, 5]] * num_ign
  neg = [[50, 50, 60, 60]] * num_neg
  return pos + ign + neg


def test_sample_counts():
  for num_pos, num_neg, expect_pos, expect_neg in [(300, 400, 128, 128), (3, 400, 3, 253),
                                                   (200, 40, 128, 40)]:
    anchors = _many_anchors(num_pos, 50, num_neg)
    out = _label(anchors, [GT, [-1] * 4], [1, -1])
    scores = np.asarray(out.score_targets)
    assert scores.shape == (num_pos + 50 + num_neg,)
    assert (scores == 1).sum() == expect_pos and (scores == 0).sum() == expect_neg
    assert (scores[num_pos:num_pos + 50] == -1).all()           # ignored never sampled
    assert (scores[:num_pos] != 0).all() and (scores[num_pos + 50:] != 1).all()
    # Box targets for every matched anchor, sampled or not (anchor == gt: all 0).
    np.testing.assert_allclose(out.box_targets[:num_pos], 0.0, atol=1e-6)
    assert (np.asarray(out.matches[:num_pos]) == 0).all()
  # No anchor reaches 0.7: the force-matched one (the first of the IoU-0.5 anchors) is the only
  # positive, and it is sampled.
  out = _label(_many_anchors(0, 50, 300), [GT], [1])
  scores = np.asarray(out.score_targets)
  assert scores[0] == 1 and (scores[1:50] == -1).all()
  assert (scores == 1).sum() == 1 and (scores == 0).sum() == 255


def _official_subsample(indicator, labels, batch_size, positive_fraction, order):
  """`BalancedPositiveNegativeSampler.subsample(is_static=False)` with `tf.random_shuffle` of the
  candidate indices replaced by their order in `order`."""
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order))

  def subsample_indicator(ind, num_samples):
    indices = np.where(ind)[0]
    indices = indices[np.argsort(rank[indices])]          # the shuffle
    num_samples = min(indices.size, num_samples)
    selected = np.zeros(ind.shape[0])
    selected[indices[:num_samples]] = 1
    return selected == 1

  negative_idx = np.logical_and(np.logical_not(labels), indicator)
  positive_idx = np.logical_and(labels, indicator)
  max_num_pos = int(positive_fraction * batch_size)
  sampled_pos = subsample_indicator(positive_idx, max_num_pos)
  max_num_neg = batch_size - sampled_pos.sum()
  return np.logical_or(sampled_pos, subsample_indicator(negative_idx, max_num_neg))


def test_subsample_matches_official_rule_for_a_given_order():
  rng = np.random.default_rng(0)
  fn = jax.jit(rpn_targets.subsample_with_order, static_argnums=(3, 4))
  for trial in range(20):
    n = 300
    indicator = rng.random(n) < rng.uniform(0.3, 1.0)
    labels = rng.random(n) < rng.uniform(0.0, 0.8)
    order = rng.permutation(n)
    size = int(rng.choice([16, 64, 256]))
    got = fn(jnp.asarray(indicator), jnp.asarray(labels), jnp.asarray(order), size, 0.5)
    np.testing.assert_array_equal(got, _official_subsample(indicator, labels, size, 0.5, order),
                                  err_msg=f'trial {trial}')


def test_sampling_is_uniform_over_keys():
  # 5 positives (cap 2 of a sample of 4) and 6 negatives (2 drawn): frequencies 0.4 and 1/3.
  matches = jnp.array([0] * 5 + [-2] * 3 + [-1] * 6)

  def one(key):
    order = jax.random.permutation(key, matches.shape[0])
    return rpn_targets.score_targets_from_matches(matches, order, sample_size=4)
  scores = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 6000)))
  assert ((scores == 1).sum(1) == 2).all() and ((scores == 0).sum(1) == 2).all()
  assert (scores[:, 5:8] == -1).all()
  np.testing.assert_allclose((scores[:, :5] == 1).mean(0), 0.4, atol=0.025)
  np.testing.assert_allclose((scores[:, 8:] == 0).mean(0), 1 / 3, atol=0.025)
  # Pairs of positives are equally likely (10 pairs, 0.1 each).
  pairs = [tuple(np.where(row[:5] == 1)[0]) for row in scores]
  counts = np.array([pairs.count(p) for p in set(pairs)]) / len(pairs)
  assert len(counts) == 10
  np.testing.assert_allclose(counts, 0.1, atol=0.02)


def _official_iou(gt, anchors):
  y0a, x0a, y1a, x1a = np.split(gt, 4, axis=1)
  y0b, x0b, y1b, x1b = np.split(anchors, 4, axis=1)
  heights = np.maximum(0.0, np.minimum(y1a, y1b.T) - np.maximum(y0a, y0b.T))
  widths = np.maximum(0.0, np.minimum(x1a, x1b.T) - np.maximum(x0a, x0b.T))
  inter = heights * widths
  area_a = ((y1a - y0a) * (x1a - x0a))[:, 0]
  area_b = ((y1b - y0b) * (x1b - x0b))[:, 0]
  unions = area_a[:, None] + area_b[None, :] - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(inter == 0.0, 0.0, inter / unions)


def _official_match(sim, matched_threshold, unmatched_threshold):
  if sim.shape[0] == 0:
    return -np.ones(sim.shape[1], np.int64)
  matches = np.argmax(sim, 0)
  matched_vals = np.max(sim, 0)
  below = (unmatched_threshold > matched_vals).astype(np.int64)
  between = ((matched_vals >= unmatched_threshold) & (matched_threshold > matched_vals)).astype(
      np.int64)
  matches = matches * (1 - below) + -1 * below
  matches = matches * (1 - between) + -2 * between
  force_match_column_ids = np.argmax(sim, 1)
  indicators = np.eye(sim.shape[1])[force_match_column_ids]
  force_match_row_ids = np.argmax(indicators, 0)
  mask = np.max(indicators, 0).astype(bool)
  return np.where(mask, force_match_row_ids, matches)


def _official_encode(boxes, anchors):
  def centers(b):
    h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[:, 0] + h / 2., b[:, 1] + w / 2., h, w
  yca, xca, ha, wa = centers(anchors)
  yc, xc, h, w = centers(boxes)
  ha, wa, h, w = ha + 1e-8, wa + 1e-8, h + 1e-8, w + 1e-8
  return np.stack([(yc - yca) / ha, (xc - xca) / wa, np.log(h / ha), np.log(w / wa)], axis=1)


def _official_labels(anchors, gt):
  matches = _official_match(_official_iou(gt, anchors), 0.7, 0.3)
  table = np.concatenate([np.zeros((2, 4)), gt], axis=0)    # gather_based_on_match
  matched_gt = table[np.maximum(matches + 2, 0)]
  box_targets = np.where((matches >= 0)[:, None], _official_encode(matched_gt, anchors), 0.0)
  return matches, box_targets


def test_matching_and_box_targets_match_official_transcription_float64():
  config = anchor_ops.AnchorConfig(min_level=3, max_level=5, num_scales=1, anchor_size=3.0)
  anchors = anchor_ops.generate_anchors(config, (128, 128)).astype(np.float64)
  rng = np.random.default_rng(1)
  fn = jax.jit(rpn_targets.label_rpn_batch, static_argnums=(4, 5, 6, 7))
  batch, max_gt = 6, 8
  boxes = -np.ones((batch, max_gt, 4))
  classes = -np.ones((batch, max_gt), np.int32)
  counts = [0, 1, 3, 8, 5, 2]
  for b, k in enumerate(counts):
    yx = rng.uniform(0, 110, (k, 2))
    hw = rng.uniform(4, 70, (k, 2))
    boxes[b, :k] = np.concatenate([yx, np.minimum(yx + hw, 127)], axis=1)
    boxes[b, 1:k:3] = anchors[rng.integers(0, len(anchors), len(boxes[b, 1:k:3]))]  # IoU 1 ties
    classes[b, :k] = rng.integers(1, 91, k)
  with jax.enable_x64(True):
    out = fn(jax.random.key(0), jnp.asarray(anchors), jnp.asarray(boxes), jnp.asarray(classes),
             0.7, 0.3, 256, 0.5)
    for b, k in enumerate(counts):
      matches, box_targets = _official_labels(anchors, boxes[b, :k])
      np.testing.assert_array_equal(out.matches[b], matches)
      np.testing.assert_allclose(out.box_targets[b], box_targets, rtol=1e-12, atol=1e-12)
      scores = np.asarray(out.score_targets[b])
      assert ((scores == 1) <= (matches >= 0)).all() and ((scores == 0) <= (matches == -1)).all()
      assert (scores == 1).sum() == min(128, (matches >= 0).sum())
      assert (scores == 0).sum() == min(256 - (scores == 1).sum(), (matches == -1).sum())


def test_unpack_levels_official_layout():
  config = anchor_ops.AnchorConfig(min_level=3, max_level=5, num_scales=1, anchor_size=3.0)
  anchors = jnp.asarray(anchor_ops.generate_anchors(config, (128, 128)))
  out = rpn_targets.label_rpn_batch(jax.random.key(0), anchors, jnp.array([[GT]] * 2),
                                    jnp.array([[1]] * 2))
  scores, boxes = rpn_targets.unpack_levels(out, config, (128, 128))
  assert {k: v.shape for k, v in scores.items()} == {3: (2, 16, 16, 3), 4: (2, 8, 8, 3),
                                                    5: (2, 4, 4, 3)}
  assert boxes[3].shape == (2, 16, 16, 12)
  np.testing.assert_array_equal(scores[3].reshape(2, -1), out.score_targets[:, :768])
