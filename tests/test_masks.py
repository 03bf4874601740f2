"""Mask R-CNN ground truth from the parser: crops of known rectangles under flip, jitter, cuts."""

import numpy as np
import pytest
import tensorflow as tf

from spinenet_jax.data import coco_masks, input_pipeline, parser
from spinenet_jax.data import preprocess as pp

H, W, S = 100, 200, 28
# (class, pixel box [y0, x0, y1, x1], mask rectangle [r0, c0, r1, c1), crowd). The masks are not the
# whole boxes, so that a flip or a wrong box shows; the crowd is dropped in training and the third
# object's empty box is dropped everywhere, so the fourth object's mask must move up to row 1.
OBJECTS = [
    (1, (10, 20, 50, 120), (10, 20, 50, 45), False),
    (5, (0, 0, 20, 20), (0, 0, 20, 20), True),
    (7, (30, 60, 30, 80), (30, 60, 31, 80), False),
    (90, (60, 150, 90, 190), (70, 150, 90, 200), False),
]
NO_AUGMENTATION = {'aug_scale_min': 1.0, 'aug_scale_max': 1.0, 'aug_rand_hflip': False}


def make_example(objects=OBJECTS):
  masks = np.zeros((len(objects), H, W, 1), np.uint8)   # as TFDS decodes `objects/mask`
  for k, (_, _, (r0, c0, r1, c1), _) in enumerate(objects):
    masks[k, r0:r1, c0:c1] = 1
  boxes = np.array([o[1] for o in objects], np.float32).reshape(-1, 4) / [H, W, H, W]
  return {'image': tf.constant(np.full((H, W, 3), 30, np.uint8)),
          'image/id': tf.constant(7, tf.int64),
          'objects': {'bbox': tf.constant(boxes, tf.float32),
                      'label': tf.constant([o[0] for o in objects], tf.int64),
                      'is_crowd': tf.constant([o[3] for o in objects], tf.bool),
                      'mask': tf.constant(masks)}}


def config(**kwargs):
  return parser.ParserConfig(**{'output_size': (128, 128), 'max_level': 5, 'max_num_instances': 6,
                                'include_masks': True, 'mask_crop_size': S, **kwargs})


def expected_crop(rect, box):
  """crop_and_resize of the rectangle's indicator in `box` (original pixels), in closed form.

  Samples are at y = y0 / H * (H - 1) + i * (y1 - y0) / H * (H - 1) / (S - 1); bilinear
  interpolation of an indicator of rows [r0, r1) is clip(min(y - r0 + 1, r1 - y), 0, 1).
  """
  r0, c0, r1, c1 = rect
  y0, x0, y1, x1 = np.asarray(box, np.float64)
  ys = y0 / H * (H - 1) + np.arange(S) * (y1 - y0) / H * (H - 1) / (S - 1)
  xs = x0 / W * (W - 1) + np.arange(S) * (x1 - x0) / W * (W - 1) / (S - 1)
  fy = np.clip(np.minimum(ys - r0 + 1, r1 - ys), 0, 1)
  fx = np.clip(np.minimum(xs - c0 + 1, c1 - xs), 0, 1)
  return fy[:, None] * fx[None, :]


def mirrored(rect_or_box):
  y0, x0, y1, x1 = rect_or_box
  return (y0, W - x1, y1, W - x0)


def original_boxes(out):
  """The output boxes mapped back onto the original image (+ offset, / scale), float64."""
  info = out['image_info'].numpy().astype(np.float64)
  boxes = out['gt_boxes'].numpy().astype(np.float64)
  return (boxes + np.tile(info[3], 2)) / np.tile(info[2], 2)


def test_crops_without_augmentation_follow_the_kept_boxes():
  out = parser.parse_train(make_example(), tf.constant([0, 0]), config(**NO_AUGMENTATION))
  np.testing.assert_array_equal(out['gt_classes'], [1, 90, -1, -1, -1, -1])
  masks = out['gt_masks'].numpy()
  assert masks.shape == (6, S, S) and masks.dtype == np.float32
  for row, k in enumerate([0, 3]):                 # the crowd and the empty box are gone
    np.testing.assert_allclose(masks[row], expected_crop(OBJECTS[k][2], OBJECTS[k][1]), atol=1e-4)
  np.testing.assert_array_equal(masks[2:], -1)
  # Soft values: the box edge of object 0 falls between pixel centres (crop_and_resize samples
  # y0 / H * (H - 1) = 9.9, between the empty row 9 and the full row 10).
  assert 0 < masks[0, 0, 0] < 1


def test_masks_follow_flip_and_jitter():
  """Every crop equals the closed form for its final (clipped) box mapped back onto the original
  image, with the mask mirrored exactly when the boxes are."""
  orientations = []
  for i in range(16):
    out = parser.parse_train(make_example(), tf.constant([i, 5]), config())
    valid = out['gt_classes'].numpy() > 0
    masks = out['gt_masks'].numpy()
    np.testing.assert_array_equal(masks[~valid], -1)
    flips = set()
    for row in np.flatnonzero(valid):
      k = [o[0] for o in OBJECTS].index(out['gt_classes'].numpy()[row])
      box = original_boxes(out)[row]
      matches = []
      for flip in (False, True):
        rect, full_box = (mirrored(OBJECTS[k][2]), mirrored(OBJECTS[k][1])) if flip else (
            OBJECTS[k][2], OBJECTS[k][1])
        inside = np.all(box[:2] >= np.array(full_box[:2]) - 1e-3) and np.all(
            box[2:] <= np.array(full_box[2:]) + 1e-3)
        if inside and np.allclose(masks[row], expected_crop(rect, box), atol=1e-4):
          matches.append(flip)
      assert len(matches) >= 1, (i, row)
      flips.add(matches[0] if len(matches) == 1 else None)
    flips.discard(None)
    assert len(flips) <= 1, f'seed {i}: objects disagree on the flip'
    orientations.extend(flips)
  assert 0 < sum(orientations) < len(orientations)  # both orientations were seen


