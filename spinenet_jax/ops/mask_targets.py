"""Mask R-CNN mask targets on device: official `ops/target_ops.sample_and_crop_foreground_masks`
and `ops/spatial_transform_ops.crop_mask_in_target_box`.

The parser stores each ground-truth mask as a crop of its box (`mask_crop_size` 112, soft values,
-1 padded rows). For each of the first 128 foreground RoIs of the RoI sampler's output, the crop of
its matched ground truth is re-sampled inside the RoI at 28 x 28: the RoI is mapped into the crop's
pixel grid, one bilinear sample per output cell at offset 0.5, from the crop padded with 2 zero
pixels on every side. The targets stay soft (the loss uses them as sigmoid cross-entropy labels).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from spinenet_jax.ops import roi_align

_EPSILON = 1e-8
_PAD = 2   # official `pad_to_bounding_box(masks, 2, 2, height + 4, width + 4)`


class MaskTargets(NamedTuple):
  rois: jax.Array     # [B, K, 4] foreground RoIs (background ones fill up when fewer than K)
  classes: jax.Array  # [B, K] int32 their class targets (0 for the filling background RoIs)
  masks: jax.Array    # [B, K, S, S] soft mask targets


def _interpolation(start, size, bound, output_size: int, sample_offset: float):
  """Official `compute_grid_positions` along one axis (`roi_align.grid_positions`, with its
  correctly rounded division): [..., S] low / high indices and their weights.

  The sample index is clamped to [0, bound] but the weight uses the unclamped coordinate, as
  officially (below 0 this extrapolates from the two first pixels, which are zero padding here).
  """
  indices, kernel = roi_align.grid_positions(start, size, jnp.full_like(start, bound),
                                             output_size, sample_offset)
  return indices[..., 0], indices[..., 1], kernel[..., 0], kernel[..., 1]


def crop_mask_in_target_box(masks: jax.Array, boxes: jax.Array, target_boxes: jax.Array,
                            output_size: int = 28, sample_offset: float = 0.5) -> jax.Array:
  """Re-crops box-aligned masks inside target boxes (official `crop_mask_in_target_box`).

  The official default `sample_offset` is 0; its one caller (mask targets) passes 0.5, the
  default here.

  Args:
    masks: [B, M, H, W] masks, each a crop of its `boxes` row (H = W officially: the transform
      below mixes `height` and `width` exactly as the official code, which is only right for
      square crops).
    boxes: [B, M, 4] boxes that tightly enclose the masks, [ymin, xmin, ymax, xmax] pixels.
    target_boxes: [B, M, 4] boxes to crop, same pixels.
    output_size: side S of the square output.
    sample_offset: sub-pixel offset of each sample from its grid point, in [0, 1].

  Returns:
    [B, M, S, S] bilinear samples, in the dtype of `masks`.
  """
  height, width = masks.shape[-2:]
  dtype = target_boxes.dtype
  masks = jnp.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(_PAD, _PAD)] * 2)
  gy0, gx0, gy1, gx1 = (boxes[..., i].astype(dtype) for i in range(4))
  by0, bx0, by1, bx1 = (target_boxes[..., i] for i in range(4))
  # Target box in the padded crop's pixels (the official uses `height` for x and `width` for h).
  y = (by0 - gy0) * height / (gy1 - gy0 + _EPSILON) + _PAD
  x = (bx0 - gx0) * height / (gx1 - gx0 + _EPSILON) + _PAD
  h = (by1 - by0) * width / (gy1 - gy0 + _EPSILON)
  w = (bx1 - bx0) * width / (gx1 - gx0 + _EPSILON)
  y_lo, y_hi, hy, ly = _interpolation(y, h, float(height + 2 * _PAD - 1), output_size,
                                      sample_offset)
  x_lo, x_hi, hx, lx = _interpolation(x, w, float(width + 2 * _PAD - 1), output_size,
                                      sample_offset)
  hy, ly, hx, lx = (v.astype(masks.dtype) for v in (hy, ly, hx, lx))
  # Rows first, then columns: the order of the official einsum gather ('bmhwf,bmoh' then 'bmow').
  rows_lo = jnp.take_along_axis(masks, y_lo[..., None], axis=-2)   # [B, M, S, W + 4]
  rows_hi = jnp.take_along_axis(masks, y_hi[..., None], axis=-2)
  rows = hy[..., None] * rows_lo + ly[..., None] * rows_hi
  cols_lo = jnp.take_along_axis(rows, jnp.broadcast_to(x_lo[..., None, :], rows.shape[:-1]
                                                       + (output_size,)), axis=-1)
  cols_hi = jnp.take_along_axis(rows, jnp.broadcast_to(x_hi[..., None, :], rows.shape[:-1]
                                                       + (output_size,)), axis=-1)
  return hx[..., None, :] * cols_lo + lx[..., None, :] * cols_hi


def sample_and_crop_foreground_masks(candidate_rois: jax.Array, candidate_gt_boxes: jax.Array,
                                     candidate_gt_classes: jax.Array,
                                     candidate_gt_indices: jax.Array, gt_masks: jax.Array,
                                     num_mask_samples_per_image: int = 128,
                                     mask_target_size: int = 28) -> MaskTargets:
  """Mask targets of the sampled RoIs (official `sample_and_crop_foreground_masks`).

  The RoIs kept are `top_k(class > 0, k)`: the foreground RoIs in their order in the RoI sampler's
  output (increasing index), then, when there are fewer than k, the first background RoIs (class
  0; their targets are cropped all the same and weighted out by the loss).

  Args:
    candidate_rois: [B, N, 4] the RoI sampler's `rois`.
    candidate_gt_boxes: [B, N, 4] its matched `gt_boxes`.
    candidate_gt_classes: [B, N] its `classes`, 0 = background.
    candidate_gt_indices: [B, N] its `gt_indices` into the ground truth; -1 (a background RoI of
      an image without ground truth) is read as row 0, where official gathers are device-defined.
    gt_masks: [B, G, H, W] the parser's `gt_masks` (box crops, -1 padded rows).
    num_mask_samples_per_image: K (128).
    mask_target_size: S (28).

  Returns:
    `MaskTargets` with [B, K, 4] RoIs, [B, K] classes and [B, K, S, S] masks.

  Raises:
    ValueError: if N < K (the official `top_k` fails).
  """
  if candidate_rois.shape[1] < num_mask_samples_per_image:
    raise ValueError(f'{candidate_rois.shape[1]} RoIs cannot give '
                     f'{num_mask_samples_per_image} mask samples.')
  _, picked = jax.lax.top_k((candidate_gt_classes > 0).astype(jnp.int32),
                            num_mask_samples_per_image)
  rois = jnp.take_along_axis(candidate_rois, picked[..., None], axis=1)
  gt_boxes = jnp.take_along_axis(candidate_gt_boxes, picked[..., None], axis=1)
  classes = jnp.take_along_axis(candidate_gt_classes, picked, axis=1).astype(jnp.int32)
  indices = jnp.maximum(jnp.take_along_axis(candidate_gt_indices, picked, axis=1), 0)
  masks = jnp.take_along_axis(gt_masks, indices[..., None, None], axis=1)
  masks = crop_mask_in_target_box(masks, gt_boxes, rois, mask_target_size, sample_offset=0.5)
  return MaskTargets(rois, classes, masks)
