"""RoI sampling (`ops/roi_sampler.py`) and the +1 box encoding (`box_ops.encode_boxes`,
`bbox_overlap`) against hand-computed cases and numpy transcriptions of the official
`target_ops.assign_and_sample_proposals`, `box_matching`, `box_utils` and the static
`BalancedPositiveNegativeSampler`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import box_ops, roi_sampler

GT = [0.0, 0.0, 10.0, 10.0]
PAD = [-1.0] * 4


# ---------------------------------------------------------------- official transcriptions (numpy)

def _np_encode_boxes(boxes, anchors, weights=None):
  box_h = boxes[..., 2:3] - boxes[..., 0:1] + 1.0
  box_w = boxes[..., 3:4] - boxes[..., 1:2] + 1.0
  box_yc = boxes[..., 0:1] + 0.5 * box_h
  box_xc = boxes[..., 1:2] + 0.5 * box_w
  anchor_h = anchors[..., 2:3] - anchors[..., 0:1] + 1.0
  anchor_w = anchors[..., 3:4] - anchors[..., 1:2] + 1.0
  anchor_yc = anchors[..., 0:1] + 0.5 * anchor_h
  anchor_xc = anchors[..., 1:2] + 0.5 * anchor_w
  dy = (box_yc - anchor_yc) / anchor_h
  dx = (box_xc - anchor_xc) / anchor_w
  dh = np.log(box_h / anchor_h)
  dw = np.log(box_w / anchor_w)
  if weights:
    dy, dx, dh, dw = dy * weights[0], dx * weights[1], dh * weights[2], dw * weights[3]
  return np.concatenate([dy, dx, dh, dw], axis=-1)


def _np_bbox_overlap(boxes, gt_boxes):
  bb_y_min, bb_x_min, bb_y_max, bb_x_max = np.split(boxes, 4, axis=2)
  gt_y_min, gt_x_min, gt_y_max, gt_x_max = np.split(gt_boxes, 4, axis=2)
  t = lambda x: np.transpose(x, [0, 2, 1])
  i_xmin = np.maximum(bb_x_min, t(gt_x_min))
  i_xmax = np.minimum(bb_x_max, t(gt_x_max))
  i_ymin = np.maximum(bb_y_min, t(gt_y_min))
  i_ymax = np.minimum(bb_y_max, t(gt_y_max))
  i_area = np.maximum(i_xmax - i_xmin, 0) * np.maximum(i_ymax - i_ymin, 0)
  bb_area = (bb_y_max - bb_y_min) * (bb_x_max - bb_x_min)
  gt_area = (gt_y_max - gt_y_min) * (gt_x_max - gt_x_min)
  u_area = bb_area + t(gt_area) - i_area + 1e-8
  iou = i_area / u_area
  gt_invalid_mask = np.max(gt_boxes, axis=-1, keepdims=True) < 0.0
  padding_mask = np.logical_or(np.zeros_like(bb_x_min, dtype=bool), t(gt_invalid_mask))
  return np.where(padding_mask, -np.ones_like(iou), iou)


def _np_box_matching(boxes, gt_boxes, gt_classes):
  iou = _np_bbox_overlap(boxes, gt_boxes)
  matched_iou = np.max(iou, axis=-1)
  background_box_mask = matched_iou <= 0.0
  argmax_iou_indices = np.argmax(iou, axis=-1)
  b = np.arange(boxes.shape[0])[:, None]
  matched_gt_boxes = gt_boxes[b, argmax_iou_indices]
  matched_gt_boxes = np.where(background_box_mask[..., None], 0.0, matched_gt_boxes)
  matched_gt_classes = gt_classes[b, argmax_iou_indices]
  matched_gt_classes = np.where(background_box_mask, 0, matched_gt_classes)
  matched_gt_indices = np.where(background_box_mask, -1, argmax_iou_indices)
  return matched_gt_boxes, matched_gt_classes, matched_gt_indices, matched_iou


def _np_top_k_indices(x, k):
  """tf.nn.top_k indices: descending values, the lower index first on ties."""
  return np.argsort(-x, axis=-1, kind='stable')[..., :k]


def _np_static_subsample(indicator, batch_size, labels, permutation, positive_fraction):
  """`_static_subsample`, `_get_num_pos_neg_samples`, `_get_values_from_start_and_end`."""
  input_length = indicator.shape[0]
  num_true_sampled = np.sum(indicator.astype(np.float32))
  additional_false_sample = np.cumsum(np.logical_not(indicator).astype(np.float32)) <= (
      batch_size - num_true_sampled)
  indicator = np.logical_or(indicator, additional_false_sample)
  indicator = indicator.astype(np.float32)[permutation]
  labels = labels.astype(np.float32)[permutation]
  indicator_idx = np.where(indicator.astype(bool), np.arange(1, input_length + 1), 0)
  signed_label = np.where(labels.astype(bool), 1, -1)
  signed_indicator_idx = indicator_idx * signed_label
  sorted_signed_indicator_idx = signed_indicator_idx[_np_top_k_indices(signed_indicator_idx,
                                                                       input_length)]
  num_sampled_pos = np.sum(sorted_signed_indicator_idx > 0)
  num_positive_samples = min(int(batch_size * positive_fraction), num_sampled_pos)
  num_negative_samples = batch_size - num_positive_samples
  r = np.arange(input_length)
  selected_positions = np.logical_or(r < num_positive_samples,
                                     r >= input_length - num_negative_samples).astype(np.float32)
  indexed_positions = np.cumsum(selected_positions) * selected_positions
  one_hot_selector = np.eye(batch_size + 1, dtype=np.float32)[
      indexed_positions.astype(np.int64) - 1][:, :batch_size]   # one_hot(-1) is all zeros
  sampled_idx = np.tensordot(sorted_signed_indicator_idx.astype(np.float32), one_hot_selector,
                             axes=[0, 0]).astype(np.int64)
  sampled_idx = np.abs(sampled_idx) - 1
  sampled_idx = (sampled_idx >= 0).astype(np.int64) * sampled_idx
  sampled_idx_indicator = np.eye(input_length)[sampled_idx].sum(axis=0).astype(bool)
  reprojections = np.eye(input_length, dtype=np.float32)[permutation]
  return np.tensordot(sampled_idx_indicator.astype(np.float32), reprojections,
                      axes=[0, 0]).astype(bool)


def _np_assign_and_sample(proposals, gt_boxes, gt_classes, permutations, num_samples=512,
                          fg_fraction=0.25, bg_iou_thresh_lo=0.0):
  boxes = np.concatenate([proposals, gt_boxes], axis=1)
  matched_gt_boxes, matched_gt_classes, matched_gt_indices, matched_iou = _np_box_matching(
      boxes, gt_boxes, gt_classes)
  positive_match = matched_iou > 0.5
  negative_match = np.logical_and(matched_iou >= bg_iou_thresh_lo, matched_iou < 0.5)
  ignored_match = matched_iou < 0.0
  matched_gt_classes = np.where(negative_match, 0, matched_gt_classes)
  matched_gt_indices = np.where(negative_match, 0, matched_gt_indices)
  candidates = np.logical_and(np.logical_or(positive_match, negative_match),
                              np.logical_not(ignored_match))
  sampled = np.stack([_np_static_subsample(candidates[i], num_samples, positive_match[i],
                                           permutations[i], fg_fraction)
                      for i in range(boxes.shape[0])])
  idx = _np_top_k_indices(sampled.astype(np.int32), num_samples)
  b = np.arange(boxes.shape[0])[:, None]
  rois, gt, classes, indices = (boxes[b, idx], matched_gt_boxes[b, idx],
                                matched_gt_classes[b, idx], matched_gt_indices[b, idx])
  targets = _np_encode_boxes(gt, rois, weights=[10.0, 10.0, 5.0, 5.0])
  targets = np.where((classes == 0)[..., None], 0.0, targets)
  return rois, gt, classes, indices, targets, sampled


# ---------------------------------------------------------------- hand-computed cases

def test_encode_boxes_plus_one_hand_computed_and_decode_inverts_it():
  roi = jnp.array([[1.0, 1.0, 9.0, 12.0]])     # h 9, w 12 (+1), centre (5.5, 7)
  gt = jnp.array([GT])                          # h = w = 11, centre (5.5, 5.5)
  codes = box_ops.encode_boxes(gt, roi, weights=(10.0, 10.0, 5.0, 5.0))
  np.testing.assert_allclose(codes, [[0.0, -1.25, 5 * math.log(11 / 9), 5 * math.log(11 / 12)]],
                             rtol=1e-6)
  np.testing.assert_allclose(box_ops.encode_boxes(gt, roi), [[0.0, -0.125, math.log(11 / 9),
                                                              math.log(11 / 12)]], rtol=1e-6)
  # The existing `decode` is the official decode_boxes (+1, weights): it inverts encode_boxes.
  np.testing.assert_allclose(box_ops.decode(codes, roi, (10.0, 10.0, 5.0, 5.0)), gt, atol=1e-5)


def test_bbox_overlap_epsilon_and_padding():
  boxes = jnp.array([[[0.0, 0.0, 10.0, 20.0], [0, 0, 0, 0], PAD, [0, 0, 10, 5]]])
  gt = jnp.array([[GT, PAD, [0.0, 0.0, 0.0, 0.0]]])
  iou = np.asarray(box_ops.bbox_overlap(boxes, gt))
  assert iou.shape == (1, 4, 3)
  assert iou[0, 0, 0] == np.float32(0.5)          # 100 / (200 + 1e-8) is 0.5 in float32
  assert (iou[0, :, 1] == -1).all()               # padded row: max coordinate < 0
  assert iou[0, 1, 2] == 0.0 and iou[0, 2, 0] == 0.0   # empty boxes: 0, not NaN
  assert iou[0, 3, 0] == np.float32(0.5)


def _proposals(ious_to_gt, num_background=600):
  """Boxes [0, 0, 10, w] with IoU w / 10 (w <= 10) to GT, then background zero boxes."""
  boxes = [[0.0, 0.0, 10.0, 10.0 * v] for v in ious_to_gt]
  return jnp.array([boxes + [[0.0] * 4] * num_background])


def test_foreground_is_strictly_above_half_and_background_bounds():
  # IoU 0.5 exactly, 0.6, 0.45, then 508 boxes [20, 20, 30, 30] with IoU 0; with the appended gt
  # (IoU 1) and padded gt row (IoU 0) that makes exactly 512 candidates besides the IoU-0.5 box,
  # so every candidate is sampled whatever the key and nothing else is needed.
  props = jnp.concatenate([_proposals([0.5, 0.6, 0.45], 0),
                           jnp.array([[[20.0, 20, 30, 30]] * 508])], axis=1)
  gt, classes = jnp.array([[GT, PAD]]), jnp.array([[7, -1]])
  sampled = jax.jit(jax.vmap(lambda k: roi_sampler.sample_rois(k, props, gt, classes)))(
      jax.random.split(jax.random.key(0), 5))
  rois = np.asarray(sampled.rois)
  assert rois.shape == (5, 1, 512, 4)
  widths = rois[..., 3]
  assert not (widths == 5.0).any()                # IoU exactly 0.5: neither fg nor bg
  for w in (6.0, 4.5, 10.0, -1.0):                # 0.6 fg, 0.45 bg, gt fg, padded gt row bg
    assert ((widths == w).sum(-1) == 1).all(), w
  np.testing.assert_array_equal((np.asarray(sampled.classes) > 0).sum(-1), 2)
  fg = np.asarray(sampled.classes) == 7
  assert (fg == ((widths == 6.0) | (widths == 10.0))).all()
  # With bg_iou_thresh_lo 0.3 the IoU-0 boxes are no candidates: among 16 samples only the
  # 0.45 box is a real background candidate.
  out = roi_sampler.sample_rois(jax.random.key(1), props, gt, classes, num_samples_per_image=16,
                                bg_iou_thresh_lo=0.3)
  widths = np.asarray(out.rois[0, :, 3])
  assert (widths == 4.5).sum() == 1 and (widths == 6.0).sum() == 1 and (widths == 10.0).sum() == 1


def test_padding_fills_up_in_index_order_when_candidates_are_few():
  # 3 candidates (gt, 0.6, 0.45) of 8 samples: the first non-candidates in index order (IoU 0.5,
  # then the IoU-0 boxes excluded by bg_iou_thresh_lo) fill up, as the official static sampler
  # does. The IoU-0.5 box keeps its class and box target.
  props = jnp.concatenate([_proposals([0.5, 0.6, 0.45], 0), jnp.array([[[20.0, 20, 30, 30]] * 9])],
                          axis=1)
  out = roi_sampler.sample_rois(jax.random.key(3), props, jnp.array([[GT]]), jnp.array([[7]]),
                                num_samples_per_image=8, bg_iou_thresh_lo=0.3)
  np.testing.assert_array_equal(out.rois[0, :, 3], [5, 6, 4.5, 30, 30, 30, 30, 10])
  np.testing.assert_array_equal(out.classes[0], [7, 7, 0, 0, 0, 0, 0, 7])
  assert np.abs(np.asarray(out.box_targets[0, 0])).sum() > 0


def test_counts_targets_and_matching_hand_computed():
  # 200 foreground boxes (IoU 0.6 / 1) among 800 zero boxes: 128 fg + 384 bg.
  props = jnp.concatenate([_proposals([0.6] * 100, 800),
                           jnp.array([[[1.0, 1.0, 9.0, 12.0]] * 100])], axis=1)
  gt = jnp.array([[GT, [100.0, 100, 150, 150], PAD]])
  classes = jnp.array([[3, 9, -1]])
  out = jax.jit(roi_sampler.sample_rois)(jax.random.key(0), props, gt, classes)
  cls = np.asarray(out.classes[0])
  assert (cls > 0).sum() == 128 and (cls == 0).sum() == 384
  fg = cls > 0
  np.testing.assert_array_equal(np.asarray(out.gt_indices[0])[fg & (cls == 3)], 0)
  np.testing.assert_array_equal(np.asarray(out.gt_indices[0])[~fg], 0)
  np.testing.assert_array_equal(out.box_targets[0][~fg], 0.0)
  hand = [0.0, -1.25, 5 * math.log(11 / 9), 5 * math.log(11 / 12)]
  is_hand = np.asarray(out.rois[0, :, 3]) == 12.0
  np.testing.assert_allclose(np.asarray(out.box_targets[0])[is_hand],
                             np.tile(hand, (is_hand.sum(), 1)), rtol=1e-6)
  # The sampled boxes come in increasing index order (top_k of the indicator): width-6 proposals,
  # zero boxes, width-12 proposals, then the appended gt rows.
  group = {6.0: 0, 0.0: 1, 12.0: 2, 10.0: 3, 150.0: 4, -1.0: 5}
  order = [group[float(w)] for w in np.asarray(out.rois[0, :, 3])]
  assert (np.diff(order) >= 0).all() and {0, 1, 2, 3, 4} <= set(order)


def test_box_matching_hand_computed():
  boxes = jnp.array([[[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [50, 50, 60, 60], PAD,
                      [100, 100, 150, 150]]])
  gt = jnp.array([[[0.0, 0, 10, 5], [0.0, 0, 10, 5], GT, PAD]])   # rows 0 and 1 tie
  m = roi_sampler.box_matching(boxes, gt, jnp.array([[4, 5, 6, -1]]))
  np.testing.assert_array_equal(m.indices, [[2, 0, 0, -1, -1, -1]])
  np.testing.assert_array_equal(m.classes, [[6, 4, 4, 0, 0, 0]])
  np.testing.assert_allclose(m.iou, [[1.0, 1.0, 0.8, 0.0, 0.0, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(m.gt_boxes[0, 3:], 0.0)
  none = roi_sampler.box_matching(boxes, jnp.array([[PAD, PAD]]), jnp.array([[-1, -1]]))
  np.testing.assert_array_equal(none.iou, -1.0)
  np.testing.assert_array_equal(none.indices, -1)


def test_fewer_boxes_than_samples_raises():
  with pytest.raises(ValueError, match='512 samples'):
    roi_sampler.sample_rois(jax.random.key(0), jnp.zeros((1, 400, 4)), jnp.zeros((1, 100, 4)),
                            jnp.zeros((1, 100), jnp.int32))


# ---------------------------------------------------------------- against the transcriptions

def _random_case(rng, batch, num_props, max_gt, regimes):
  gt = -np.ones((batch, max_gt, 4))
  classes = -np.ones((batch, max_gt), np.int32)
  props = np.zeros((batch, num_props, 4))
  for b, (num_gt, fg_share, zero_share) in enumerate(regimes):
    yx = rng.uniform(0, 400, (num_gt, 2))
    gt[b, :num_gt] = np.concatenate([yx, yx + rng.uniform(8, 200, (num_gt, 2))], axis=1)
    classes[b, :num_gt] = rng.integers(1, 91, num_gt)
    for i in range(num_props):
      u = rng.random()
      if num_gt and u < fg_share:      # a jittered ground-truth box: IoU over a wide range
        g = gt[b, rng.integers(num_gt)]
        size = np.array([g[2] - g[0], g[3] - g[1]] * 2)
        props[b, i] = g + rng.normal(0, rng.choice([0.03, 0.1, 0.3]), 4) * size
      elif u < fg_share + zero_share:
        props[b, i] = 0.0              # the proposal generator's padding
      else:
        yx = rng.uniform(0, 500, 2)
        props[b, i] = np.concatenate([yx, yx + rng.uniform(2, 150, 2)])
    props[b, :, 2:] = np.maximum(props[b, :, 2:], props[b, :, :2])
  return props, gt, classes


@pytest.mark.parametrize('bg_iou_thresh_lo', [0.0, 0.1])
def test_matches_official_transcription_float64(bg_iou_thresh_lo):
  rng = np.random.default_rng(0)
  # (valid gt, share of jittered-gt proposals, share of zero boxes): ordinary images, images with
  # mostly foreground (more than 128 positives and fewer than 384 negatives), one without ground
  # truth (nothing but padding candidates), one with few foreground.
  regimes = [(5, 0.3, 0.2), (12, 0.95, 0.0), (0, 0.0, 0.3), (3, 0.98, 0.0), (1, 0.1, 0.5),
             (20, 0.7, 0.0)]
  props, gt, classes = _random_case(rng, len(regimes), 700, 24, regimes)
  perms = np.stack([rng.permutation(700 + 24) for _ in regimes])
  expected = _np_assign_and_sample(props, gt, classes, perms, bg_iou_thresh_lo=bg_iou_thresh_lo)
  with jax.enable_x64(True):
    fn = jax.jit(roi_sampler.sample_rois, static_argnames=('bg_iou_thresh_lo',))
    out = fn(None, jnp.asarray(props), jnp.asarray(gt), jnp.asarray(classes),
             bg_iou_thresh_lo=bg_iou_thresh_lo, permutations=jnp.asarray(perms))
    for got, want in zip(out, expected[:4]):
      np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(out.box_targets, expected[4], rtol=1e-12, atol=1e-12)
  # The regimes exercise the static sampler's quirks. Too few negatives: the last slots take
  # positives too, so more than 25% foreground comes out. With non-candidates (IoU < 0.1 here)
  # in such an image, kept zeros all mark permuted position 0, and fewer than 512 boxes are
  # sampled (top_k then fills up with unsampled ones in index order).
  assert ((expected[2] > 0).sum(-1) > 128).any()
  counts = expected[5].sum(-1)
  assert (counts == 512).any()
  if bg_iou_thresh_lo > 0:
    assert (counts < 512).any(), counts


def test_static_subsample_matches_official_transcription():
  rng = np.random.default_rng(1)
  fn = jax.jit(roi_sampler.static_balanced_subsample, static_argnums=(3, 4))
  for trial in range(40):
    n = int(rng.choice([40, 64, 100]))
    size = int(rng.choice([8, 16, 32, 40]))
    indicator = rng.random(n) < rng.uniform(0.05, 1.0)
    labels = rng.random(n) < rng.uniform(0.0, 1.0)
    perm = rng.permutation(n)
    frac = float(rng.choice([0.25, 0.5]))
    got = fn(jnp.asarray(indicator), jnp.asarray(labels), jnp.asarray(perm), size, frac)
    want = _np_static_subsample(indicator, size, labels, perm, frac)
    np.testing.assert_array_equal(got, want, err_msg=f'trial {trial}')


def test_sampling_distribution_over_keys():
  # 5 foreground and 40 background proposals (plus the gt box itself: 6 fg), 8 samples at 25%:
  # 2 fg (each with probability 1/3) and 6 bg (each 6/40), whatever the key.
  props = jnp.concatenate([_proposals([0.8] * 5, 0), jnp.array([[[20.0, 20, 30, 30]] * 40])],
                          axis=1)
  gt, classes = jnp.array([[GT]]), jnp.array([[2]])
  perms = jax.vmap(lambda k: jax.random.permutation(k, 46))(jax.random.split(jax.random.key(5),
                                                                               6000))
  fn = jax.jit(jax.vmap(lambda p: roi_sampler.sample_rois(
      None, props, gt, classes, num_samples_per_image=8, permutations=p[None])))
  out = fn(perms)
  assert ((np.asarray(out.classes) > 0).sum(-1) == 2).all()
  rois = np.asarray(out.rois)[:, 0]
  is_fg = rois[..., 3] != 30.0
  assert (is_fg.sum(-1) == 2).all() and ((~is_fg).sum(-1) == 6).all()
  # Each of the 6 fg boxes: 5 proposals of width 8 and the gt (width 10). Frequencies 1/3.
  np.testing.assert_allclose((rois[..., 3] == 10.0).any(-1).mean(), 1 / 3, atol=0.025)
  np.testing.assert_allclose((rois[..., 3] == 8.0).sum(-1).mean() / 5, 1 / 3, atol=0.025)
