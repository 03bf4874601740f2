"""A tiny training config and random batches shared by the training tests."""

import jax
import numpy as np
import tiny_config as tiny


def tiny_config(**train):
  """tests/tiny_config.py with `config.train` overrides."""
  config = tiny.get_config()
  for key, value in train.items():
    config.train[key] = value
  return config


def random_batch(batch_size=8, size=128, seed=0):
  """Images plus 0-3 boxes per image (class ids of the synthetic set), padded with -1 to 8."""
  rng = np.random.default_rng(seed)
  boxes = np.full((batch_size, 8, 4), -1.0, np.float32)
  classes = np.full((batch_size, 8), -1, np.int32)
  for i in range(batch_size):
    for j in range(i % 4):
      y, x = rng.uniform(0, size * 0.6, 2)
      h, w = rng.uniform(12, size * 0.4, 2)
      boxes[i, j] = [y, x, y + h, x + w]
      classes[i, j] = rng.choice([1, 2, 3, 5, 7, 8])
  info = np.tile(np.array([[size, size], [size, size], [1, 1], [0, 0]], np.float32),
                 (batch_size, 1, 1))
  return {'images': rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
          'image_info': info, 'gt_boxes': boxes, 'gt_classes': classes,
          'source_id': np.arange(batch_size, dtype=np.int64)}


def assert_trees_close(a, b) -> None:
  """Equal up to float32 reduction order, relative to each leaf's scale.

  Runs that split the batch differently (1 vs 8 devices, 1 vs 2 processes) sum gradients and
  batch statistics in another order; a few steps with clipping and batch norm grow those 1e-7
  differences to ~1e-4 of a leaf's largest value. Conv biases before batch norm have a true
  gradient of 0, so their values are pure rounding noise (~1e-8) and need an absolute floor.
  """
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3 * float(np.abs(y).max()) + 1e-7)
