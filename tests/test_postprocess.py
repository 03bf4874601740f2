"""NMS and the detection generator against a plain transcription of the official algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import box_ops
from spinenet_jax.ops import nms
from spinenet_jax.ops import postprocess


def ref_iou(a, b):
  """TF NonMaxSuppressionV4 IoU."""
  ay0, ay1 = min(a[0], a[2]), max(a[0], a[2])
  ax0, ax1 = min(a[1], a[3]), max(a[1], a[3])
  by0, by1 = min(b[0], b[2]), max(b[0], b[2])
  bx0, bx1 = min(b[1], b[3]), max(b[1], b[3])
  area_a, area_b = (ay1 - ay0) * (ax1 - ax0), (by1 - by0) * (bx1 - bx0)
  if area_a <= 0 or area_b <= 0:
    return 0.0
  inter = max(min(ay1, by1) - max(ay0, by0), 0) * max(min(ax1, bx1) - max(ax0, bx0), 0)
  return inter / (area_a + area_b - inter)


def ref_nms(boxes, scores, max_output, iou_thr, score_thr):
  """The kernel's priority queue: by score, lower index first; hard suppression on IoU > thr."""
  queue = sorted((i for i in range(len(scores)) if scores[i] > score_thr),
                 key=lambda i: (-scores[i], i))
  selected = []
  for i in queue:
    if len(selected) == max_output:
      break
    if all(ref_iou(boxes[i], boxes[j]) <= iou_thr for j in selected):
      selected.append(i)
  return selected + [0] * (max_output - len(selected)), len(selected)


def ref_detections(boxes, scores, max_total, iou_thr, score_thr, pre_nms):
  """Official `_generate_detections_per_image` for one image: boxes [N, 4], scores [N, C]."""
  out_boxes, out_scores, out_classes = [], [], []
  for c in range(scores.shape[1]):
    order = np.argsort(-scores[:, c], kind='stable')[:min(len(scores), pre_nms)]
    b, s = boxes[order], scores[order, c]
    sel, num = ref_nms(b, s, max_total, iou_thr, score_thr)
    out_boxes.append(b[sel])
    out_scores.append(np.where(np.arange(max_total) < num, s[sel], -1.0))
    out_classes.append(np.full(max_total, c))
  boxes, scores, classes = (np.concatenate(x) for x in (out_boxes, out_scores, out_classes))
  top = np.argsort(-scores, kind='stable')[:max_total]
  return boxes[top], scores[top], classes[top] + 1


def random_boxes(rng, n, size=100.0, degenerate=0.1):
  yx = rng.uniform(0, size, (n, 2))
  hw = rng.uniform(1, size / 3, (n, 2))
  boxes = np.concatenate([yx, yx + hw], axis=1)
  flat = rng.uniform(size=n) < degenerate
  boxes[flat, 2] = boxes[flat, 0]                 # zero-area boxes never suppress or get suppressed
  return boxes.astype(np.float32)


@pytest.mark.parametrize('seed', range(6))
def test_greedy_nms_equals_reference(seed):
  rng = np.random.default_rng(seed)
  boxes = random_boxes(rng, 300)
  # Quantized scores make ties common; ties must go to the lower index.
  scores = (np.round(rng.uniform(size=300) * 20) / 20).astype(np.float32)
  sel, num = nms.greedy_nms(jnp.asarray(boxes), jnp.asarray(scores), 40, 0.5, 0.05)
  ref_sel, ref_num = ref_nms(boxes, scores, 40, 0.5, 0.05)
  assert int(num) == ref_num
  np.testing.assert_array_equal(np.asarray(sel), ref_sel)


def test_greedy_nms_batched_and_suppression_is_strict():
  boxes = jnp.array([[[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 5, 10, 15]]])
  scores = jnp.array([[0.9, 0.8, 0.7]])
  # IoU(0, 2) = 1/3: suppressed at threshold 0.3, kept at exactly 1/3 (suppression needs IoU > thr).
  sel, num = nms.greedy_nms(boxes, scores, 3, 0.3, 0.05)
  np.testing.assert_array_equal(sel, [[0, 0, 0]])
  np.testing.assert_array_equal(num, [1])
  sel, num = nms.greedy_nms(boxes, scores, 3, 1 / 3, 0.05)
  np.testing.assert_array_equal(sel, [[0, 2, 0]])
  np.testing.assert_array_equal(num, [2])
  sel, num = nms.greedy_nms(boxes, jnp.array([[0.05, 0.04, 0.06]]), 3, 0.5, 0.05)
  np.testing.assert_array_equal(sel, [[2, 0, 0]])
  np.testing.assert_array_equal(num, [1])