def test_flip_mirrors_the_crop():
  unflipped = parser.parse_train(make_example(), tf.constant([0, 0]), config(**NO_AUGMENTATION))
  flip_config = config(**{**NO_AUGMENTATION, 'aug_rand_hflip': True})
  outs = [parser.parse_train(make_example(), tf.constant([i, 0]), flip_config) for i in range(8)]
  flipped = [o for o in outs if o['gt_boxes'].numpy()[0, 1] > unflipped['gt_boxes'].numpy()[0, 1]]
  assert flipped and len(flipped) < len(outs)
  for out in flipped:
    np.testing.assert_allclose(out['gt_masks'].numpy()[:2],
                               unflipped['gt_masks'].numpy()[:2, :, ::-1], atol=1e-5)


def test_truncation_keeps_masks_with_their_boxes():
  out = parser.parse_train(make_example(), tf.constant([0, 0]),
                           config(max_num_instances=1, **NO_AUGMENTATION))
  assert out['gt_masks'].shape == (1, S, S)
  np.testing.assert_array_equal(out['gt_classes'], [1])
  np.testing.assert_allclose(out['gt_masks'][0], expected_crop(OBJECTS[0][2], OBJECTS[0][1]),
                             atol=1e-4)


def test_eval_keeps_crowd_masks():
  out = parser.parse_eval(make_example(), config())
  np.testing.assert_array_equal(out['gt_classes'], [1, 5, 90, -1, -1, -1])
  np.testing.assert_array_equal(out['gt_is_crowd'], [0, 1, 0, -1, -1, -1])
  for row, k in enumerate([0, 1, 3]):
    np.testing.assert_allclose(out['gt_masks'][row], expected_crop(OBJECTS[k][2], OBJECTS[k][1]),
                               atol=1e-4)
  np.testing.assert_array_equal(out['gt_masks'][3:], -1)


def test_image_without_objects():
  example = make_example([])
  example['objects']['mask'] = tf.zeros([0, 0, 0, 1], tf.uint8)   # what TFDS gives
  for out in (parser.parse_train(example, tf.constant([0, 0]), config()),
              parser.parse_eval(example, config())):
    assert out['gt_masks'].shape == (6, S, S)
    np.testing.assert_array_equal(out['gt_masks'], -1)


def test_masks_only_when_asked():
  example = make_example()
  out = parser.parse_train(example, tf.constant([0, 0]), config(include_masks=False))
  assert 'gt_masks' not in out
  del example['objects']['mask']
  with pytest.raises(KeyError, match='include_masks'):
    parser.parse_train(example, tf.constant([0, 0]), config())


def test_uint8_and_float_masks_crop_identically():
  masks = make_example()['objects']['mask'][..., 0]
  boxes = tf.constant([[4.2, 5.0, 30.7, 70.1]] * 4)
  info = tf.constant([[H, W], [64, 64], [0.64, 0.64], [3, 9]], tf.float32)
  a = pp.crop_masks_to_boxes(masks, boxes, info, S)
  b = pp.crop_masks_to_boxes(tf.cast(masks, tf.float32), boxes, info, S)
  np.testing.assert_array_equal(a, b)


def test_train_batches_carry_masks():
  ds = tf.data.Dataset.from_tensors(make_example()).repeat(3)
  batch = next(iter(input_pipeline.train_dataset(ds, 2, config(), seed=1)))
  assert batch['gt_masks'].shape == (2, 6, S, S) and batch['gt_boxes'].shape == (2, 6, 4)
  valid = batch['gt_classes'].numpy() > 0
  assert (batch['gt_masks'].numpy()[valid] >= 0).all()
  assert (batch['gt_masks'].numpy()[~valid] == -1).all()


@pytest.mark.parametrize('segmentation, message', [
    ('junk', 'not polygons or RLE'),
    ([], 'no polygon of 3 or more points'),
    ([[1, 2, 3, 4]], 'no polygon of 3 or more points'),
    ([[1, 2, 3, 4, 5, 6, 7]], 'malformed polygon'),
    ([[1, float('nan'), 3, 4, 5, 6]], 'malformed polygon'),
    ([['1', 2, 3, 4, 5, 6]], 'malformed polygon'),
    ([[1, 1, 1e30, 1, 5, 5]], 'far outside the image'),
    ({'counts': [0, 120], 'size': [10, 11]}, 'is not the image size'),
    ({'counts': [0, 10], 'size': [10, 12]}, 'do not cover'),
    ({'counts': b'', 'size': [10, 12]}, 'neither run lengths nor a string'),   # would be garbage
    ({'counts': 'garbage!!', 'size': [10, 12]}, 'undecodable RLE'),
    ({'size': [10, 12]}, 'neither run lengths nor a string'),
])
def test_malformed_segmentations_raise(segmentation, message):
  with pytest.raises((ValueError, TypeError), match=message):
    coco_masks.segmentation_mask(segmentation, 10, 12)


def test_degenerate_polygons_are_skipped():
  square = [2, 2, 8, 2, 8, 6, 2, 6]
  expected = coco_masks.segmentation_mask([square], 10, 12)
  np.testing.assert_array_equal(coco_masks.segmentation_mask([square, [3, 3, 4, 4]], 10, 12),
                                expected)
  assert expected.dtype == np.uint8 and expected.sum() == 24
