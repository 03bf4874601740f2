"""Multilevel RoIAlign, as the official `ops/spatial_transform_ops.py` (`multilevel_crop_and_resize`,
`selective_crop_and_resize`, `compute_grid_positions`, `feature_bilinear_interpolation`).

Each RoI is assigned a pyramid level by its size, mapped onto that level's grid and sampled at
one point per output bin:
- level = floor(log(sqrt(h w) / 224) / log 2) + 4, clipped to [min_level, max_level] (h, w without
  +1; a zero-area box, log 0 = -inf, and a NaN land on min_level, as TF's int cast does);
- the box, its height and its width are each divided by 2^level (the height is divided, not
  recomputed from the divided corners: float rounding differs);
- sample i of an axis sits at y0 + (i + sample_offset) h / output_size;
- bilinear interpolation with the official clamping: the lower index floor(y) is clamped to
  [0, bound], the upper one is min(lower + 1, bound), and the weights use the *unclamped* y minus
  the clamped lower index. Before the image's top or left edge this extrapolates (y = -0.3 mixes
  rows 0 and 1 with weights 1.3 and -0.3); past the far edge it returns the last row.
- bound = (min_level height / 2^(level - min_level)) - 1 per axis, from the min_level map and in
  float32, as official: equal to "level size - 1" when the input is a multiple of 2^max_level.

The grid arithmetic runs in the boxes' dtype (float32 for float32 RoIs, even with float64 or
bfloat16 features); the interpolation kernel is cast to the features' dtype. As official, the
2 x 2 neighbours of every sample are gathered (a [2 out, 2 out] grid per RoI), multiplied by 4 times
the kernel and average-pooled 2 x 2. The gather runs on flattened levels, so a batch of RoIs on
any mix of levels costs one gather.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
CANONICAL_SIZE = 224.0   # a 224 x 224 RoI maps to level 4 (FPN paper, official)
CANONICAL_LEVEL = 4


def exact_divide(x: Array, divisor: float) -> Array:
  """x / divisor, correctly rounded. XLA rewrites division by a broadcast constant into a multiply
  by its reciprocal, which is off by an ulp about half the time; TF (and numpy) divide. An ulp in
  a grid coordinate moves an extrapolated sample, and one in the level's log flips boundary boxes,
  so the divisor is hidden from the simplifier."""
  return x / jax.lax.optimization_barrier(jnp.full_like(x, divisor))


def assign_levels(boxes: Array, min_level: int, max_level: int) -> Array:
  """int32 [...] pyramid level of each [..., 4] box (ymin, xmin, ymax, xmax, input pixels)."""
  height = boxes[..., 2] - boxes[..., 0]
  width = boxes[..., 3] - boxes[..., 1]
  areas_sqrt = jnp.sqrt(height * width)
  two = jnp.asarray(2.0, boxes.dtype)
  log_ratio = jnp.log(exact_divide(areas_sqrt, CANONICAL_SIZE))
  levels = jnp.floor(exact_divide(log_ratio, jnp.log(two))) + CANONICAL_LEVEL
  # TF casts -inf (zero area) and NaN (negative area) to INT_MIN, which the clip sends to min_level.
  levels = jnp.where(jnp.isnan(levels), -jnp.inf, levels)
  return jnp.clip(levels, min_level, max_level).astype(jnp.int32)


def grid_positions(starts: Array, sizes: Array, bounds: Array, output_size: int,
                   sample_offset: float) -> tuple[Array, Array]:
  """Official `compute_grid_positions` along one axis: (lower, upper) int32 indices [..., out, 2]
  and bilinear kernel [..., out, 2] of boxes starting at `starts` [...] with `sizes` [...], the
  indices clamped to [0, `bounds` [...]] and the weights from the unclamped coordinate."""
  steps = (np.arange(output_size, dtype=np.float64) + sample_offset).astype(starts.dtype)
  grid = starts[..., None] + exact_divide(steps * sizes[..., None], output_size)
  lower = jnp.minimum(jnp.maximum(jnp.floor(grid), 0.0), bounds[..., None])
  upper = jnp.minimum(lower + 1.0, bounds[..., None])
  frac = grid - lower                    # the unclamped coordinate: extrapolates before 0
  indices = jnp.stack([lower, upper], axis=-1).astype(jnp.int32)
  return indices, jnp.stack([1.0 - frac, frac], axis=-1)


def crop_and_resize(flat_features: Array, level_offsets: Array, level_widths: Array,
                    boxes: Array, box_levels: Array, boundaries: Array, output_size: int,
                    sample_offset: float = 0.5) -> Array:
  """The sampling core shared by the RoIAlign variants (official `selective_crop_and_resize`).

  flat_features: [B, P, C], the levels' [H_l, W_l] maps flattened and concatenated;
  level_offsets / level_widths: int32 [L], where level index l starts in P and its width;
  boxes: [B, N, 4] (y, x, h, w) in the coordinates of each box's level; box_levels: int32 [B, N]
  level *indices* (0-based); boundaries: [B, N, 2] (y, x) largest valid index, boxes' dtype.
  Returns [B, N, output_size, output_size, C] in the features' dtype.
  """
  b, n = boxes.shape[:2]
  y_idx, ky = grid_positions(boxes[..., 0], boxes[..., 2], boundaries[..., 0], output_size, sample_offset)
  x_idx, kx = grid_positions(boxes[..., 1], boxes[..., 3], boundaries[..., 1], output_size, sample_offset)
  two_out = 2 * output_size
  y_idx, x_idx = y_idx.reshape(b, n, two_out), x_idx.reshape(b, n, two_out)
  rows = level_offsets[box_levels][..., None] + y_idx * level_widths[box_levels][..., None]
  points = rows[..., :, None] + x_idx[..., None, :]                     # [B, N, 2o, 2o]
  gathered = jax.vmap(lambda f, p: f[p])(flat_features, points)        # [B, N, 2o, 2o, C]
  kernel = ky.reshape(b, n, two_out, 1) * kx.reshape(b, n, 1, two_out) * 4
  weighted = gathered * kernel.astype(flat_features.dtype)[..., None]
  pooled = weighted.reshape(b, n, output_size, 2, output_size, 2, -1)
  return pooled.sum(axis=(3, 5)) / 4


def flatten_levels(features: Mapping[int, Array]) -> tuple[Array, Array, Array, list[int]]:
  """([B, P, C] levels flattened in level order, offsets int32 [L], widths int32 [L], levels)."""
  levels = sorted(features)
  sizes = [features[l].shape[1] * features[l].shape[2] for l in levels]
  flat = jnp.concatenate([features[l].reshape(features[l].shape[0], -1, features[l].shape[-1])
                          for l in levels], axis=1)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  widths = np.array([features[l].shape[2] for l in levels], np.int32)
  return flat, jnp.asarray(offsets), jnp.asarray(widths), levels


def multilevel_roi_align(features: Mapping[int, Array], boxes: Array, output_size: int = 7,
                         sample_offset: float = 0.5) -> Array:
  """RoIAlign features of [B, N, 4] boxes (ymin, xmin, ymax, xmax, input pixels) from the level
  chosen by each box's size (official `multilevel_crop_and_resize`).

  features: {level: [B, H_l, W_l, C]} with consecutive levels, H_l = H_min / 2^(l - min).
  Returns [B, N, output_size, output_size, C] (7 for the Fast R-CNN head, 14 for the mask head).
  """
  flat, offsets, widths, levels = flatten_levels(features)
  min_level, max_level = levels[0], levels[-1]
  if levels != list(range(min_level, max_level + 1)):
    raise ValueError(f'RoIAlign needs consecutive levels, got {levels}')
  box_levels = assign_levels(boxes, min_level, max_level)
  powers = np.float32(2.0) ** np.arange(max_level + 1, dtype=np.float32)   # exact, as tf.pow
  scale = jnp.asarray(powers)[box_levels].astype(boxes.dtype)
  height = (boxes[..., 2] - boxes[..., 0]) / scale
  width = (boxes[..., 3] - boxes[..., 1]) / scale
  level_boxes = jnp.stack([boxes[..., 0] / scale, boxes[..., 1] / scale, height, width], axis=-1)
  index = box_levels - min_level
  strides = jnp.asarray(powers)[index]
  min_height, min_width = features[min_level].shape[1:3]
  boundaries = jnp.stack([np.float32(min_height) / strides - 1.0,
                          np.float32(min_width) / strides - 1.0], axis=-1).astype(boxes.dtype)
  return crop_and_resize(flat, offsets, widths, level_boxes, index, boundaries, output_size,
                         sample_offset)