def _regime_scores(rng, n, c, regime):
  """Scores [2, N, C] with ties (multiples of 0.02, none exactly at the 0.05 threshold).

  sparse: a few confident boxes. middle: each class has 45 candidates above threshold on its own
  random anchors, so every class fits in k = 60 but their union does not. crowded: most anchors of
  every class are above threshold.
  """
  if regime == 'middle':
    scores = rng.uniform(0, 0.02, (2, n, c)).astype(np.float32)
    for i in range(2):
      for j in range(c):
        scores[i, rng.choice(n, 45, replace=False), j] = rng.uniform(0.06, 1.0, 45)
  else:
    scores = rng.uniform(0, 0.5 if regime == 'crowded' else 0.02, (2, n, c)).astype(np.float32)
    scores[0, rng.integers(0, n, 15), rng.integers(0, c, 15)] = 0.9   # a few confident boxes
  return np.round(scores * 50) / 50


def _check_generator(boxes, scores, pre_nms, max_total):
  config = postprocess.DetectionConfig(max_total_size=max_total, pre_nms_num_boxes=pre_nms)
  run = jax.jit(lambda b, s: postprocess._per_class_detections(b, s, config))
  det_boxes, det_scores, det_classes = run(jnp.asarray(np.stack([boxes] * len(scores))),
                                           jnp.asarray(scores))
  for i in range(len(scores)):
    rb, rs, rc = ref_detections(boxes, scores[i], max_total, 0.5, 0.05, pre_nms)
    np.testing.assert_array_equal(np.asarray(det_scores[i]), rs)
    np.testing.assert_array_equal(np.asarray(det_classes[i]) + 1, rc)
    np.testing.assert_array_equal(np.asarray(det_boxes[i]), rb)
  return np.sum(np.asarray(det_scores) > -1, axis=-1)


def _check_regime(seed, regime, pre_nms, max_total=10, n=200, c=4):
  rng = np.random.default_rng(seed)
  boxes = random_boxes(rng, n)
  scores = _regime_scores(rng, n, c, regime)
  per_class = (scores > 0.05).sum(axis=1)                  # [2, C]
  union = (scores.max(axis=-1) > 0.05).sum(axis=1)         # [2]
  if regime == 'sparse':
    assert union.max() <= pre_nms
  elif regime == 'middle':
    assert per_class.max() <= pre_nms < union.min()
  else:
    assert per_class.max() > pre_nms
  _check_generator(boxes, scores, pre_nms, max_total)
  # The branch taken: the shortcut exactly when the union fits in pre_nms.
  assert bool(postprocess._shared_candidates_exact(jnp.asarray(scores), pre_nms, 0.05)) == (
      regime == 'sparse')


@pytest.mark.parametrize('seed', range(3))
def test_detections_equal_reference_sparse(seed):
  # At most pre_nms anchors above 0.05 over all classes: the shared-candidate shortcut.
  _check_regime(seed, 'sparse', pre_nms=50)


@pytest.mark.parametrize('seed', range(3))
def test_detections_equal_reference_middle(seed):
  # Every class within pre_nms but their union beyond it: the literal per-class top-k. A shared set
  # of the 60 best anchors would drop candidates; max_total = 100 lets them reach the output.
  _check_regime(seed, 'middle', pre_nms=60, max_total=100)


@pytest.mark.parametrize('seed', range(3))
def test_detections_equal_reference_crowded_fallback(seed):
  # More than pre_nms candidates above 0.05 in a class: the literal per-class top-k path.
  _check_regime(seed, 'crowded', pre_nms=30)


