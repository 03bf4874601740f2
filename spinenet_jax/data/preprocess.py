"""Image, box and mask preprocessing of the official parsers (`utils/input_utils.py`), in TF.

These run inside `tf.data` on the host. Semantics are the official ones:
  - normalize: /255, then ImageNet mean/std (RGB); padding later adds zeros in normalized space;
  - horizontal flip with probability 0.5 (U > 0.5), before resizing; boxes become 1 - xmax,
    1 - xmin; masks flip with the image;
  - `resize_and_crop_image`: scale s ~ U[min, max) of the desired size rounded half-to-even, the
    largest aspect-preserving fit, per-axis image_scale = max(round(size * scale), 1) / size (the
    1-pixel floor is ours: official fails on a side that rounds to 0), random crop
    offsets floor(max(scaled - desired, 0) * U[0, 1)), TF1 legacy bilinear resize (no half-pixel
    centres), crop, zero padding to the padded size;
  - image_info = [[orig_h, orig_w], [desired_h, desired_w], [y_scale, x_scale], [y_off, x_off]]
    (row 1 is the desired output size, as in the official code at HEAD);
  - boxes scaled, shifted by the offset, clipped to [0, desired - 1]; empty boxes dropped;
  - Mask R-CNN mask targets: the original-resolution mask sampled (crop_and_resize, bilinear) in
    the final box mapped back onto the original image.

The host has to feed the accelerators (goal: 100 images/s per core), but speed comes only from
rewrites that give the same bits as the official op order in tf.data: flipping the uint8 image
rather than the float one, per-channel constants broadcast along [H, W * 3] rows, cropping and
padding that [H, W * 3] view, flipping only when the coin says so.

Randomness is stateless: every random op takes a `seed` ([2] int), so an example's augmentation is
a function of (seed, example) and a pipeline can be resumed exactly. The random values are separate
arguments of the deterministic functions, so the arithmetic can be tested with chosen values.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 (image / 255 - mean) / std with the ImageNet RGB mean and std.

  As `convert_image_dtype`, /255 is a product with float32(1 / 255). The mean and std are tiled
  along a flattened [H, W * 3] row because TF broadcasts a [3] vector over [H, W, 3] about five
  times slower than a row over a matrix; the arithmetic is the same, bit for bit.
  """
  shape = tf.shape(image)
  flat = tf.reshape(tf.cast(image, tf.float32) * np.float32(1.0 / 255.0), [shape[0], -1])
  mean = tf.tile(tf.constant(MEAN_RGB, tf.float32), shape[1:2])
  std = tf.tile(tf.constant(STDDEV_RGB, tf.float32), shape[1:2])
  return tf.reshape((flat - mean) / std, shape)


def padded_size(desired_size: tuple[int, int], stride: int) -> tuple[int, int]:
  """Smallest multiple of `stride` at least `desired_size` in each dimension."""
  return tuple(int(math.ceil(d / stride) * stride) for d in desired_size)


def legacy_resize_bilinear(image: tf.Tensor, size) -> tf.Tensor:
  """TF1 `resize_images(BILINEAR)`: no align_corners, no half-pixel centres (src = dst * in / out).

  The float image is resized as the official code does: resizing the uint8 one and normalizing
  after would be cheaper and mathematically equal, but rounds differently.
  """
  batched = image[None] if image.shape.rank == 3 else image
  out = tf.raw_ops.ResizeBilinear(images=batched, size=size, align_corners=False,
                                  half_pixel_centers=False)
  return out[0] if image.shape.rank == 3 else out


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor, masks: tf.Tensor | None = None):
  """Flips an image, its normalized [ymin, xmin, ymax, xmax] boxes and [N, H, W(, 1)] masks."""
  image = tf.reverse(image, [1])
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  boxes = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
  if masks is not None:
    masks = tf.reverse(masks, [2])
  return image, boxes, masks


def random_horizontal_flip(image, boxes, masks=None, seed=None):
  """Flips with probability 0.5 (official: U > 0.5), with a stateless seed.

  The flip is a pixel permutation, so it gives the same result on the uint8 image before
  normalization (as the parser does: a quarter of the bytes) as on the normalized one.
  """
  do_flip = tf.random.stateless_uniform([], seed=seed) > 0.5
  args = (image, boxes) if masks is None else (image, boxes, masks)
  # Inside the branches, so that nothing is flipped when the coin says no.
  out = tf.cond(do_flip, lambda: flip_left_right(*args)[:len(args)], lambda: args)
  return out[0], out[1], (out[2] if masks is not None else None)


