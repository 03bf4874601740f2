"""Losses against hand-computed values and the official normalization."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax import losses
from spinenet_jax.ops import box_ops


def test_focal_loss_values():
  x = jnp.array([0.0, 0.0, 2.0])
  t = jnp.array([1.0, 0.0, 1.0])
  out = np.asarray(losses.focal_loss(x, t, 0.25, 1.5))
  ce0 = math.log(2)
  p = 1 / (1 + math.exp(-2))
  expected = [0.25 * 0.5**1.5 * ce0, 0.75 * 0.5**1.5 * ce0,
              0.25 * (1 - p) ** 1.5 * math.log(1 + math.exp(-2))]
  np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_focal_loss_is_stable_for_large_logits():
  out = losses.focal_loss(jnp.array([-200.0, 200.0]), jnp.array([0.0, 1.0]), 0.25, 1.5)
  assert np.all(np.isfinite(out)) and float(out.max()) < 1e-30


def test_huber_loss_tf1_values():
  out = losses.huber_loss(jnp.zeros(3), jnp.array([0.05, -0.3, 0.1]), 0.1)
  np.testing.assert_allclose(out, [0.5 * 0.05**2, 0.1 * 0.3 - 0.5 * 0.01, 0.5 * 0.01], rtol=1e-6)


def test_giou_loss():
  a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
  np.testing.assert_allclose(losses.giou_loss(a, a), [0.0], atol=1e-6)
  # Disjoint unit squares 1 apart: IoU 0, hull 3, union 2 -> GIoU = -1/3, loss 4/3.
  b = jnp.array([[0.0, 0.0, 1.0, 1.0]])
  c = jnp.array([[0.0, 2.0, 1.0, 3.0]])
  np.testing.assert_allclose(losses.giou_loss(b, c), [4 / 3], rtol=1e-6)


def _one_level(num_classes=3):
  """B=2 images, one 1x1 level, 2 anchors, 3 classes."""
  cls_out = {3: jnp.zeros((2, 1, 1, 2 * num_classes))}
  box_out = {3: jnp.full((2, 1, 1, 8), 0.2)}
  cls_t = {3: jnp.array([[[[1, -1]]], [[[-2, 2]]]])}
  box_t = {3: jnp.array([[[[0.0, 0.1, 0.0, 0.5, 0, 0, 0, 0]]], [[[0, 0, 0, 0, 1.0, 0, 0, 0]]]])}
  return cls_out, box_out, cls_t, box_t


def test_retinanet_loss_global_and_per_replica_normalizers():
  cls_out, box_out, cls_t, box_t = _one_level()
  num_pos = jnp.array([1.0, 1.0])
  config = losses.LossConfig(num_classes=3)
  ce = math.log(2) * 0.5**1.5
  pos, neg = 0.25 * ce, 0.75 * ce
  # Image 0: anchor 0 class 1 (1 positive column, 2 negative), anchor 1 negative (3 negative).
  # Image 1: anchor 0 ignored (no loss), anchor 1 class 2.
  cls_image = [pos + 5 * neg, pos + 2 * neg]
  huber = lambda e: 0.5 * e**2 if e <= 0.1 else 0.1 * e - 0.005  # noqa: E731
  # Only non-zero targets count: image 0 has 0.1 and 0.5, image 1 has 1.0 (outputs all 0.2).
  box_image = [huber(0.1) + huber(0.3), huber(0.8)]
  out = losses.retinanet_loss(cls_out, box_out, cls_t, box_t, num_pos, config)
  assert float(out['cls_loss']) == pytest.approx(sum(cls_image) / 3, rel=1e-5)
  assert float(out['box_loss']) == pytest.approx(sum(box_image) / 12, rel=1e-5)
  assert float(out['model_loss']) == pytest.approx(float(out['cls_loss'] + 50 * out['box_loss']))
  per_replica = losses.retinanet_loss(cls_out, box_out, cls_t, box_t, num_pos,
                                      losses.LossConfig(num_classes=3, normalizer_group_size=1))
  assert float(per_replica['cls_loss']) == pytest.approx(np.mean([c / 2 for c in cls_image]), rel=1e-5)
  assert float(per_replica['box_loss']) == pytest.approx(np.mean([b / 8 for b in box_image]), rel=1e-5)
  with pytest.raises(ValueError, match='not divisible by normalizer_group_size 3'):
    losses.retinanet_loss(cls_out, box_out, cls_t, box_t, num_pos,
                          losses.LossConfig(num_classes=3, normalizer_group_size=3))


def test_giou_box_loss_counts_positive_anchors_only():
  # Anchors: 0 = [0, 0, 10, 10], 1 = [0, 0, 20, 20]. Classes (_one_level): image 0 [1, -1]
  # (positive, negative), image 1 [-2, 2] (ignored, positive).
  cls_out, _, cls_t, _ = _one_level()
  anchors = {3: jnp.array([[[0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 20.0, 20.0]]])}
  target = box_ops.encode(jnp.array([2.0, 2.0, 8.0, 8.0]), anchors[3].reshape(2, 4)[0])
  # Targets: anchor 0 -> box [2, 2, 8, 8]; anchor 1 -> zero deltas, i.e. the anchor [0, 0, 20, 20].
  box_t = {3: jnp.concatenate([target, jnp.zeros(4)]).reshape(1, 1, 1, 8).repeat(2, 0)}
  # Outputs: anchor 1 predicts deltas of ones in both images (wrong for the negative of image 0
  # and the positive of image 1); anchor 0 is perfect in image 0 (positive) and predicts the
  # anchor itself, [0, 0, 10, 10], in image 1 (ignored).
  box_out = {3: jnp.stack([jnp.concatenate([target, jnp.ones(4)]),
                           jnp.concatenate([jnp.zeros(4), jnp.ones(4)])]).reshape(2, 1, 1, 8)}
  config = losses.LossConfig(num_classes=3, box_loss='giou')
  out = losses.retinanet_loss(cls_out, box_out, cls_t, box_t, jnp.array([1.0, 1.0]), config, anchors)
  # Deltas of ones on [0, 0, 20, 20] (no +1 convention): centre 10 + 20 = 30, side 20e, i.e.
  # [30 - 10e, 30 + 10e] on both axes, against the target [0, 20]: intersection side 10(e - 1),
  # hull side 30 + 10e.
  e = math.e
  inter, union = (10 * (e - 1))**2, (20 * e)**2 + 20**2 - (10 * (e - 1))**2
  hull = (30 + 10 * e)**2
  wrong = 1 - (inter / union - (hull - union) / hull)       # 0.96760
  assert wrong == pytest.approx(0.96760, abs=1e-5)
  # Only image 1's anchor 1 counts; the normalizer is sum(num_positives) + 1 = 3 (no factor 4).
  # Counting image 0's negative too gives 2 * wrong / 3 = 0.645; counting the ignored anchor
  # (IoU 36/100, loss 0.64) gives (wrong + 0.64) / 3 = 0.536.
  assert float(out['box_loss']) == pytest.approx(wrong / 3, rel=1e-5)
  assert float(out['model_loss']) == pytest.approx(float(out['cls_loss'] + out['box_loss']))


def test_l2_on_kernels_only():
  params = {'a': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(3)},
            'bn': {'scale': jnp.ones(4)}, 'b': {'kernel': 2 * jnp.ones(1)}}
  assert float(losses.l2_regularization(params, 4e-5)) == pytest.approx(4e-5 * (4 + 4) / 2)