@pytest.mark.parametrize('per_class, expected', [(15, 60), (50, 100)])
def test_detections_count_disjoint_candidates(per_class, expected):
  # 4 classes x per_class candidates on disjoint boxes (no suppression), k = 60, 100 slots.
  # 4 x 15 = 60 fills the shared set exactly (the shortcut, at its boundary): 60 detections.
  # 4 x 50 = 200: each class keeps its 50 (<= k) in its own top-60, NMS keeps all 200, the global
  # top 100 keeps 100. A shared set of the 60 best anchors would give only 60.
  n, c = 4 * per_class + 20, 4
  y = np.arange(n, dtype=np.float32)[:, None] * 2
  boxes = np.concatenate([y, np.zeros_like(y), y + 1, np.ones_like(y)], axis=1)
  scores = np.full((1, n, c), 0.01, np.float32)
  for j in range(c):
    ids = np.arange(j * per_class, (j + 1) * per_class)
    scores[0, ids, j] = np.linspace(0.9, 0.1, per_class) - 0.001 * j
  num = _check_generator(boxes, scores, pre_nms=60, max_total=100)
  assert int(num[0]) == expected
  assert bool(postprocess._shared_candidates_exact(jnp.asarray(scores), 60, 0.05)) == (
      per_class == 15)


def test_generate_detections_end_to_end():
  anchors = {3: jnp.array([[[0.0, 0, 9, 9, 0, 0, 19, 19]]]),    # one cell, two anchors
             4: jnp.array([[[20.0, 20, 39, 39, 0, 0, 1, 1]]])}
  num_classes = 3
  logit = lambda p: np.log(p / (1 - p))  # noqa: E731
  cls = {3: np.full((1, 1, 1, 2 * num_classes), -10.0), 4: np.full((1, 1, 1, 2 * num_classes), -10.0)}
  cls[3][0, 0, 0, 0 * num_classes + 2] = logit(0.9)     # anchor 0, class column 2
  cls[3][0, 0, 0, 1 * num_classes + 0] = logit(0.99)    # anchor 1, background: dropped
  cls[4][0, 0, 0, 0 * num_classes + 1] = logit(0.6)     # level 4 anchor 0, class column 1
  box = {3: np.zeros((1, 1, 1, 8)), 4: np.zeros((1, 1, 1, 8))}
  box[4][0, 0, 0, :4] = [0, 0, 5, 0]                    # dh = 5: clipped to log(1000/16)
  out = postprocess.generate_detections(
      {k: jnp.asarray(v) for k, v in cls.items()}, {k: jnp.asarray(v) for k, v in box.items()},
      anchors, jnp.array([[64.0, 48.0]]), num_classes,
      postprocess.DetectionConfig(max_total_size=4))
  assert int(out['num_detections'][0]) == 2
  np.testing.assert_allclose(out['detection_scores'][0], [0.9, 0.6, -1, -1], rtol=1e-5)
  np.testing.assert_array_equal(out['detection_classes'][0, :2], [2, 1])
  np.testing.assert_allclose(out['detection_boxes'][0, 0], [0, 0, 9, 9], atol=1e-5)
  # Level 4 box: height 62.5 * 20 around centre 30, clipped to the 64x48 canvas.
  np.testing.assert_allclose(out['detection_boxes'][0, 1], [0, 20, 63, 39], atol=1e-4)


def test_class_agnostic_mode():
  rng = np.random.default_rng(0)
  boxes = random_boxes(rng, 100, degenerate=0)
  scores = rng.uniform(0, 1, (1, 100, 3)).astype(np.float32)
  config = postprocess.DetectionConfig(max_total_size=20, nms_mode='class_agnostic')
  b, s, c = postprocess._class_agnostic_detections(jnp.asarray(boxes[None]), jnp.asarray(scores),
                                                    config)
  ref_sel, ref_num = ref_nms(boxes, scores[0].max(1), 20, 0.5, 0.05)
  np.testing.assert_array_equal(np.asarray(s[0][:ref_num]), scores[0].max(1)[ref_sel[:ref_num]])
  np.testing.assert_array_equal(np.asarray(c[0][:ref_num]), scores[0].argmax(1)[ref_sel[:ref_num]])
  with pytest.raises(ValueError, match='nms_mode must be one of'):
    postprocess.DetectionConfig(nms_mode='soft')


def test_decode_then_clip_uses_output_canvas():
  anchors = jnp.array([[600.0, 600.0, 700.0, 700.0]])
  boxes = box_ops.clip_boxes(box_ops.decode(jnp.zeros((1, 1, 4)), anchors[None]),
                             jnp.array([[640.0, 640.0]]))
  np.testing.assert_array_equal(boxes, [[[600, 600, 639, 639]]])


