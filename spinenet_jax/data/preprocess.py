"""Image and box preprocessing of the official RetinaNet parser (`utils/input_utils.py`), in TF.

These run inside `tf.data` on the host. Semantics are the official ones:
  - normalize: /255, then ImageNet mean/std (RGB); padding later adds zeros in normalized space;
  - horizontal flip with probability 0.5 (U > 0.5), before resizing; boxes become 1 - xmax, 1 - xmin;
  - `resize_and_crop_image`: scale s ~ U[min, max) of the desired size rounded half-to-even, the
    largest aspect-preserving fit, per-axis image_scale = round(size * scale) / size, random crop
    offsets floor(max(scaled - desired, 0) * U[0, 1)), TF1 legacy bilinear resize (no half-pixel
    centres), crop, zero padding to the padded size;
  - image_info = [[orig_h, orig_w], [desired_h, desired_w], [y_scale, x_scale], [y_off, x_off]]
    (row 1 is the desired output size, as in the official code at HEAD);
  - boxes scaled, shifted by the offset, clipped to [0, desired - 1]; empty boxes dropped.

Randomness is stateless: every random op takes a `seed` ([2] int), so an example's augmentation is
a function of (seed, example) and a pipeline can be resumed exactly. The random values are separate
arguments of the deterministic functions, so the arithmetic can be tested with chosen values.
"""

from __future__ import annotations

import math

import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32, /255, minus ImageNet mean, divided by its std."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def padded_size(desired_size: tuple[int, int], stride: int) -> tuple[int, int]:
  """Smallest multiple of `stride` at least `desired_size` in each dimension."""
  return tuple(int(math.ceil(d / stride) * stride) for d in desired_size)


def legacy_resize_bilinear(image: tf.Tensor, size) -> tf.Tensor:
  """TF1 `resize_images(BILINEAR)`: align_corners=False, half_pixel_centers=False (src = dst*in/out)."""
  batched = image[None] if image.shape.rank == 3 else image
  out = tf.compat.v1.image.resize_bilinear(batched, size, align_corners=False,
                                           half_pixel_centers=False)
  return out[0] if image.shape.rank == 3 else out


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor, masks: tf.Tensor | None = None):
  """Flips an image, its normalized [ymin, xmin, ymax, xmax] boxes and [N, H, W] masks."""
  image = tf.image.flip_left_right(image)
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  boxes = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
  if masks is not None:
    masks = masks[:, :, ::-1]
  return image, boxes, masks


def random_horizontal_flip(image, boxes, masks=None, seed=None):
  """Flips with probability 0.5 (official: U > 0.5), with a stateless seed."""
  do_flip = tf.random.stateless_uniform([], seed=seed) > 0.5
  flipped = flip_left_right(image, boxes, masks)
  pick = lambda a, b: None if a is None else tf.cond(do_flip, lambda: a, lambda: b)  # noqa: E731
  return pick(flipped[0], image), pick(flipped[1], boxes), pick(flipped[2], masks)


def resize_and_crop_image(image: tf.Tensor, desired_size: tuple[int, int],
                          padded_size: tuple[int, int], random_scale=None,
                          offset_fraction=None) -> tuple[tf.Tensor, tf.Tensor]:
  """Official `resize_and_crop_image` with the random draws given (None: no jitter).

  `random_scale` is the scale s drawn from U[aug_scale_min, aug_scale_max); `offset_fraction`
  the [2] uniform draws for the crop offset. Returns (image [padded_h, padded_w, C], image_info).
  """
  image_size = tf.cast(tf.shape(image)[0:2], tf.float32)
  desired = tf.constant(desired_size, tf.float32)
  jitter = random_scale is not None
  scaled_size = tf.round(random_scale * desired) if jitter else desired   # round half to even
  scale = tf.minimum(scaled_size[0] / image_size[0], scaled_size[1] / image_size[1])
  scaled_size = tf.round(image_size * scale)
  image_scale = scaled_size / image_size
  if jitter:
    max_offset = tf.maximum(scaled_size - desired, 0.0)
    offset = tf.cast(max_offset * offset_fraction, tf.int32)
  else:
    offset = tf.zeros((2,), tf.int32)
  scaled = legacy_resize_bilinear(image, tf.cast(scaled_size, tf.int32))
  if jitter:
    scaled = scaled[offset[0]:offset[0] + desired_size[0], offset[1]:offset[1] + desired_size[1]]
  output = tf.image.pad_to_bounding_box(scaled, 0, 0, padded_size[0], padded_size[1])
  image_info = tf.stack([image_size, desired, image_scale, tf.cast(offset, tf.float32)])
  return output, image_info


def random_resize_and_crop_image(image, desired_size, padded_size, aug_scale_min: float,
                                 aug_scale_max: float, seed):
  """`resize_and_crop_image` with official jitter (on when min != 1 or max != 1)."""
  if aug_scale_min == 1.0 and aug_scale_max == 1.0:
    return resize_and_crop_image(image, desired_size, padded_size)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  random_scale = tf.random.stateless_uniform([], seeds[0], aug_scale_min, aug_scale_max)
  offset_fraction = tf.random.stateless_uniform([2], seeds[1], 0.0, 1.0)
  return resize_and_crop_image(image, desired_size, padded_size, random_scale, offset_fraction)


def denormalize_boxes(boxes: tf.Tensor, image_shape) -> tf.Tensor:
  h, w = tf.unstack(tf.cast(image_shape, boxes.dtype))
  return boxes * tf.stack([h, w, h, w])


def resize_and_crop_boxes(boxes: tf.Tensor, image_scale: tf.Tensor, output_size: tf.Tensor,
                          offset: tf.Tensor) -> tf.Tensor:
  """Pixel boxes scaled, shifted by the crop offset and clipped to [0, output_size - 1]."""
  boxes = boxes * tf.tile(image_scale[None], [1, 2]) - tf.tile(offset[None], [1, 2])
  limits = tf.tile(output_size[None] - 1.0, [1, 2])
  return tf.maximum(tf.minimum(boxes, limits), 0.0)


def non_empty_box_indices(boxes: tf.Tensor) -> tf.Tensor:
  """Indices of boxes with positive height and width."""
  keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
  return tf.where(keep)[:, 0]


def pad_to_fixed_size(tensor: tf.Tensor, size: int, constant=-1) -> tf.Tensor:
  """Pads (or truncates) the first dimension to `size` with `constant`."""
  tensor = tensor[:size]
  padding = [[0, size - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
  out = tf.pad(tensor, padding, constant_values=tf.cast(constant, tensor.dtype))
  return tf.ensure_shape(out, [size] + tensor.shape.as_list()[1:])
