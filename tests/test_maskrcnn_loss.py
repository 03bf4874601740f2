"""Mask R-CNN losses against a numpy transcription of the official loss classes (one replica),
hand-computed cases, and replica groups."""

import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax import losses


def sigmoid_ce(labels, logits):
  return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def huber(t, o, delta):
  e = np.abs(o - t)
  q = np.minimum(e, delta)
  return 0.5 * q**2 + delta * (e - q)


def official(outputs, targets):
  """The official classes for one replica holding the whole batch (SUM_BY_NONZERO_WEIGHTS)."""
  b = outputs['class_outputs'].shape[0]
  score = sum(np.sum(np.where((t == 1) | (t == 0), sigmoid_ce(np.maximum(t, 0), o), 0)) /
              (b * 256.0) for o, t in ((outputs['rpn_scores'][l], targets['rpn_score_targets'][l])
                                      for l in outputs['rpn_scores']))
  box = 0.0
  for l in outputs['rpn_boxes']:
    t, o = targets['rpn_box_targets'][l], outputs['rpn_boxes'][l]
    w = (t != 0).astype(float)
    box += np.sum(huber(t, o, 1 / 9) * w) / w.sum() if w.sum() else 0.0
  logits = outputs['class_outputs']
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  cls = targets['class_targets']
  frcnn_class = -np.take_along_axis(logp, cls[..., None], -1).sum() / cls.size
  n = cls.shape[1]
  deltas = outputs['box_outputs'].reshape(b, n, -1, 4)
  sel = np.take_along_axis(deltas, cls[:, :, None, None], 2)[:, :, 0]
  w = np.repeat((cls > 0)[..., None], 4, -1).astype(float)
  frcnn_box = np.sum(huber(targets['box_targets'], sel, 1.0) * w) / max(w.sum(), 1)
  mw = np.broadcast_to((targets['mask_classes'] > 0)[..., None, None],
                       outputs['mask_outputs'].shape).astype(float)
  mask = np.sum(sigmoid_ce(targets['mask_targets'], outputs['mask_outputs']) * mw) / mw.sum()
  return {'rpn_score_loss': score, 'rpn_box_loss': box, 'fast_rcnn_class_loss': frcnn_class,
          'fast_rcnn_box_loss': frcnn_box, 'mask_loss': mask}


def random_case(rng, b=4, n=16, m=6, c=5):
  outputs, targets = {'rpn_scores': {}, 'rpn_boxes': {}}, {'rpn_score_targets': {},
                                                           'rpn_box_targets': {}}
  for level, s in ((3, 8), (4, 4)):
    outputs['rpn_scores'][level] = rng.normal(size=(b, s, s, 3))
    outputs['rpn_boxes'][level] = rng.normal(size=(b, s, s, 12))
    targets['rpn_score_targets'][level] = rng.integers(-1, 2, (b, s, s, 3))
    bt = rng.normal(size=(b, s, s, 12))
    bt[rng.uniform(size=bt.shape) < 0.7] = 0.0
    targets['rpn_box_targets'][level] = bt
  targets['rpn_box_targets'][4][:] = 0.0            # a level without box targets: 0, not NaN
  outputs['class_outputs'] = rng.normal(size=(b, n, c))
  outputs['box_outputs'] = rng.normal(size=(b, n, 4 * c))
  targets['class_targets'] = rng.integers(0, c, (b, n)) * (rng.uniform(size=(b, n)) < 0.4)
  targets['box_targets'] = rng.normal(size=(b, n, 4))
  outputs['mask_outputs'] = rng.normal(size=(b, m, 28, 28))
  targets['mask_targets'] = rng.uniform(size=(b, m, 28, 28))
  targets['mask_classes'] = rng.integers(0, c, (b, m))
  return outputs, targets


def to_jax(tree):
  if isinstance(tree, dict):
    return {k: to_jax(v) for k, v in tree.items()}
  return jnp.asarray(tree, jnp.float32 if tree.dtype.kind == 'f' else jnp.int32)


def test_matches_the_official_losses():
  outputs, targets = random_case(np.random.default_rng(0))
  ours = losses.maskrcnn_loss(to_jax(outputs), to_jax(targets))
  ref = official(outputs, targets)
  assert set(ours) == set(ref)
  for k in ref:
    np.testing.assert_allclose(float(ours[k]), ref[k], rtol=1e-5, err_msg=k)


def test_replica_groups_average_per_group_losses():
  rng = np.random.default_rng(1)
  outputs, targets = random_case(rng)
  config = losses.MaskRCNNLossConfig(normalizer_group_size=2)
  ours = losses.maskrcnn_loss(to_jax(outputs), to_jax(targets), config)
  halves = [official(*[jax_slice(t, sl) for t in (outputs, targets)])
            for sl in (slice(0, 2), slice(2, 4))]
  for k in ours:
    np.testing.assert_allclose(float(ours[k]), np.mean([h[k] for h in halves]), rtol=1e-5,
                               err_msg=k)


def jax_slice(tree, sl):
  if isinstance(tree, dict):
    return {k: jax_slice(v, sl) for k, v in tree.items()}
  return tree[sl]


def test_hand_computed_fast_rcnn_box_and_class_terms():
  """One image, two RoIs: RoI 0 background, RoI 1 of class 2 with deltas off by 0.5 and 2."""
  outputs = {'rpn_scores': {3: jnp.zeros((1, 1, 1, 3))}, 'rpn_boxes': {3: jnp.zeros((1, 1, 1, 12))},
             'class_outputs': jnp.zeros((1, 2, 3)),
             'box_outputs': jnp.zeros((1, 2, 12)).at[0, 1, 8:12].set(jnp.array([0.5, 2, 0, 0])),
             'mask_outputs': jnp.zeros((1, 1, 28, 28))}
  targets = {'rpn_score_targets': {3: jnp.array([[[[1, 0, -1]]]])},
             'rpn_box_targets': {3: jnp.zeros((1, 1, 1, 12))},
             'class_targets': jnp.array([[0, 2]]), 'box_targets': jnp.zeros((1, 2, 4)),
             'mask_targets': jnp.full((1, 1, 28, 28), 0.5), 'mask_classes': jnp.array([[1]])}
  out = losses.maskrcnn_loss(outputs, targets)
  assert float(out['fast_rcnn_box_loss']) == pytest.approx((0.125 + 1.5) / 4)  # huber(0.5), (2)
  assert float(out['fast_rcnn_class_loss']) == pytest.approx(np.log(3.0))
  assert float(out['rpn_score_loss']) == pytest.approx(2 * np.log(2.0) / 256)
  assert float(out['rpn_box_loss']) == 0.0
  assert float(out['mask_loss']) == pytest.approx(np.log(2.0))
