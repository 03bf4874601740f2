"""Parser preprocessing against hand-computed values (official `input_utils` semantics)."""

import numpy as np
import pytest
import tensorflow as tf

from spinenet_jax.data import preprocess as pp


def test_legacy_bilinear_resize_has_no_half_pixel_centres():
  x = tf.constant([0.0, 1.0, 2.0, 3.0])[None, :, None]
  out = pp.legacy_resize_bilinear(x, (1, 8)).numpy()[0, :, 0]
  # src = dst * in / out: 0, .5, 1, ..., 3, then clamped at the last pixel.
  np.testing.assert_allclose(out, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
  ref = tf.compat.v1.image.resize_bilinear(np.arange(35.0).reshape(1, 5, 7, 1), (3, 11),
                                           align_corners=False, half_pixel_centers=False)
  np.testing.assert_allclose(pp.legacy_resize_bilinear(
      tf.constant(np.arange(35.0).reshape(5, 7, 1)), (3, 11)), ref[0], rtol=1e-6)


def test_normalize_image():
  image = tf.constant([[[255, 0, 128]]], tf.uint8)
  np.testing.assert_allclose(pp.normalize_image(image)[0, 0],
                             [(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225],
                             rtol=1e-5)


def test_padded_size():
  assert pp.padded_size((640, 640), 128) == (640, 640)
  assert pp.padded_size((100, 200), 32) == (128, 224)


def test_resize_without_jitter():
  image = tf.ones((100, 200, 3))
  out, info = pp.resize_and_crop_image(image, (64, 64), (128, 128))
  # scale = min(64/100, 64/200) = 0.32 -> 32 x 64, zero-padded to 128 x 128.
  np.testing.assert_allclose(info, [[100, 200], [64, 64], [0.32, 0.32], [0, 0]], rtol=1e-6)
  assert out.shape == (128, 128, 3)
  np.testing.assert_allclose(out[:32, :64], 1.0)
  assert float(tf.reduce_sum(out[32:])) == 0 and float(tf.reduce_sum(out[:, 64:])) == 0


def test_resize_with_jitter_hand_computed():
  image = tf.reshape(tf.range(100 * 200 * 3, dtype=tf.float32), (100, 200, 3))
  out, info = pp.resize_and_crop_image(image, (64, 64), (128, 128), random_scale=1.5,
                                       offset_fraction=tf.constant([0.5, 0.7]))
  # scaled = round(1.5 * 64) = 96; scale = min(96/100, 96/200) = 0.48 -> 48 x 96.
  # Offsets: y max(48 - 64, 0) = 0; x floor((96 - 64) * 0.7) = 22.
  np.testing.assert_allclose(info, [[100, 200], [64, 64], [0.48, 0.48], [0, 22]], rtol=1e-6)
  full = pp.legacy_resize_bilinear(image, (48, 96))
  np.testing.assert_allclose(out[:48, :64], full[:, 22:86])
  assert float(tf.reduce_sum(tf.abs(out[48:]))) == 0


def test_jitter_rounds_half_to_even():
  image = tf.ones((64, 64, 3))
  # 0.6328125 * 64 = 40.5 -> 40 (half to even), not 41.
  _, info = pp.resize_and_crop_image(image, (64, 64), (64, 64), random_scale=0.6328125,
                                     offset_fraction=tf.constant([0.0, 0.0]))
  np.testing.assert_allclose(info[2], [40 / 64, 40 / 64])


def test_boxes_scaled_shifted_clipped_and_filtered():
  boxes = tf.constant([[10.0, 20.0, 50.0, 120.0], [10.0, 10.0, 30.0, 40.0]])
  out = pp.resize_and_crop_boxes(boxes, tf.constant([0.48, 0.48]), tf.constant([64.0, 64.0]),
                                 tf.constant([0.0, 22.0]))
  # [4.8, 9.6, 24, 57.6] - [0, 22, 0, 22] -> x clipped at 0; box 2 ends at x = 19.2 - 22 < 0.
  np.testing.assert_allclose(out, [[4.8, 0, 24, 35.6], [4.8, 0, 14.4, 0]], rtol=1e-5)
  np.testing.assert_array_equal(pp.non_empty_box_indices(out), [0])


def test_clip_to_output_size_minus_one():
  out = pp.resize_and_crop_boxes(tf.constant([[0.0, 0.0, 100.0, 100.0]]), tf.constant([1.0, 1.0]),
                                 tf.constant([64.0, 48.0]), tf.constant([0.0, 0.0]))
  np.testing.assert_allclose(out, [[0, 0, 63, 47]])


def test_flip_moves_boxes_and_masks_with_the_image():
  image = np.zeros((20, 40, 3), np.float32)
  image[5:10, 4:12] = 1.0                                    # object at x in [4, 12)
  masks = (image[None, :, :, 0] > 0).astype(np.float32)
  boxes = tf.constant([[5 / 20, 4 / 40, 10 / 20, 12 / 40]])
  flipped, fboxes, fmasks = pp.flip_left_right(tf.constant(image), boxes, tf.constant(masks))
  np.testing.assert_allclose(fboxes, [[0.25, 1 - 0.3, 0.5, 1 - 0.1]], rtol=1e-6)
  _, xs = np.nonzero(flipped.numpy()[:, :, 0])
  x0, x1 = fboxes.numpy()[0, [1, 3]] * 40
  assert xs.min() == pytest.approx(x0) and xs.max() + 1 == pytest.approx(x1)
  np.testing.assert_array_equal(fmasks.numpy()[0], flipped.numpy()[:, :, 0])


def test_random_flip_is_stateless_and_fair():
  image = tf.reshape(tf.range(12.0), (2, 2, 3))
  boxes = tf.constant([[0.0, 0.1, 1.0, 0.3]])
  flips = []
  for i in range(200):
    a = pp.random_horizontal_flip(image, boxes, seed=tf.constant([i, 7]))
    b = pp.random_horizontal_flip(image, boxes, seed=tf.constant([i, 7]))
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] is None
    flips.append(bool(a[1][0, 1] > 0.5))
  assert 70 < sum(flips) < 130


def test_random_resize_is_deterministic_and_in_range():
  image = tf.ones((120, 90, 3))
  seen = set()
  for i in range(20):
    a, info = pp.random_resize_and_crop_image(image, (64, 64), (128, 128), 0.5, 2.0,
                                              tf.constant([i, 1]))
    b, info_b = pp.random_resize_and_crop_image(image, (64, 64), (128, 128), 0.5, 2.0,
                                                tf.constant([i, 1]))
    np.testing.assert_array_equal(info, info_b)
    np.testing.assert_array_equal(a, b)
    scale = float(info[2, 0])
    assert 0.5 * 64 / 120 - 0.01 <= scale <= 2.0 * 64 / 120 + 0.01
    seen.add(round(scale, 4))
  assert len(seen) > 10


def test_pad_to_fixed_size():
  x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_array_equal(pp.pad_to_fixed_size(x, 4), [[1, 2], [3, 4], [-1, -1], [-1, -1]])
  np.testing.assert_array_equal(pp.pad_to_fixed_size(x, 1), [[1, 2]])
  assert pp.pad_to_fixed_size(tf.constant([5, 6]), 3, 0).numpy().tolist() == [5, 6, 0]


def official_normalize(image):
  image = tf.image.convert_image_dtype(image, tf.float32)
  return (image - tf.constant(pp.MEAN_RGB)) / tf.constant(pp.STDDEV_RGB)


def test_fast_paths_give_the_bits_of_the_official_op_order():
  """The parser's faster forms (row-tiled normalization, uint8 flip, crop and pad on [H, W * 3])
  against the official op order, eagerly and inside tf.data (graph-optimized, as in training)."""
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8))
  crops = [(None, (40, 64), (64, 64)), ([3, 5], (20, 30), (32, 32)), ([0, 40], (40, 40), (64, 64))]

  def fast(u8):
    flipped = pp.flip_left_right(u8, tf.zeros([0, 4]))[0]
    x = pp.normalize_image(u8)
    return [x, pp.normalize_image(flipped)] + [pp._crop_and_pad(x, *c) for c in crops]

  def official(u8):
    x = official_normalize(u8)
    out = [x, tf.image.flip_left_right(x)]
    for offset, (h, w), padded in crops:
      y0, x0 = offset or (0, 0)
      crop = x[y0:y0 + h, x0:x0 + w] if offset else x
      out.append(tf.image.pad_to_bounding_box(crop, 0, 0, *padded))
    return out

  def in_tf_data(f):
    return list(next(iter(tf.data.Dataset.from_tensors(image).map(f))))

  for a, b in zip(fast(image) + in_tf_data(fast), official(image) + in_tf_data(official)):
    np.testing.assert_array_equal(a, b)


