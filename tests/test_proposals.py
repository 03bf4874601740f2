"""Tiled sorted NMS and multilevel RoI proposals against hand-computed cases, a line-by-line numpy
transcription of the official `ops/nms.py` and `ops/roi_ops.py`, and a sequential greedy NMS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import nms, proposals

F32 = np.float32
MASK_RCNN_ANCHORS = anchor_ops.AnchorConfig(num_scales=1, aspect_ratios=(1.0, 2.0, 0.5),
                                            anchor_size=3.0)

# --- official `ops/nms.py` and `utils/box_utils.py`, transcribed line by line (float32) ---------


def official_bbox_overlap(boxes, gt_boxes):
  by0, bx0, by1, bx1 = np.split(boxes, 4, axis=2)
  gy0, gx0, gy1, gx1 = np.split(gt_boxes, 4, axis=2)
  t = lambda x: np.transpose(x, [0, 2, 1])
  i_xmin = np.maximum(bx0, t(gx0))
  i_xmax = np.minimum(bx1, t(gx1))
  i_ymin = np.maximum(by0, t(gy0))
  i_ymax = np.minimum(by1, t(gy1))
  i_area = np.maximum(i_xmax - i_xmin, F32(0)) * np.maximum(i_ymax - i_ymin, F32(0))
  bb_area = (by1 - by0) * (bx1 - bx0)
  gt_area = (gy1 - gy0) * (gx1 - gx0)
  u_area = bb_area + t(gt_area) - i_area + F32(1e-8)
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = i_area / u_area
  gt_invalid_mask = np.max(gt_boxes, axis=-1, keepdims=True) < 0.0
  padding_mask = np.zeros_like(bx0, bool) | t(gt_invalid_mask)
  return np.where(padding_mask, F32(-1), iou)


def _self_suppression(iou, iou_sum, iou_threshold):
  batch_size = iou.shape[0]
  can_suppress_others = (np.max(iou, 1) <= iou_threshold).reshape(batch_size, -1, 1).astype(F32)
  iou_after_suppression = (np.max(can_suppress_others * iou, 1) <= iou_threshold).astype(
      F32).reshape(batch_size, -1, 1) * iou
  iou_sum_new = np.sum(iou_after_suppression, (1, 2))
  return iou_after_suppression, np.any(iou_sum - iou_sum_new > iou_threshold), iou_sum_new


def _cross_suppression(boxes, box_slice, iou_threshold, inner_idx, tile):
  new_slice = boxes[:, inner_idx * tile:(inner_idx + 1) * tile]
  iou = official_bbox_overlap(new_slice, box_slice)
  return np.all(iou < iou_threshold, 1).astype(F32)[..., None] * box_slice


def _suppression_loop_body(boxes, iou_threshold, output_size, idx, tile):
  batch_size, num_boxes = boxes.shape[:2]
  num_tiles = num_boxes // tile
  box_slice = boxes[:, idx * tile:(idx + 1) * tile]
  for inner_idx in range(idx):
    box_slice = _cross_suppression(boxes, box_slice, iou_threshold, inner_idx, tile)
  iou = official_bbox_overlap(box_slice, box_slice)
  mask = (np.arange(tile).reshape(1, -1) > np.arange(tile).reshape(-1, 1))[None]
  iou = iou * (mask & (iou >= iou_threshold)).astype(F32)
  loop_condition, iou_sum = True, np.sum(iou, (1, 2))
  while loop_condition:
    iou, loop_condition, iou_sum = _self_suppression(iou, iou_sum, iou_threshold)
  suppressed_box = np.sum(iou, 1) > 0
  box_slice = box_slice * (F32(1) - suppressed_box.astype(F32))[..., None]
  mask = (np.arange(num_tiles) == idx).astype(F32).reshape(1, -1, 1, 1)
  boxes = (np.tile(box_slice[:, None], [1, num_tiles, 1, 1]) * mask +
           boxes.reshape(batch_size, num_tiles, tile, 4) * (1 - mask)).reshape(boxes.shape)
  output_size = output_size + np.sum(np.any(box_slice > 0, 2), 1).astype(np.int32)
  return boxes, output_size, idx + 1


def official_sorted_nms_padded(scores, boxes, max_output_size, iou_threshold, tile=512):
  """(scores [B, M], boxes [B, M, 4]) exactly as `sorted_non_max_suppression_padded`."""
  iou_threshold = F32(iou_threshold)
  batch_size, num_boxes = scores.shape
  pad = int(np.ceil(F32(num_boxes) / F32(tile))) * tile - num_boxes
  boxes = np.pad(boxes.astype(F32), [[0, 0], [0, pad], [0, 0]])
  scores = np.pad(scores.astype(F32), [[0, 0], [0, pad]], constant_values=-1)
  num_boxes += pad
  selected_boxes, output_size, idx = boxes, np.zeros([batch_size], np.int32), 0
  while np.min(output_size) < max_output_size and idx < num_boxes // tile:
    selected_boxes, output_size, idx = _suppression_loop_body(
        selected_boxes, iou_threshold, output_size, idx, tile)
  key = np.any(selected_boxes > 0, 2).astype(np.int32) * np.arange(num_boxes, 0, -1)[None]
  idx = num_boxes - -np.sort(-key, axis=1)[:, :max_output_size]
  idx = np.minimum(idx, num_boxes - 1)
  out_boxes = np.take_along_axis(boxes, idx[..., None], 1)
  boxes_mask = np.arange(max_output_size).reshape(1, -1, 1) < output_size.reshape(-1, 1, 1)
  out_boxes = out_boxes * boxes_mask.astype(F32)
  out_scores = np.take_along_axis(scores, idx, 1)
  scores_mask = np.arange(max_output_size).reshape(1, -1) < output_size.reshape(-1, 1)
  return np.where(scores_mask, out_scores, F32(-1)), out_boxes


def greedy_nms(scores, boxes, max_output, iou_threshold):
  """Sequential NMS with the official conventions: a box is dropped when its IoU (official
  formula, float32) with an earlier surviving box is >= thr; survivors with no coordinate > 0
  still suppress but are not output."""
  iou_threshold = F32(iou_threshold)
  boxes, scores = boxes.astype(F32), scores.astype(F32)
  out_s = np.full(scores.shape[:1] + (max_output,), F32(-1))
  out_b = np.zeros(boxes.shape[:1] + (max_output, 4), F32)
  for b in range(boxes.shape[0]):
    iou = official_bbox_overlap(boxes[b:b + 1], boxes[b:b + 1])[0]
    survivors, kept = [], []
    for i in range(boxes.shape[1]):
      if not np.any(iou[survivors, i] >= iou_threshold):
        survivors.append(i)
        if np.any(boxes[b, i] > 0):
          kept.append(i)
    kept = kept[:max_output]
    out_s[b, :len(kept)], out_b[b, :len(kept)] = scores[b, kept], boxes[b, kept]
  return out_s, out_b


def ours(scores, boxes, max_output, iou_threshold, tile=nms.NMS_TILE_SIZE):
  fn = jax.jit(nms.sorted_nms_padded, static_argnums=(2, 3, 4))
  s, b = fn(jnp.asarray(boxes), jnp.asarray(scores), max_output, iou_threshold, tile)
  assert s.shape == (boxes.shape[0], max_output) and s.dtype == jnp.float32
  assert b.shape == (boxes.shape[0], max_output, 4) and b.dtype == jnp.float32
  return np.asarray(s), np.asarray(b)


def assert_same(a, b):
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def clustered_boxes(rng, batch, n, image=256.0):
  """Boxes in ~n/40 clusters (many overlaps), with duplicates, all-zero boxes, boxes entirely at
  negative coordinates and partly negative ones; scores sorted, with ties."""
  k = max(2, n // 40)
  centres = rng.uniform(0, image, (batch, k, 2))
  sizes = rng.uniform(8, 80, (batch, k, 2))
  which = rng.integers(0, k, (batch, n))
  c = np.take_along_axis(centres, which[..., None], 1) + rng.normal(0, 4, (batch, n, 2))
  s = np.take_along_axis(sizes, which[..., None], 1) * rng.uniform(0.8, 1.25, (batch, n, 2))
  boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(F32)
  pick = lambda frac: rng.random((batch, n)) < frac
  dup = pick(0.05)
  boxes[dup] = boxes[:, :1].repeat(n, 1)[dup]
  boxes[pick(0.03)] = 0.0
  boxes[pick(0.01)] = -rng.uniform(1, 50, 4).astype(F32)
  scores = -np.sort(-np.round(rng.random((batch, n)), 2), axis=1).astype(F32)
  return scores, boxes


# --- (a) hand-computed cases --------------------------------------------------------------------


def run(boxes, scores, max_output, thr, tile=nms.NMS_TILE_SIZE):
  boxes = np.asarray(boxes, F32)[None]
  scores = np.asarray(scores, F32)[None]
  result = ours(scores, boxes, max_output, thr, tile)
  assert_same(result, official_sorted_nms_padded(scores, boxes, max_output, thr, tile))
  return result[0][0], result[1][0]


def test_ties_in_score_keep_input_order_and_duplicates_are_suppressed():
  a, b = [0, 0, 10, 10], [20, 20, 30, 30]
  s, out = run([a, b, a, b], [0.9, 0.9, 0.9, 0.8], 4, 0.7)
  np.testing.assert_array_equal(s, np.asarray([0.9, 0.9, -1, -1], F32))
  np.testing.assert_array_equal(out, [a, b, [0] * 4, [0] * 4])


def test_iou_exactly_at_threshold_is_suppressed():
  a, b = [0, 0, 10, 10], [0, 0, 10, 20]       # IoU 100 / 200 = 0.5 exactly in float32
  iou = nms._overlap(jnp.asarray([[a]], F32), jnp.asarray([[100.0]], F32),
                     jnp.asarray([[b]], F32), jnp.asarray([[200.0]], F32))
  assert iou[0, 0, 0] == 0.5
  assert list(run([a, b], [0.9, 0.8], 2, 0.5)[0]) == [F32(0.9), -1]
  assert list(run([a, b], [0.9, 0.8], 2, float(np.nextafter(F32(0.5), F32(1))))[0]) == [
      F32(0.9), F32(0.8)]


def test_zero_boxes_never_kept_and_negative_boxes_suppress_unseen():
  zero, a, b = [0, 0, 0, 0], [0, 0, 10, 10], [1, 1, 11, 11]   # IoU(a, b) = 81 / 119
  s, out = run([zero, a, zero, b], [0.9, 0.8, 0.7, 0.6], 3, 0.7)
  np.testing.assert_array_equal(s, [F32(0.8), F32(0.6), -1])
  np.testing.assert_array_equal(out, [a, b, [0] * 4])
  # Entirely negative: never output, yet it suppresses (IoU 81 / 94.5) a box that reaches x = 0.5.
  neg, partly = [-10, -10, -1, -1], [-10, -10, -1, 0.5]
  s, out = run([neg, partly, a], [0.9, 0.8, 0.7], 3, 0.7)
  np.testing.assert_array_equal(s, [F32(0.7), -1, -1])
  s, _ = run([partly, a], [0.8, 0.7], 3, 0.7)
  np.testing.assert_array_equal(s, [F32(0.8), F32(0.7), -1])


def test_padding_slots_and_more_slots_than_boxes():
  a, b, c = [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 11]
  s, out = run([a, b, c], [0.5, 0.4, 0.3], 5, 0.7)
  np.testing.assert_array_equal(s, [F32(0.5), F32(0.4), -1, -1, -1])
  np.testing.assert_array_equal(out[2:], 0)
  boxes = np.asarray([[a, b, c]], F32)
  s, out = ours(np.asarray([[0.5, 0.4, 0.3]], F32), boxes, 10, 0.7, 4)   # 10 slots > 4 padded
  np.testing.assert_array_equal(s[0], [F32(0.5), F32(0.4)] + [-1] * 8)
  np.testing.assert_array_equal(out[0, 2:], 0)


def test_official_chain_at_threshold_differs_from_greedy_only_inside_a_tile():
  """IoU(a, b) == 0.5 == thr, IoU(b, c) = 0.75, IoU(a, c) = 0.25: greedy keeps a and c. The
  official tile lets b (suppressed at exactly thr) still suppress c; across tiles it is greedy."""
  a, b, c = [0, 0, 10, 10], [0, 0, 10, 20], [0, 5, 10, 20]
  scores, boxes = np.asarray([[0.9, 0.8, 0.7]], F32), np.asarray([[a, b, c]], F32)
  s, _ = run([a, b, c], [0.9, 0.8, 0.7], 3, 0.5)
  np.testing.assert_array_equal(s, [F32(0.9), -1, -1])
  greedy = greedy_nms(scores, boxes, 3, 0.5)
  np.testing.assert_array_equal(greedy[0][0], [F32(0.9), F32(0.7), -1])
  assert_same(ours(scores, boxes, 3, 0.5, 1), greedy)
  assert_same(official_sorted_nms_padded(scores, boxes, 3, 0.5, tile=1), greedy)


# --- (b) random cases: tiled == official transcription == greedy -------------------------------


@pytest.mark.parametrize('n,max_output,thr,tile,seed', [
    (2000, 1000, 0.7, 512, 0), (1337, 300, 0.5, 512, 1), (1999, 2000, 0.7, 512, 2),
    (2000, 20, 0.7, 512, 3), (301, 301, 0.6, 64, 4)])
def test_random_matches_official_and_greedy(n, max_output, thr, tile, seed):
  rng = np.random.default_rng(seed)
  scores, boxes = clustered_boxes(rng, 2, n)
  result = ours(scores, boxes, max_output, thr, tile)
  official = official_sorted_nms_padded(scores, boxes, max_output, thr, tile)
  assert_same(result, official)
  assert_same(result, greedy_nms(scores, boxes, max_output, thr))
  kept = (result[0] > -1).sum(1)
  assert np.all(kept > 0) and (max_output <= 20 or np.all(kept < min(n, max_output)))


def test_integer_boxes_with_exact_threshold_ious_match_official():
  """Integer coordinates make IoUs exactly 0.5 common (chains included)."""
  rng = np.random.default_rng(5)
  y0x0 = rng.integers(0, 16, (2, 700, 2))
  boxes = np.concatenate([y0x0, y0x0 + rng.integers(1, 6, (2, 700, 2))], -1).astype(F32)
  scores = -np.sort(-rng.random((2, 700)), axis=1).astype(F32)
  iou = official_bbox_overlap(boxes, boxes)
  assert (iou == 0.5).sum() > 1000
  result = ours(scores, boxes, 700, 0.5)
  assert_same(result, official_sorted_nms_padded(scores, boxes, 700, 0.5))
  assert not np.array_equal(result[0], greedy_nms(scores, boxes, 700, 0.5)[0])


def test_overlap_is_the_official_float32_formula_bit_for_bit():
  rng = np.random.default_rng(6)
  _, boxes = clustered_boxes(rng, 2, 600)
  areas = nms._areas(jnp.asarray(boxes))
  iou = jax.jit(nms._overlap)(jnp.asarray(boxes), areas, jnp.asarray(boxes), areas)
  np.testing.assert_array_equal(np.asarray(iou), official_bbox_overlap(boxes, boxes))


def test_nms_decides_on_the_official_float32_iou_not_a_fused_one():
  """XLA contracts a product feeding an addition into one FMA (one rounding where TF rounds
  twice). For pairs where fusing either area into the union's sum moves the IoU by an ulp, put
  the threshold between the official and the fused IoU: only the official rounding decides as
  the official code does."""
  _, boxes = clustered_boxes(np.random.default_rng(6), 1, 400)
  boxes = boxes[:, np.all(boxes > 0, axis=-1)[0]]
  b = boxes[0]
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  area64 = (b[:, 2] - b[:, 0]).astype(np.float64) * (b[:, 3] - b[:, 1])     # exact product
  sides = np.maximum(np.minimum(b[:, None, 2:], b[None, :, 2:]) -
                     np.maximum(b[:, None, :2], b[None, :, :2]), F32(0))
  inter = sides[..., 1] * sides[..., 0]
  fused = [inter / ((area64[:, None] + area[None, :]).astype(F32) - inter + F32(1e-8)),
           inter / ((area[:, None] + area64[None, :]).astype(F32) - inter + F32(1e-8))]
  iou = official_bbox_overlap(boxes, boxes)[0]
  lower = (fused[0] < iou) & (fused[1] < iou) & (iou > 0.3)
  higher = (fused[0] > iou) & (fused[1] > iou) & (iou > 0.3)
  cases = [(i, j, float(iou[i, j])) for i, j in np.argwhere(lower)[:2]]
  cases += [(i, j, float(np.nextafter(iou[i, j], F32(1)))) for i, j in np.argwhere(higher)[:2]]
  assert len(cases) == 4
  for i, j, thr in cases:
    s, _ = ours(np.asarray([[0.9, 0.8]], F32), boxes[:, [i, j]], 2, thr)
    assert (s[0, 1] == -1) == (iou[i, j] >= F32(thr)), (i, j, thr)


# --- (c) proposals against the official `multilevel_propose_rois`, transcribed ------------------


def official_decode_boxes(encoded, anchors):
  encoded = encoded.astype(anchors.dtype)
  dy, dx, dh, dw = (encoded[..., i:i + 1] for i in range(4))
  clip = np.log(1000. / 16.)
  dh, dw = np.minimum(dh, clip), np.minimum(dw, clip)
  anchor_h = anchors[..., 2:3] - anchors[..., 0:1] + 1.0
  anchor_w = anchors[..., 3:4] - anchors[..., 1:2] + 1.0
  anchor_yc = anchors[..., 0:1] + 0.5 * anchor_h
  anchor_xc = anchors[..., 1:2] + 0.5 * anchor_w
  yc, xc = dy * anchor_h + anchor_yc, dx * anchor_w + anchor_xc
  h, w = np.exp(dh) * anchor_h, np.exp(dw) * anchor_w
  ymin, xmin = yc - 0.5 * h, xc - 0.5 * w
  return np.concatenate([ymin, xmin, ymin + h - 1.0, xmin + w - 1.0], axis=-1)


def official_clip_boxes(boxes, image_shape):
  image_shape = image_shape.astype(boxes.dtype)
  height, width = image_shape[..., 0:1], image_shape[..., 1:2]
  y_x_max = np.concatenate([height - 1.0, width - 1.0, height - 1.0, width - 1.0], -1)
  return np.maximum(np.minimum(boxes, y_x_max), 0.0)


def official_filter_boxes(boxes, scores, image_shape, min_size_threshold):
  image_shape = image_shape.astype(boxes.dtype)
  height, width = image_shape[..., 0], image_shape[..., 1]
  h = boxes[..., 2] - boxes[..., 0] + 1.0
  w = boxes[..., 3] - boxes[..., 1] + 1.0
  yc, xc = boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w
  min_size = max(min_size_threshold, 1.0)
  mask = (h > min_size) & (w > min_size) & (yc > 0.0) & (yc < height) & (xc > 0.0) & (
      xc < width)
  return mask[..., None].astype(boxes.dtype) * boxes, np.where(mask, scores, 0.0)


def official_top_k_boxes(boxes, scores, k):
  ids = np.argsort(-scores, axis=1, kind='stable')[:, :k]    # tf.nn.top_k: lower index on ties
  return np.take_along_axis(boxes, ids[..., None], 1), np.take_along_axis(scores, ids, 1)


def official_propose_rois(rpn_boxes, rpn_scores, anchor_boxes, image_shape, pre_nms_top_k,
                          post_nms_top_k, nms_threshold, score_threshold=0.0,
                          min_size_threshold=0.0, total_top_k=None):
  """`multilevel_propose_rois` (decode, clip, no batched NMS, sigmoid); `total_top_k` lets the
  overall top-k differ from the per-level one (officially both are rpn_post_nms_top_k)."""
  rois, roi_scores = [], []
  image_shape = image_shape[:, None, :]
  for level in sorted(rpn_scores):
    _, feature_h, feature_w, num_anchors_per_location = rpn_scores[level].shape
    num_boxes = feature_h * feature_w * num_anchors_per_location
    scores = rpn_scores[level].reshape(-1, num_boxes)
    boxes = rpn_boxes[level].reshape(-1, num_boxes, 4)
    anchors = anchor_boxes[level].reshape(-1, num_boxes, 4).astype(scores.dtype)
    scores = 1.0 / (1.0 + np.exp(-scores))
    boxes = official_clip_boxes(official_decode_boxes(boxes, anchors), image_shape)
    if min_size_threshold > 0.0:
      boxes, scores = official_filter_boxes(boxes, scores, image_shape, min_size_threshold)
    pre_k, post_k = min(num_boxes, pre_nms_top_k), min(num_boxes, post_nms_top_k)
    if score_threshold > 0.0:
      mask = scores > score_threshold
      scores, boxes = np.where(mask, scores, 0.0), mask[..., None].astype(boxes.dtype) * boxes
    boxes, scores = official_top_k_boxes(boxes, scores, pre_k)
    scores, boxes = official_sorted_nms_padded(scores, boxes, post_k, nms_threshold)
    rois.append(boxes)
    roi_scores.append(scores)
  all_rois, all_scores = np.concatenate(rois, 1), np.concatenate(roi_scores, 1)
  total = post_nms_top_k if total_top_k is None else total_top_k
  return official_top_k_boxes(all_rois, all_scores, min(all_scores.shape[1], total))


def rpn_outputs(seed, batch=2, image=(256, 256), dtype=np.float64, shrink=0.0):
  """Random RPN logits and deltas (some dh/dw beyond the decode clip, all sizes scaled by
  exp(-shrink)) and Mask R-CNN anchors [h*w*A, 4] per level 3..7."""
  rng = np.random.default_rng(seed)
  shapes = anchor_ops.level_shapes(MASK_RCNN_ANCHORS, image)
  a = MASK_RCNN_ANCHORS.anchors_per_location
  scores, deltas, anchors = {}, {}, {}
  for level, (h, w) in shapes.items():
    scores[level] = rng.normal(0, 2, (batch, h, w, a)).astype(dtype)
    d = rng.normal(0, 1, (batch, h, w, a, 4)) * [0.3, 0.3, 0.5, 0.5]
    d[..., 2:] += 6.0 * (rng.random((batch, h, w, a, 2)) < 0.02) - shrink
    deltas[level] = d.reshape(batch, h, w, 4 * a).astype(dtype)
    anchors[level] = anchor_ops.level_anchors(MASK_RCNN_ANCHORS, level, image)
  return scores, deltas, anchors


IMAGE_SHAPE = np.array([[256, 256], [200, 232]], np.float64)   # per-image clip sizes


@pytest.mark.parametrize('pre,post,total,score_thr,min_size', [
    (2000, 1000, 1000, 0.0, 0.0),     # training defaults: level 3 takes 2000 of 3072, 4-7 all
    (1000, 1000, 1000, 0.0, 0.0),     # test defaults
    (100, 50, 300, 0.0, 0.0),         # fewer slots (210) than total_top_k, -1 slots included
    (500, 200, 700, 0.3, 6.0)])       # the optional filters on
def test_proposals_match_official_transcription_float64(pre, post, total, score_thr, min_size):
  scores, deltas, anchors = rpn_outputs(7)
  expected_boxes, expected_scores = official_propose_rois(
      deltas, scores, anchors, IMAGE_SHAPE, pre, post, 0.7, score_thr, min_size, total)
  with jax.enable_x64(True):
    fn = jax.jit(functools.partial(
        proposals.multilevel_propose_rois, pre_nms_top_k=pre, post_nms_top_k_per_level=post,
        total_top_k=total, score_threshold=score_thr, min_size_threshold=min_size))
    rois, roi_scores = fn(scores, deltas, anchors, jnp.asarray(IMAGE_SHAPE))
    rois, roi_scores = np.asarray(rois), np.asarray(roi_scores)
  assert rois.dtype == np.float32 and roi_scores.dtype == np.float32   # NMS casts, as official
  np.testing.assert_array_equal(roi_scores, expected_scores)
  np.testing.assert_array_equal(rois, expected_boxes)
  slots = sum(min(n, post) for n in (3072, 768, 192, 48, 12))    # anchors per level at 256
  assert rois.shape == (2, min(total, slots), 4)
  valid = roi_scores > -1
  assert np.all(rois[~valid] == 0) and np.all(roi_scores[valid] > score_thr)
  assert np.all(valid) == (total == 1000)      # -1 slots fill the output when too few survive
  if min_size:
    sizes = rois[..., 2:] - rois[..., :2] + 1.0
    assert np.all(sizes[valid] > min_size)
  assert np.all(rois[1, :, 2] <= 199) and np.all(rois[1, :, 3] <= 231) and np.all(rois >= 0)


def test_proposals_pass_every_anchor_of_small_levels():
  """Shrunk boxes and NMS at 0.95 keep nearly everything: levels 4-7 (768, 192, 48, 12 anchors,
  fewer than pre_nms_top_k) must pass all of theirs, and every slot reaches the output."""
  scores, deltas, anchors = rpn_outputs(10, shrink=1.5)
  expected = official_propose_rois(deltas, scores, anchors, IMAGE_SHAPE, 1000, 1000, 0.95,
                                   total_top_k=5000)
  with jax.enable_x64(True):
    fn = jax.jit(functools.partial(proposals.multilevel_propose_rois, pre_nms_top_k=1000,
                                   nms_iou_threshold=0.95, total_top_k=5000))
    rois, roi_scores = (np.asarray(x) for x in fn(scores, deltas, anchors, IMAGE_SHAPE))
  assert roi_scores.shape == (2, 1000 + 768 + 192 + 48 + 12)
  assert np.all((roi_scores > -1).sum(1) > 1000 + 768 + 192 + 48 + 12 - 100)
  np.testing.assert_array_equal(roi_scores, expected[1])
  np.testing.assert_array_equal(rois, expected[0])


def test_proposals_accept_every_anchor_layout():
  """Anchors as [h*w*A, 4], [h, w, 4A] (`unpack_levels`) or with a batch dim give one result."""
  scores, deltas, anchors = rpn_outputs(8, dtype=np.float32)
  fn = jax.jit(functools.partial(proposals.multilevel_propose_rois, pre_nms_top_k=300,
                                 post_nms_top_k_per_level=100, total_top_k=200))
  run_ = lambda a: fn(scores, deltas, a, IMAGE_SHAPE)
  flat = run_(anchors)
  grid = anchor_ops.unpack_levels(np.concatenate([anchors[k] for k in sorted(anchors)]),
                                  MASK_RCNN_ANCHORS, (256, 256))
  assert grid[3].shape == (32, 32, 12)
  batched = {k: np.broadcast_to(v, (2,) + v.shape) for k, v in anchors.items()}
  for other in (run_(grid), run_(batched)):
    np.testing.assert_array_equal(np.asarray(other[0]), np.asarray(flat[0]))
    np.testing.assert_array_equal(np.asarray(other[1]), np.asarray(flat[1]))


# --- (d) jit and static shapes ------------------------------------------------------------------


def test_jit_static_shapes_and_errors():
  scores, deltas, anchors = rpn_outputs(9, dtype=np.float32)
  fn = jax.jit(functools.partial(proposals.multilevel_propose_rois, pre_nms_top_k=1000))
  shapes = jax.eval_shape(fn, scores, deltas, anchors, jnp.asarray(IMAGE_SHAPE))
  assert shapes[0].shape == (2, 1000, 4) and shapes[1].shape == (2, 1000)
  assert shapes[0].dtype == jnp.float32
  nms_fn = jax.jit(nms.sorted_nms_padded, static_argnums=(2, 3))
  s = jax.eval_shape(nms_fn, jnp.zeros((3, 700, 4)), jnp.zeros((3, 700)), 123, 0.7)
  assert s[0].shape == (3, 123) and s[1].shape == (3, 123, 4)
  with pytest.raises(ValueError, match='iou_threshold'):
    nms.sorted_nms_padded(jnp.zeros((1, 4, 4)), jnp.zeros((1, 4)), 2, 0.0)
  with pytest.raises(ValueError, match='needs NMS'):
    proposals.multilevel_propose_rois(scores, deltas, anchors, IMAGE_SHAPE,
                                      nms_iou_threshold=0.0)