def resize_and_crop_image(image: tf.Tensor, desired_size: tuple[int, int],
                          padded_size: tuple[int, int], random_scale=None,
                          offset_fraction=None) -> tuple[tf.Tensor, tf.Tensor]:
  """Official `resize_and_crop_image` with the random draws given (None: no jitter).

  `image` is float [H, W, C] with H, W >= 1. `random_scale` is the scale s drawn from
  U[aug_scale_min, aug_scale_max); `offset_fraction` the [2] uniform draws for the crop offset.
  Returns (image [padded_h, padded_w, C], image_info [4, 2] float32, rows as in the module
  docstring). Each scaled side is at least 1 pixel (beyond official, which fails when an extreme
  aspect ratio rounds a side to 0); image_info's image_scale is that scaled size / original size.
  """
  image_size = tf.cast(tf.shape(image)[0:2], tf.float32)
  desired = tf.constant(desired_size, tf.float32)
  jitter = random_scale is not None
  scaled_size = tf.round(random_scale * desired) if jitter else desired   # round half to even
  scale = tf.minimum(scaled_size[0] / image_size[0], scaled_size[1] / image_size[1])
  # At least 1 pixel per side: a thin strip (e.g. 1200x2 to 128) rounds its short side to 0, and
  # the resize refuses a 0-pixel output. The official code dies there; every size >= 1 is as
  # official, and image_scale stays scaled / size, so boxes and predictions map consistently.
  scaled_size = tf.maximum(tf.round(image_size * scale), 1.0)
  image_scale = scaled_size / image_size
  if jitter:
    max_offset = tf.maximum(scaled_size - desired, 0.0)
    offset = tf.cast(max_offset * offset_fraction, tf.int32)
  else:
    offset = tf.zeros((2,), tf.int32)
  scaled = legacy_resize_bilinear(image, tf.cast(scaled_size, tf.int32))
  output = _crop_and_pad(scaled, offset if jitter else None, desired_size, padded_size)
  image_info = tf.stack([image_size, desired, image_scale, tf.cast(offset, tf.float32)])
  return output, image_info


def _crop_and_pad(image: tf.Tensor, offset, desired_size, padded_size) -> tf.Tensor:
  """image[offset : offset + desired] (no crop when offset is None), zero-padded bottom-right.

  Works on the [H, W * C] view: TF pads (and slices) the innermost dimension of 3 channels
  several times slower than a long row.
  """
  shape = tf.shape(image)
  channels = image.shape[-1] or shape[2]
  flat = tf.reshape(image, [shape[0], shape[1] * channels])
  if offset is not None:
    flat = flat[offset[0]:offset[0] + desired_size[0],
                offset[1] * channels:(offset[1] + desired_size[1]) * channels]
  height, width = tf.unstack(tf.shape(flat))
  flat = tf.pad(flat, [[0, padded_size[0] - height], [0, padded_size[1] * channels - width]])
  return tf.reshape(flat, [padded_size[0], padded_size[1], channels])


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


def crop_masks_to_boxes(masks: tf.Tensor, boxes: tf.Tensor, image_info: tf.Tensor,
                        crop_size: int) -> tf.Tensor:
  """Official Mask R-CNN mask targets: [N, crop_size, crop_size] float32 soft masks.

  `masks` [N, H, W] are at the original resolution (uint8 or float 0/1: crop_and_resize samples
  both as float, identically); `boxes` [N, 4] are the final boxes on the output canvas. Each box is
  mapped back onto the original image (+ crop offset, / image scale), normalized by the original
  size, and the mask is sampled bilinearly in it (crop_and_resize maps y to y * (H - 1)).
  """
  offset = tf.tile(image_info[3][None], [1, 2])
  scale = tf.tile(image_info[2][None], [1, 2])
  size = tf.tile(image_info[0][None], [1, 2])
  normalized = (boxes + offset) / scale / size
  crops = tf.image.crop_and_resize(masks[..., None], normalized,
                                   tf.range(tf.shape(masks)[0], dtype=tf.int32),
                                   [crop_size, crop_size], method='bilinear')
  return crops[..., 0]