def official_resize_info(height, width, desired, random_scale=None):
  """image_info row 2 of the official formula, op by op in float32 (no 1-pixel floor)."""
  size = np.array([height, width], np.float32)
  desired = np.array(desired, np.float32)
  target = np.round(np.float32(random_scale) * desired) if random_scale is not None else desired
  scale = np.minimum(target[0] / size[0], target[1] / size[1])
  return np.round(size * scale) / size


@pytest.mark.parametrize('random_scale', [None, 0.5, 1.3, 2.0])
def test_sizes_of_a_pixel_or_more_are_official(random_scale):
  # Aspect ratios up to 1:43: every side rounds to >= 1, where the floor must change nothing.
  offsets = None if random_scale is None else tf.constant([0.3, 0.6])
  for height, width in [(100, 200), (120, 90), (7, 300), (300, 7), (1, 1), (64, 2048), (3, 5)]:
    expected = official_resize_info(height, width, (64, 64), random_scale)
    assert np.round(expected * [height, width]).min() >= 1
    image = tf.reshape(tf.range(height * width * 3, dtype=tf.float32), (height, width, 3))
    out, info = pp.resize_and_crop_image(image, (64, 64), (64, 64), random_scale, offsets)
    np.testing.assert_array_equal(info[2], expected)
    scaled = np.round(expected * [height, width]).astype(int)
    full = pp.legacy_resize_bilinear(image, scaled).numpy()
    y0, x0 = info[3].numpy().astype(int)
    crop = full[y0:y0 + 64, x0:x0 + 64]
    np.testing.assert_array_equal(out[:crop.shape[0], :crop.shape[1]], crop)


