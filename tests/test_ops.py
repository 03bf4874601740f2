"""Anchors, box coding, matching and labelling against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import anchors as anchor_ops
from spinenet_jax.ops import box_ops
from spinenet_jax.ops import target_assigner as ta


def test_anchor_positions_sizes_and_order():
  config = anchor_ops.AnchorConfig(min_level=3, max_level=3, num_scales=1, aspect_ratios=(1.0,),
                                   anchor_size=4.0)
  boxes = anchor_ops.generate_anchors(config, (16, 16))
  # stride 8: centres 4 and 12; size 4 * 8 = 32; order (y, x).
  np.testing.assert_array_equal(boxes, [[-12, -12, 20, 20], [-12, -4, 20, 28],
                                        [-4, -12, 28, 20], [-4, -4, 28, 28]])
  assert boxes.dtype == np.float32


def test_anchor_scales_and_aspect_ratios():
  config = anchor_ops.AnchorConfig(min_level=4, max_level=4, anchor_size=3.0)
  boxes = anchor_ops.generate_anchors(config, (16, 32))
  assert boxes.shape == (1 * 2 * 9, 4)
  first = boxes[:9]   # the 9 anchors of cell (y=8, x=8): scale-major, then aspect ratio
  heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
  sizes = [3.0 * 16 * 2 ** (s / 3) for s in range(3)]
  expected_w = [s * math.sqrt(r) for s in sizes for r in (1.0, 2.0, 0.5)]
  expected_h = [s / math.sqrt(r) for s in sizes for r in (1.0, 2.0, 0.5)]
  np.testing.assert_allclose(widths, expected_w, rtol=1e-6)
  np.testing.assert_allclose(heights, expected_h, rtol=1e-6)
  np.testing.assert_allclose((first[:, 0] + first[:, 2]) / 2, 8.0, rtol=1e-6)
  np.testing.assert_allclose((boxes[9:, 1] + boxes[9:, 3]) / 2, 24.0, rtol=1e-6)  # next cell in x


def test_anchor_count_and_unpacking_at_640():
  config = anchor_ops.AnchorConfig()
  boxes = anchor_ops.generate_anchors(config, (640, 640))
  assert boxes.shape == (8525 * 9, 4)
  per_level = anchor_ops.unpack_levels(boxes, config, (640, 640))
  assert {k: v.shape for k, v in per_level.items()} == {
      3: (80, 80, 36), 4: (40, 40, 36), 5: (20, 20, 36), 6: (10, 10, 36), 7: (5, 5, 36)}
  np.testing.assert_array_equal(anchor_ops.pack_levels(per_level, 4), boxes)
  with pytest.raises(ValueError, match='multiple of 2\\^7'):
    anchor_ops.unpack_levels(boxes[:-1], config, (640, 640))


def test_encode_hand_computed_and_decode_asymmetry():
  anchor = jnp.array([[0.0, 0.0, 10.0, 10.0]])
  box = jnp.array([[2.0, 4.0, 6.0, 12.0]])
  codes = box_ops.encode(box, anchor)
  np.testing.assert_allclose(codes, [[-0.1, 0.3, math.log(0.4), math.log(0.8)]], rtol=1e-6)
  # Decoding uses the +1 convention, so it does not invert encoding.
  np.testing.assert_allclose(box_ops.decode(codes, anchor), [[2.2, 4.4, 5.6, 12.2]], rtol=1e-5)
  np.testing.assert_allclose(box_ops.decode(jnp.zeros((1, 4)), anchor), anchor, atol=1e-6)
  np.testing.assert_allclose(box_ops.decode_encoded(codes, anchor), box, rtol=1e-5, atol=1e-5)


def test_decode_clips_log_sizes():
  anchor = jnp.array([[0.0, 0.0, 10.0, 10.0]])
  out = box_ops.decode(jnp.array([[0.0, 0.0, 10.0, -1.0]]), anchor)
  h = out[0, 2] - out[0, 0] + 1
  assert float(h) == pytest.approx(1000 / 16 * 11, rel=1e-5)
  assert float(out[0, 3] - out[0, 1] + 1) == pytest.approx(math.exp(-1) * 11, rel=1e-5)


def test_encode_with_weights():
  anchor = jnp.array([[0.0, 0.0, 10.0, 10.0]])
  box = jnp.array([[2.0, 4.0, 6.0, 12.0]])
  np.testing.assert_allclose(box_ops.encode(box, anchor, (10.0, 10.0, 5.0, 5.0)),
                             box_ops.encode(box, anchor) * jnp.array([10, 10, 5, 5]), rtol=1e-6)


def test_clip_boxes_to_output_canvas():
  boxes = jnp.array([[[-5.0, 3.0, 700.0, 639.5]]])
  np.testing.assert_array_equal(box_ops.clip_boxes(boxes, jnp.array([[640.0, 640.0]])),
                                [[[0.0, 3.0, 639.0, 639.0]]])


def test_iou_without_plus_one():
  a = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
  b = jnp.array([[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
  np.testing.assert_allclose(box_ops.pairwise_iou(a, b), [[25 / 175, 0, 1], [0, 0, 0]], rtol=1e-6)


def _match(sim, valid=(True, True), **kw):
  return np.asarray(ta.argmax_match(jnp.asarray(sim, jnp.float32), jnp.asarray(valid), **kw))


def test_matcher_thresholds_and_ties():
  sim = [[0.6, 0.4, 0.2, 0.0, 0.55],
         [0.6, 0.45, 0.1, 0.0, 0.7]]
  # Column 0: a tie goes to the lower row. Columns 1-3: below 0.5, and no row's best column.
  np.testing.assert_array_equal(_match(sim), [0, -1, -1, -1, 1])
  # With an ignore band [0.4, 0.5): 0.45 and 0.4 become -2.
  np.testing.assert_array_equal(_match(sim, unmatched_threshold=0.4), [0, -2, -1, -1, 1])


def test_matcher_force_match():
  sim = [[0.3, 0.4, 0.2, 0.0, 0.1],
         [0.35, 0.1, 0.45, 0.0, 0.2]]
  # Row 0's best column (1) and row 1's (2) are matched although below the threshold.
  np.testing.assert_array_equal(_match(sim), [-1, 0, 1, -1, -1])
  np.testing.assert_array_equal(_match(sim, force_match=False), [-1, -1, -1, -1, -1])


def test_matcher_force_match_conflict_lowest_row_wins():
  sim = [[0.3, 0.1, 0.0],
         [0.35, 0.2, 0.0]]
  # Both rows' best column is 0; the official one-hot argmax gives it to row 0 (not the higher IoU).
  np.testing.assert_array_equal(_match(sim), [0, -1, -1])


def test_matcher_force_match_first_column_on_ties():
  sim = [[0.3, 0.3, 0.1]]
  np.testing.assert_array_equal(_match(sim, valid=(True,)), [0, -1, -1])


def test_matcher_padding_rows_never_match():
  sim = [[0.2, 0.6], [0.9, 0.9]]
  np.testing.assert_array_equal(_match(sim, valid=(True, False)), [-1, 0])
  np.testing.assert_array_equal(_match(sim, valid=(False, False)), [-1, -1])


def test_label_anchors_targets():
  anchors = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 10.0, 10.0, 20.0], [20.0, 20.0, 30.0, 30.0],
                       [0.0, 0.0, 4.0, 4.0]])
  gt = jnp.array([[0.0, 0.0, 10.0, 12.0], [21.0, 21.0, 29.0, 29.0], [-1.0, -1.0, -1.0, -1.0]])
  classes = jnp.array([5, 17, -1])
  labels = ta.label_anchors(anchors, gt, classes)
  np.testing.assert_array_equal(labels.matches, [0, -1, 1, -1])
  np.testing.assert_array_equal(labels.cls_targets, [5, -1, 17, -1])
  assert float(labels.num_positives) == 2.0
  np.testing.assert_allclose(labels.box_targets[0], box_ops.encode(gt[0], anchors[0]), rtol=1e-6)
  np.testing.assert_array_equal(labels.box_targets[1], 0.0)
  batch = ta.label_batch(anchors, gt[None].repeat(2, 0), classes[None].repeat(2, 0))
  np.testing.assert_array_equal(batch.cls_targets, np.stack([labels.cls_targets] * 2))
