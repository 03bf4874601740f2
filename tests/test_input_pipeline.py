"""Batched pipelines: static shapes, determinism, per-process shards, full eval, mesh prefetch."""

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh

from spinenet_jax.data import input_pipeline, parser

CONFIG = parser.ParserConfig(output_size=(128, 128), max_level=7, max_num_instances=8)


def source(n=10):
  """n small examples with 0..3 objects; image/id = index."""
  def gen():
    rng = np.random.default_rng(0)
    for i in range(n):
      k = i % 4
      yx = rng.uniform(0, 0.6, (k, 2))
      boxes = np.concatenate([yx, yx + 0.3], 1).astype(np.float32)
      yield {'image': rng.integers(0, 255, (60 + i, 80, 3), dtype=np.uint8),
             'image/id': np.int64(i),
             'objects': {'bbox': boxes, 'label': np.arange(1, k + 1, dtype=np.int64),
                         'is_crowd': np.zeros(k, bool)}}
  signature = {'image': tf.TensorSpec([None, None, 3], tf.uint8),
               'image/id': tf.TensorSpec([], tf.int64),
               'objects': {'bbox': tf.TensorSpec([None, 4], tf.float32),
                           'label': tf.TensorSpec([None], tf.int64),
                           'is_crowd': tf.TensorSpec([None], tf.bool)}}
  return tf.data.Dataset.from_generator(gen, output_signature=signature)


def take(ds, n):
  return [jax.tree_util.tree_map(np.asarray, b) for b in ds.take(n).as_numpy_iterator()]


def test_train_batches_are_static_and_deterministic():
  a = take(input_pipeline.train_dataset(source(), 4, CONFIG, seed=3), 4)
  b = take(input_pipeline.train_dataset(source(), 4, CONFIG, seed=3), 4)
  c = take(input_pipeline.train_dataset(source(), 4, CONFIG, seed=4), 4)
  assert a[0]['images'].shape == (4, 128, 128, 3) and a[0]['gt_boxes'].shape == (4, 8, 4)
  assert a[0]['image_info'].shape == (4, 4, 2) and a[0]['gt_classes'].dtype == np.int32
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['images'], y['images'])
  assert not all(np.array_equal(x['images'], z['images']) for x, z in zip(a, c))
  # Repeats past the end of the 10 examples (16 drawn), every example seen.
  ids = np.concatenate([x['source_id'] for x in a])
  assert set(ids.tolist()) == set(range(10))


def test_process_shards_are_disjoint_and_complete():
  seen = []
  for index in range(2):
    ds = input_pipeline.eval_dataset(source(), 1, CONFIG, process_index=index, process_count=2)
    seen.append({int(b['source_id'][0]) for b in ds.as_numpy_iterator()})
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10))


def test_eval_covers_every_example_once_with_marked_dummies():
  batches = list(input_pipeline.eval_dataset(source(10), 4, CONFIG).as_numpy_iterator())
  ids = np.concatenate([b['source_id'] for b in batches])
  assert len(batches) == 3 and all(b['images'].shape[0] == 4 for b in batches)
  real = ids[ids != input_pipeline.DUMMY_SOURCE_ID]
  assert sorted(real.tolist()) == list(range(10))
  assert (ids == input_pipeline.DUMMY_SOURCE_ID).sum() == 2
  # The evaluation ground truth for COCO metrics without a json (areas: box areas here).
  b = batches[0]
  assert b['gt_areas'].shape == (4, 8) and b['gt_areas'].dtype == np.float32
  assert b['gt_original_boxes'].shape == (4, 8, 4) and b['gt_is_crowd'].shape == (4, 8)
  boxes, valid = b['gt_original_boxes'], b['gt_classes'] > 0
  np.testing.assert_allclose(b['gt_areas'][valid], ((boxes[..., 2] - boxes[..., 0]) *
                                                    (boxes[..., 3] - boxes[..., 1]))[valid])
  np.testing.assert_array_equal(b['gt_areas'][~valid], -1)
  exact = list(input_pipeline.eval_dataset(source(8), 4, CONFIG).as_numpy_iterator())
  assert len(exact) == 2 and (np.concatenate([b['source_id'] for b in exact]) >= 0).all()


def test_prefetch_to_mesh_shards_the_batch():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  batches = take(input_pipeline.train_dataset(source(), 8, CONFIG), 3)
  out = list(input_pipeline.prefetch_to_mesh(batches, mesh, size=2))
  assert len(out) == 3
  images = out[1]['images']
  assert images.shape == (8, 128, 128, 3) and len(images.sharding.device_set) == 8
  assert images.addressable_shards[0].data.shape == (1, 128, 128, 3)
  np.testing.assert_array_equal(np.asarray(images), batches[1]['images'])


def test_check_batch_size_names_the_values_and_the_config_key():
  assert input_pipeline.check_batch_size(64, 8, 2) == 32
  assert input_pipeline.check_batch_size(8, 8) == 8
  for batch in (12, 0, -8):
    with pytest.raises(ValueError, match=rf'config.train.global_batch_size={batch} .*8 devices '
                                         r'\(2 processes\)'):
      input_pipeline.check_batch_size(batch, 8, 2)
  with pytest.raises(ValueError, match='config.eval.batch_size=6 must be a positive multiple of 4'):
    input_pipeline.check_batch_size(6, 4, name='config.eval.batch_size')
  with pytest.raises(ValueError, match='3 processes'):
    input_pipeline.check_batch_size(24, 8, 3)
