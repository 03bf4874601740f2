"""The RetinaNet train/eval parsers: hand-computed outputs and box/image consistency."""

import numpy as np
import tensorflow as tf

from spinenet_jax.data import parser
from spinenet_jax.data import preprocess as pp


def make_example(height=100, width=200):
  """A dark image with two bright objects, one crowd box, COCO category ids."""
  image = np.full((height, width, 3), 10, np.uint8)
  pixel_boxes = np.array([[10, 20, 50, 120], [60, 150, 90, 190], [0, 0, 20, 20]], np.float32)
  for y0, x0, y1, x1 in pixel_boxes[:2].astype(int):
    image[y0:y1, x0:x1] = 250
  norm = pixel_boxes / np.array([height, width, height, width], np.float32)
  return {'image': tf.constant(image), 'image/id': tf.constant(42, tf.int64),
          'objects': {'bbox': tf.constant(norm), 'label': tf.constant([1, 90, 5]),
                      'is_crowd': tf.constant([False, False, True])}}, pixel_boxes


def test_train_parser_without_augmentation():
  example, pixel_boxes = make_example()
  config = parser.ParserConfig(output_size=(64, 64), max_level=5, aug_scale_min=1.0,
                               aug_scale_max=1.0, aug_rand_hflip=False, max_num_instances=5)
  out = parser.parse_train(example, tf.constant([0, 0]), config)
  assert out['images'].shape == (64, 64, 3)
  np.testing.assert_allclose(out['image_info'], [[100, 200], [64, 64], [0.32, 0.32], [0, 0]],
                             rtol=1e-6)
  # Crowd dropped; boxes scaled by 0.32; padding with -1.
  np.testing.assert_allclose(out['gt_boxes'][:2], pixel_boxes[:2] * 0.32, rtol=1e-5)
  np.testing.assert_array_equal(out['gt_boxes'][2:], -1)
  np.testing.assert_array_equal(out['gt_classes'], [1, 90, -1, -1, -1])
  assert int(out['source_id']) == 42


def test_eval_parser_keeps_crowd():
  example, pixel_boxes = make_example()
  config = parser.ParserConfig(output_size=(64, 64), max_level=5, max_num_instances=4)
  out = parser.parse_eval(example, config)
  np.testing.assert_array_equal(out['gt_classes'], [1, 90, 5, -1])
  np.testing.assert_array_equal(out['gt_is_crowd'], [0, 0, 1, -1])
  np.testing.assert_allclose(out['gt_boxes'][:3], pixel_boxes * 0.32, rtol=1e-5)
  # Evaluation ground truth in original pixels: unclipped boxes, box areas without objects/area.
  np.testing.assert_allclose(out['gt_original_boxes'][:3], pixel_boxes, rtol=1e-5)
  np.testing.assert_array_equal(out['gt_original_boxes'][3], -1)
  box_areas = (pixel_boxes[:, 2] - pixel_boxes[:, 0]) * (pixel_boxes[:, 3] - pixel_boxes[:, 1])
  assert out['gt_areas'].dtype == tf.float32
  np.testing.assert_allclose(out['gt_areas'], [*box_areas, -1], rtol=1e-5)


def test_eval_parser_carries_the_dataset_areas_aligned_with_the_boxes():
  example, pixel_boxes = make_example()
  example['objects']['area'] = tf.constant([1000, 77, 5], tf.int64)   # TFDS coco: int64
  example['objects']['bbox'] = tf.concat([example['objects']['bbox'][:1],
                                          tf.zeros([1, 4]),          # empty: dropped
                                          example['objects']['bbox'][2:]], 0)
  config = parser.ParserConfig(output_size=(64, 64), max_level=5, max_num_instances=3)
  out = parser.parse_eval(example, config)
  np.testing.assert_array_equal(out['gt_classes'], [1, 5, -1])
  np.testing.assert_array_equal(out['gt_areas'], [1000, 5, -1])
  np.testing.assert_allclose(out['gt_original_boxes'][:2], pixel_boxes[[0, 2]], rtol=1e-5)
  assert 'gt_areas' not in parser.parse_train(example, tf.constant([0, 0]), config)


