"""Mask pasting as the official evaluation (`paste_instance_masks`): OpenCV's bilinear resize on
hand-computed cases, the box expansion, clipping at the image edge."""

import numpy as np

from spinenet_jax.evaluation import mask_pasting


def test_resize_linear_is_opencvs_half_pixel_bilinear_with_repeated_border():
  # cv2.resize(np.float32([[0, 1]]), (4, 1)) == [[0, 0.25, 0.75, 1]]
  np.testing.assert_allclose(mask_pasting.resize_linear(np.float32([[0, 1]]), 4, 1),
                             [[0, 0.25, 0.75, 1]])
  # Downscale 4 -> 2: samples at 0.5 and 2.5 (means of pixel pairs).
  np.testing.assert_allclose(mask_pasting.resize_linear(np.float32([[0, 2, 4, 6]]), 2, 1),
                             [[1, 5]])
  # Rows then columns: a separable ramp stays separable.
  image = np.add.outer(np.arange(3.0), 10 * np.arange(3.0)).astype(np.float32)
  out = mask_pasting.resize_linear(image, 5, 4)
  cols = mask_pasting.resize_linear(10 * np.arange(3.0)[None].astype(np.float32), 5, 1)[0]
  rows = mask_pasting.resize_linear(np.arange(3.0)[:, None].astype(np.float32), 1, 4)[:, 0]
  np.testing.assert_allclose(out, np.add.outer(rows, cols), rtol=1e-6)


def test_a_full_mask_covers_its_box_and_nothing_outside_the_expanded_box():
  masks = np.ones((1, 28, 28), np.float32)
  box = np.array([[10.0, 20.0, 28.0, 14.0]])            # x, y, w, h
  out = mask_pasting.paste_instance_masks(masks, box, 60, 80)[0]
  # Expanded by 30/28 about the centre (24, 27): x 9..39, y 19.5..34.5 -> int 19..34.
  assert out[21:33, 11:37].all()
  ys, xs = np.nonzero(out)
  # By hand, x: the 30 padded columns resized to 31 (9..39); column 1 samples 0.952 of the mask,
  # column 29 samples 28.048 (0.952), columns 0 and 30 the zero border: x 10..38, the box's.
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 33, 10, 38)
  assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}


def test_a_box_past_the_image_edge_is_clipped():
  masks = np.ones((2, 28, 28), np.float32)
  boxes = np.array([[-10.0, -5.0, 30.0, 20.0], [70.0, 50.0, 40.0, 40.0]])
  out = mask_pasting.paste_instance_masks(masks, boxes, 60, 80)
  assert out.shape == (2, 60, 80)
  assert out[0, 0, 0] == 1 and out[0, 30:].sum() == 0
  assert out[1, -1, -1] == 1 and out[1, :45].sum() == 0
