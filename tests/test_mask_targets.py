"""Mask targets (`ops/mask_targets.py`) against hand-computed crops and numpy transcriptions of the
official `crop_mask_in_target_box` (einsum path of `selective_crop_and_resize`) and
`sample_and_crop_foreground_masks`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spinenet_jax.ops import mask_targets, roi_sampler


def _np_crop_mask_in_target_box(masks, boxes, target_boxes, output_size, sample_offset):
  """`crop_mask_in_target_box` with `compute_grid_positions`, `get_grid_one_hot` and the einsum
  gather of `selective_crop_and_resize(use_einsum_gather=True)`."""
  batch_size, num_masks, height, width = masks.shape
  masks = np.pad(masks, [(0, 0), (0, 0), (2, 2), (2, 2)])[..., None]
  gt_y_min, gt_x_min, gt_y_max, gt_x_max = np.split(boxes, 4, axis=2)
  bb_y_min, bb_x_min, bb_y_max, bb_x_max = np.split(target_boxes, 4, axis=2)
  y_transform = (bb_y_min - gt_y_min) * height / (gt_y_max - gt_y_min + 1e-8) + 2
  x_transform = (bb_x_min - gt_x_min) * height / (gt_x_max - gt_x_min + 1e-8) + 2
  h_transform = (bb_y_max - bb_y_min) * width / (gt_y_max - gt_y_min + 1e-8)
  w_transform = (bb_x_max - bb_x_min) * width / (gt_x_max - gt_x_min + 1e-8)
  boundaries = np.concatenate([np.ones_like(y_transform) * ((height + 4) - 1),
                               np.ones_like(x_transform) * ((width + 4) - 1)], axis=-1)
  tboxes = np.concatenate([y_transform, x_transform, h_transform, w_transform], -1)
  box_grid_x = np.stack([tboxes[:, :, 1] + (i + sample_offset) * tboxes[:, :, 3] / output_size
                         for i in range(output_size)], axis=2)
  box_grid_y = np.stack([tboxes[:, :, 0] + (i + sample_offset) * tboxes[:, :, 2] / output_size
                         for i in range(output_size)], axis=2)
  box_grid_y0 = np.maximum(0., np.floor(box_grid_y))
  box_grid_x0 = np.maximum(0., np.floor(box_grid_x))
  box_grid_x0 = np.minimum(box_grid_x0, boundaries[:, :, 1:2])
  box_grid_x1 = np.minimum(box_grid_x0 + 1, boundaries[:, :, 1:2])
  box_grid_y0 = np.minimum(box_grid_y0, boundaries[:, :, 0:1])
  box_grid_y1 = np.minimum(box_grid_y0 + 1, boundaries[:, :, 0:1])
  box_gridx0x1 = np.stack([box_grid_x0, box_grid_x1], axis=-1)
  box_gridy0y1 = np.stack([box_grid_y0, box_grid_y1], axis=-1)
  ly = box_grid_y - box_grid_y0
  lx = box_grid_x - box_grid_x0
  kernel_y = np.stack([1.0 - ly, ly], axis=3).reshape(batch_size, num_masks, output_size, 2, 1)
  kernel_x = np.stack([1.0 - lx, lx], axis=3).reshape(batch_size, num_masks, output_size, 2, 1)
  grid_y_one_hot = np.eye(height + 4)[box_gridy0y1.astype(np.int32)]
  grid_x_one_hot = np.eye(width + 4)[box_gridx0x1.astype(np.int32)]
  grid_y_weight = np.sum(grid_y_one_hot * kernel_y, axis=-2)
  grid_x_weight = np.sum(grid_x_one_hot * kernel_x, axis=-2)
  features = np.einsum('bmhwf,bmoh->bmowf', masks, grid_y_weight)
  features = np.einsum('bmhwf,bmow->bmhof', features, grid_x_weight)
  return features[..., 0]


def _np_sample_and_crop(rois, gt_boxes, classes, indices, gt_masks, k, size):
  fg = np.argsort(-(classes > 0).astype(np.int32), axis=-1, kind='stable')[:, :k]   # tf top_k
  b = np.arange(rois.shape[0])[:, None]
  fg_rois, fg_boxes, fg_classes, fg_indices = rois[b, fg], gt_boxes[b, fg], classes[b, fg], \
      indices[b, fg]
  masks = gt_masks[b, fg_indices]
  return fg_rois, fg_classes, _np_crop_mask_in_target_box(masks, fg_boxes, fg_rois, size, 0.5)


def _crop(masks, boxes, rois, size=28):
  return np.asarray(mask_targets.crop_mask_in_target_box(
      jnp.asarray(masks, jnp.float32)[None, None], jnp.asarray(boxes, jnp.float32)[None, None],
      jnp.asarray(rois, jnp.float32)[None, None], size)[0, 0])


MASK = np.random.default_rng(0).random((112, 112)).astype(np.float32)
GT_BOX = [10.0, 20.0, 66.0, 76.0]   # 56 x 56 pixels: 2 mask pixels per image pixel


def test_axis_aligned_roi_is_the_sub_crop():
  # RoI (17.75, 35.75) + 14: padded-crop coordinates y = 7.75 * 2 + 2 = 17.5, height 28, samples at
  # 18 + i, i.e. mask row 16 + i (columns: 33.5 -> 34 + j -> mask column 32 + j).
  np.testing.assert_array_equal(_crop(MASK, GT_BOX, [17.75, 35.75, 31.75, 49.75]),
                                MASK[16:44, 32:60])
  # The gt box itself: samples at 2 + 4 i in the crop (every 4th pixel from 2).
  np.testing.assert_array_equal(_crop(MASK, GT_BOX, GT_BOX), MASK[2::4, 2::4])


def test_targets_are_soft_and_zero_outside():
  step = np.zeros((112, 112), np.float32)
  step[:, 56:] = 1.0
  # Columns at half mask pixels: x = (46.5 - 20) * 2 + 2 = 55, samples at 55.5 + j in the padded
  # crop, i.e. mask column 53.5 + j: 0, 0, then 0.5 across the step, then 1.
  out = _crop(step, GT_BOX, [17.75, 46.5, 31.75, 60.5])
  np.testing.assert_array_equal(out, np.tile([0.0, 0.0, 0.5] + [1.0] * 25, (28, 1)))
  np.testing.assert_array_equal(_crop(MASK, GT_BOX, [200, 200, 250, 250]), 0.0)
  np.testing.assert_array_equal(_crop(MASK, GT_BOX, [-300, -300, -250, -250]), 0.0)


def test_crop_matches_official_transcription_float64():
  rng = np.random.default_rng(1)
  b, m, s = 2, 12, 112
  masks = rng.random((b, m, s, s))
  yx = rng.uniform(0, 300, (b, m, 2))
  boxes = np.concatenate([yx, yx + rng.uniform(1, 200, (b, m, 2))], axis=-1)
  size = boxes[..., 2:] - boxes[..., :2]
  # RoIs around the boxes: overlapping, inside, larger, outside, and a degenerate box.
  rois_yx = boxes[..., :2] + rng.uniform(-0.6, 0.9, (b, m, 2)) * size
  rois = np.concatenate([rois_yx, rois_yx + rng.uniform(0.05, 1.5, (b, m, 2)) * size], axis=-1)
  rois[0, 0] = boxes[0, 0]
  rois[1, 1, 2:] = rois[1, 1, :2]
  with jax.enable_x64(True):
    for offset in (0.5, 0.0):
      got = jax.jit(mask_targets.crop_mask_in_target_box, static_argnums=(3, 4))(
          jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(rois), 28, offset)
      np.testing.assert_allclose(got, _np_crop_mask_in_target_box(masks, boxes, rois, 28, offset),
                                 rtol=1e-12, atol=1e-12)


def test_foreground_selection_order_and_gather():
  rois = jnp.arange(6 * 4, dtype=jnp.float32).reshape(1, 6, 4)
  classes = jnp.array([[0, 3, 0, 5, 0, 0]])
  indices = jnp.array([[-1, 1, 0, 0, 0, 0]])
  gt_masks = jnp.stack([jnp.full((112, 112), 0.25), jnp.full((112, 112), 0.75)])[None]
  boxes = jnp.broadcast_to(jnp.array([0.0, 0.0, 100.0, 100.0]), (1, 6, 4))
  rois = jnp.broadcast_to(jnp.array([10.0, 10.0, 50.0, 50.0]), (1, 6, 4)) + jnp.arange(6.0)[
      None, :, None]
  out = mask_targets.sample_and_crop_foreground_masks(rois, boxes, classes, indices, gt_masks,
                                                      num_mask_samples_per_image=4,
                                                      mask_target_size=7)
  # Foreground in index order (1, 3), then the first background RoIs (0, 2).
  np.testing.assert_array_equal(out.rois[0, :, 0], [11.0, 13.0, 10.0, 12.0])
  np.testing.assert_array_equal(out.classes, [[3, 5, 0, 0]])
  assert out.masks.shape == (1, 4, 7, 7)
  # Index -1 (a background RoI without ground truth) reads row 0.
  np.testing.assert_allclose(out.masks[0, :, 3, 3], [0.75, 0.25, 0.25, 0.25], rtol=1e-6)
  with pytest.raises(ValueError, match='mask samples'):
    mask_targets.sample_and_crop_foreground_masks(rois, boxes, classes, indices, gt_masks, 8)


def test_sample_and_crop_matches_official_transcription_float64():
  rng = np.random.default_rng(2)
  b, n, g = 3, 40, 5
  gt_masks = rng.random((b, g, 112, 112))
  yx = rng.uniform(0, 300, (b, g, 2))
  gt = np.concatenate([yx, yx + rng.uniform(10, 200, (b, g, 2))], axis=-1)
  indices = rng.integers(0, g, (b, n))
  classes = np.where(rng.random((b, n)) < np.array([[0.2], [0.6], [0.0]]),
                     rng.integers(1, 91, (b, n)), 0)
  gt_boxes = gt[np.arange(b)[:, None], indices]
  rois = gt_boxes + rng.normal(0, 10, (b, n, 4))
  with jax.enable_x64(True):
    out = jax.jit(mask_targets.sample_and_crop_foreground_masks, static_argnums=(5, 6))(
        jnp.asarray(rois), jnp.asarray(gt_boxes), jnp.asarray(classes), jnp.asarray(indices),
        jnp.asarray(gt_masks), 16, 28)
  want = _np_sample_and_crop(rois, gt_boxes, classes, indices, gt_masks, 16, 28)
  np.testing.assert_array_equal(out.rois, want[0])
  np.testing.assert_array_equal(out.classes, want[1])
  np.testing.assert_allclose(out.masks, want[2], rtol=1e-12, atol=1e-12)


def test_pipeline_shapes_and_gt_roi_targets():
  # RoI sampler -> mask targets at the official sizes; the appended gt boxes are foreground RoIs
  # whose targets are their own crops at every 4th pixel.
  rng = np.random.default_rng(3)
  gt = jnp.array([[[10.0, 20.0, 66.0, 76.0], [100, 100, 212, 156]] + [[-1.0] * 4] * 3] * 2)
  classes = jnp.array([[4, 9, -1, -1, -1]] * 2)
  masks = jnp.asarray(np.concatenate([rng.random((2, 2, 112, 112)),
                                      -np.ones((2, 3, 112, 112))], axis=1), jnp.float32)
  proposals = jnp.asarray(rng.uniform(0, 300, (2, 1000, 4)), jnp.float32)
  proposals = jnp.concatenate([jnp.minimum(proposals[..., :2], proposals[..., 2:]),
                               jnp.maximum(proposals[..., :2], proposals[..., 2:])], axis=-1)

  def pipeline(key):
    s = roi_sampler.sample_rois(key, proposals, gt, classes)
    return mask_targets.sample_and_crop_foreground_masks(s.rois, s.gt_boxes, s.classes,
                                                         s.gt_indices, masks)
  out = jax.jit(pipeline)(jax.random.key(0))
  assert out.rois.shape == (2, 128, 4) and out.classes.shape == (2, 128)
  assert out.masks.shape == (2, 128, 28, 28) and out.masks.dtype == jnp.float32
  for b in range(2):
    for row, cls in ((0, 4), (1, 9)):
      slot = np.where((np.asarray(out.rois[b]) == np.asarray(gt[b, row])).all(-1))[0]
      assert len(slot) == 1 and out.classes[b, slot[0]] == cls
      np.testing.assert_allclose(out.masks[b, slot[0]], masks[b, row, 2::4, 2::4], atol=1e-6)