@pytest.mark.parametrize('height, width', [(2, 1200), (1200, 2)])
@pytest.mark.parametrize('random_scale', [None, 0.5, 1.0, 2.0])
def test_a_side_that_rounds_to_zero_keeps_one_pixel(height, width, random_scale):
  # 2 * 128 / 1200 = 0.21 rounds to 0 (the official code fails: resize to a 0-pixel side).
  image = tf.fill((height, width, 3), 2.0)
  offsets = None if random_scale is None else tf.constant([0.5, 0.5])
  out, info = pp.resize_and_crop_image(image, (128, 128), (128, 128), random_scale, offsets)
  long_side = 128 if random_scale is None else round(128 * random_scale)
  expected = np.array([1, long_side] if height == 2 else [long_side, 1], np.float32)
  np.testing.assert_allclose(info[2], expected / [height, width], rtol=1e-6)
  shown = np.minimum(expected, 128).astype(int)
  assert out.shape == (128, 128, 3) and np.isfinite(out.numpy()).all()
  np.testing.assert_array_equal(out[:shown[0], :shown[1]], 2.0)
  assert float(tf.reduce_sum(out)) == 2.0 * shown.prod() * 3
  # Boxes map with that scale and stay valid (positive extent inside the canvas).
  boxes = pp.resize_and_crop_boxes(tf.constant([[0.0, 0.0, height, width]]), info[2], info[1],
                                   info[3])
  np.testing.assert_array_equal(pp.non_empty_box_indices(boxes), [0])
  assert 0 <= float(tf.reduce_min(boxes)) and float(tf.reduce_max(boxes)) <= 127
