"""The Mask R-CNN detector in the generic train step: all five loss terms finite, losses fall on
fixed synthetic batches, 8 devices give the losses of 1; detection outputs and their shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_maskrcnn_config

from spinenet_jax import sharding
from spinenet_jax.training import settings
from spinenet_jax.training.trainer import Trainer, predict_step, variables_of

TERMS = ('rpn_score_loss', 'rpn_box_loss', 'fast_rcnn_class_loss', 'fast_rcnn_box_loss',
         'mask_loss')


def batch_with_masks(seed=0, batch_size=8, size=128, instances=8):
  """Rectangles with their masks (the parser's 112 x 112 crops: all ones inside the box)."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 0.1, (batch_size, size, size, 3)).astype(np.float32)
  boxes = np.full((batch_size, instances, 4), -1.0, np.float32)
  classes = np.full((batch_size, instances), -1, np.int32)
  masks = np.full((batch_size, instances, 112, 112), -1.0, np.float32)
  for i in range(batch_size):
    for j in range(1 + i % 3):
      y, x = rng.uniform(0, size * 0.5, 2)
      h, w = rng.uniform(24, size * 0.45, 2)
      boxes[i, j] = [y, x, y + h, x + w]
      classes[i, j] = 1 + (i + j) % 3
      images[i, int(y):int(y + h), int(x):int(x + w), classes[i, j] - 1] += 1.0
      masks[i, j] = 1.0
  info = np.tile(np.array([[size, size], [size, size], [1, 1], [0, 0]], np.float32),
                 (batch_size, 1, 1))
  return {'images': images, 'image_info': info, 'gt_boxes': boxes, 'gt_classes': classes,
          'gt_masks': masks, 'source_id': np.arange(batch_size, dtype=np.int64)}


@pytest.fixture(scope='module')
def trainer_and_state():
  config = settings.finalize(tiny_maskrcnn_config.get_config())
  trainer = Trainer(config, sharding.make_mesh(jax.devices()[:1]))
  return trainer, trainer.new_state()


def test_train_step_learns_with_five_finite_terms(trainer_and_state):
  trainer, state = trainer_and_state
  state = jax.tree_util.tree_map(jnp.copy, state)
  batch = batch_with_masks()
  history = []
  for _ in range(6):
    state, metrics = trainer.train_step(state, batch)
    history.append({k: float(metrics[k]) for k in (*TERMS, 'model_loss')})
  assert int(state.nonfinite_step) == -1
  assert all(np.isfinite(v) for h in history for v in h.values())
  assert all(history[0][k] > 0 for k in TERMS), history[0]
  assert history[-1]['model_loss'] < history[0]['model_loss'], history
  assert float(metrics['foreground_rois']) > 0 and float(metrics['positive_anchors']) > 0


def test_eight_devices_give_the_losses_of_one(trainer_and_state):
  one, state = trainer_and_state
  eight = Trainer(one.config, sharding.make_mesh())
  s1 = jax.tree_util.tree_map(jnp.copy, state)
  s8 = jax.device_put(jax.device_get(state), eight.replicated)
  for seed in range(2):
    batch = batch_with_masks(seed)
    s1, m1 = one.train_step(s1, batch)
    s8, m8 = eight.train_step(s8, batch)
    for k in TERMS:
      np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=2e-4, err_msg=k)


def test_detect_outputs(trainer_and_state):
  trainer, state = trainer_and_state
  batch = batch_with_masks(3)
  out = jax.device_get(predict_step(trainer.detector)(variables_of(state), {
      'images': batch['images'], 'image_info': batch['image_info']}))
  assert out['detection_boxes'].shape == (8, 20, 4)
  assert out['detection_masks'].shape == (8, 20, 28, 28)
  assert ((out['detection_masks'] >= 0) & (out['detection_masks'] <= 1)).all()
  valid = out['detection_scores'] > -1
  assert (out['num_detections'] == valid.sum(1)).all()
  assert ((out['detection_classes'][valid] >= 1) & (out['detection_classes'][valid] <= 90)).all()
  assert (out['detection_boxes'] >= 0).all() and (out['detection_boxes'] <= 127).all()