def ref_detections_class_boxes(boxes, scores, max_total, iou_thr, score_thr, pre_nms):
  """`_generate_detections_per_image` with class-specific boxes [N, C, 4] (Mask R-CNN)."""
  out = [ref_detections(boxes[:, c], scores[:, c:c + 1], max_total, iou_thr, score_thr, pre_nms)
         for c in range(scores.shape[1])]
  all_boxes = np.concatenate([o[0] for o in out])
  all_scores = np.concatenate([o[1] for o in out])
  classes = np.concatenate([np.full(max_total, c + 1) for c in range(scores.shape[1])])
  top = np.argsort(-all_scores, kind='stable')[:max_total]
  return all_boxes[top], all_scores[top], classes[top]


@pytest.mark.parametrize('regime, pre_nms', [('sparse', 60), ('middle', 60), ('crowded', 30)])
def test_class_specific_boxes_equal_reference(regime, pre_nms):
  rng = np.random.default_rng(7)
  n, c, max_total = 200, 4, 10
  boxes = np.stack([random_boxes(rng, n) for _ in range(c)], axis=1)       # [N, C, 4]
  scores = _regime_scores(rng, n, c, regime)
  config = postprocess.DetectionConfig(max_total_size=max_total, pre_nms_num_boxes=pre_nms)
  run = jax.jit(lambda b, s: postprocess._per_class_detections(b, s, config))
  det_boxes, det_scores, det_classes = run(jnp.asarray(np.stack([boxes] * 2)), jnp.asarray(scores))
  for i in range(2):
    rb, rs, rc = ref_detections_class_boxes(boxes, scores[i], max_total, 0.5, 0.05, pre_nms)
    np.testing.assert_array_equal(np.asarray(det_scores[i]), rs)
    np.testing.assert_array_equal(np.asarray(det_classes[i]) + 1, rc)
    np.testing.assert_array_equal(np.asarray(det_boxes[i]), rb)


def ref_decode(codes, anchors, weights):
  """Official box_utils.decode_boxes (+1 convention, weights, one-sided clip of dh / dw)."""
  dy, dx, dh, dw = (codes[..., i] / weights[i] for i in range(4))
  clip = np.log(1000.0 / 16.0)
  dh, dw = np.minimum(dh, clip), np.minimum(dw, clip)
  ha = anchors[..., 2] - anchors[..., 0] + 1.0
  wa = anchors[..., 3] - anchors[..., 1] + 1.0
  yc, xc = dy * ha + anchors[..., 0] + 0.5 * ha, dx * wa + anchors[..., 1] + 0.5 * wa
  h, w = np.exp(dh) * ha, np.exp(dw) * wa
  y0, x0 = yc - 0.5 * h, xc - 0.5 * w
  return np.stack([y0, x0, y0 + h - 1.0, x0 + w - 1.0], -1)


def test_roi_detections_equal_the_official_generic_generator():
  """GenericDetectionGenerator: softmax, background dropped, class-specific boxes decoded against
  the RoIs with weights (10, 10, 5, 5), clipped to the canvas, v1 per-class NMS."""
  rng = np.random.default_rng(8)
  b, n, c, size = 2, 150, 5, 128.0
  rois = np.stack([random_boxes(rng, n, size, degenerate=0.0) for _ in range(b)])
  logits = rng.normal(0, 2.0, (b, n, c)).astype(np.float32)
  deltas = rng.normal(0, 1.0, (b, n, 4 * c)).astype(np.float32)
  config = postprocess.DetectionConfig(max_total_size=20, pre_nms_num_boxes=100)
  out = jax.jit(lambda *a: postprocess.generate_roi_detections(*a, config=config))(
      logits, deltas, rois, np.full((b, 2), size, np.float32))
  for i in range(b):
    probs = np.exp(logits[i] - logits[i].max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True))[:, 1:]
    boxes = ref_decode(deltas[i].reshape(n, c, 4)[:, 1:], rois[i][:, None], (10, 10, 5, 5))
    boxes = np.clip(boxes, 0.0, size - 1.0)
    rb, rs, rc = ref_detections_class_boxes(boxes.astype(np.float32), probs.astype(np.float32),
                                            20, 0.5, 0.05, 100)
    np.testing.assert_allclose(np.asarray(out['detection_scores'][i]), rs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out['detection_classes'][i]), rc)
    np.testing.assert_allclose(np.asarray(out['detection_boxes'][i]), rb, rtol=1e-5, atol=1e-3)