def test_boxes_follow_the_pixels_under_flip_and_jitter():
  example, _ = make_example()
  config = parser.ParserConfig(output_size=(128, 128), max_level=7, max_num_instances=5)
  bright = (250 / 255 - np.array(pp.MEAN_RGB)) / np.array(pp.STDDEV_RGB)
  flipped = 0
  for i in range(12):
    out = parser.parse_train(example, tf.constant([i, 3]), config)
    image = out['images'].numpy()
    valid = out['gt_classes'].numpy() > 0
    for box in out['gt_boxes'].numpy()[valid]:
      y0, x0, y1, x1 = box
      if (y1 - y0) < 4 or (x1 - x0) < 4:
        continue
      inner = image[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
      np.testing.assert_allclose(inner.mean(axis=(0, 1)), bright, atol=0.05)
    labels = out['gt_classes'].numpy()[valid]
    boxes = out['gt_boxes'].numpy()[valid]
    if 1 in labels and 90 in labels:
      # Object 1 starts left of object 90 in the original; a flip swaps that.
      flipped += boxes[list(labels).index(1), 1] > boxes[list(labels).index(90), 1]
  assert 0 < flipped < 12


def test_train_parser_is_deterministic_per_seed():
  example, _ = make_example()
  a = parser.parse_train(example, tf.constant([5, 1]))
  b = parser.parse_train(example, tf.constant([5, 1]))
  c = parser.parse_train(example, tf.constant([6, 1]))
  np.testing.assert_array_equal(a['images'], b['images'])
  assert not np.array_equal(a['image_info'], c['image_info'])
  assert a['images'].shape == (640, 640, 3)


def thin_example(height, width):
  """A thin strip (one side 2 pixels) with one bright object on its first half, and its mask."""
  image = np.full((height, width, 3), 10, np.uint8)
  mask = np.zeros((1, height, width), np.uint8)
  box = np.array([0, 0, height, width // 2] if height == 2 else [0, 0, height // 2, width],
                 np.float32)
  mask[0, :int(box[2]), :int(box[3])] = 1
  image[mask[0] == 1] = 250
  return {'image': tf.constant(image), 'image/id': tf.constant(7, tf.int64),
          'objects': {'bbox': tf.constant(box[None] / [height, width, height, width],
                                          tf.float32),
                      'label': tf.constant([3]), 'is_crowd': tf.constant([False]),
                      'mask': tf.constant(mask)}}


def _assert_valid(out, config):
  assert out['images'].shape == (*config.padded_size, 3)
  for key in ('images', 'image_info', 'gt_boxes', 'gt_masks'):
    assert np.isfinite(out[key].numpy()).all(), key
  assert (np.round(out['image_info'][0] * out['image_info'][2]) >= 1).all()
  valid = out['gt_classes'].numpy() > 0
  boxes = out['gt_boxes'].numpy()[valid]
  assert (boxes >= 0).all() and (boxes <= 127).all()
  assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
  return boxes


def test_parsers_take_a_strip_whose_short_side_rounds_to_zero():
  for height, width in [(2, 1200), (1200, 2)]:
    example = thin_example(height, width)
    config = parser.ParserConfig(output_size=(128, 128), max_level=7, max_num_instances=4,
                                 include_masks=True, mask_crop_size=8)
    out = parser.parse_eval(example, config)
    boxes = _assert_valid(out, config)
    # The 2-pixel side is 1 pixel (image_scale 1/2); the object is half the long side.
    expected = [0, 0, 1, 64] if height == 2 else [0, 0, 64, 1]
    np.testing.assert_allclose(boxes, [expected], rtol=1e-5)
    mask = out['gt_masks'][0].numpy()                     # the box holds the object only
    assert mask.min() >= 0.5 and mask.mean() > 0.9        # (bilinear sampling halves one edge)
    kept = 0
    for i in range(8):                                    # jitter 0.5-2.0 and flips
      out = parser.parse_train(example, tf.constant([i, 2]), config)
      kept += len(_assert_valid(out, config))
    assert kept > 0
