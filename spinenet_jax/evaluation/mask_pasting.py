"""Instance masks pasted into the original image, as the official evaluation does
(`utils/mask_utils.paste_instance_masks`, after Detectron): each 28 x 28 mask is zero-padded by one
pixel, its box expanded by the same factor ((28 + 2) / 28), the padded mask resized to the
expanded box's integer size with OpenCV's bilinear `cv2.resize` (`resize_linear`, written out
here bit for bit: the stack has no OpenCV), thresholded at > 0.5 and placed in the image, clipped
to it. `paste_and_encode` gives the COCO RLEs of the pasted masks from their crops.
"""

from __future__ import annotations

import numpy as np

from spinenet_jax.data import coco_masks


def _source_positions(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(floor index [out], fraction [out]) of cv2's INTER_LINEAR sample positions along one axis:
  src = (dst + 0.5) in / out - 0.5, computed in double and rounded to float, as OpenCV does."""
  scale = in_size / out_size
  src = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  index = np.floor(src).astype(np.int64)
  return index, (src - index).astype(np.float32)


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """The horizontal pass: OpenCV clamps the position, weight 0 before the first and from the
  last source pixel on (the border repeats)."""
  index, frac = _source_positions(in_size, out_size)
  low = index < 0
  high = index >= in_size - 1
  index[low], frac[low] = 0, 0.0
  index[high], frac[high] = in_size - 1, 0.0
  return index, frac


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """float32 [height, width] bilinear resize of float32 [h, w], as `cv2.resize(image, (width,
  height))` (INTER_LINEAR) computes it in OpenCV's own code, bit for bit: rows first, then columns,
  in float32. The vertical pass clamps the two source rows but not their weights (at the top and
  bottom edges it sums the same row with weights 1 - f and f, which rounds differently from 1).

  OpenCV builds with Intel IPP (the opencv-python wheels) take IPP's resize for images of two or
  more rows, whose float32 weights give values up to about 2e-6 apart (in [0, 1]); a pasted mask
  can differ from this only at a pixel whose value lies within about 2e-6 of the 0.5 threshold.
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape
  if (h, w) == (height, width):
    return image.copy()
  xi, xf = _axis_weights(w, width)
  yi, yf = _source_positions(h, height)
  rows = image[:, xi] * (np.float32(1) - xf) + image[:, np.minimum(xi + 1, w - 1)] * xf
  top, bottom = rows[np.clip(yi, 0, h - 1)], rows[np.clip(yi + 1, 0, h - 1)]
  return top * (np.float32(1) - yf)[:, None] + bottom * yf[:, None]


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
  """[N, 4] [x, y, w, h] boxes -> [x0, y0, x1, y1] scaled about their centres (Detectron)."""
  w_half, h_half = boxes[:, 2] * 0.5, boxes[:, 3] * 0.5
  x_c, y_c = boxes[:, 0] + w_half, boxes[:, 1] + h_half
  w_half, h_half = w_half * scale, h_half * scale
  return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


def _pasted(padded: np.ndarray, box: np.ndarray, image_height: int, image_width: int
            ) -> tuple[np.ndarray, int, int]:
  """(uint8 crop, top, left): the thresholded mask of one padded mask in its expanded integer box
  [x0, y0, x1, y1], clipped to the image; the rest of the image is 0."""
  x0, y0, x1, y1 = (int(v) for v in box)
  w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
  pasted = (resize_linear(padded, w, h) > 0.5).astype(np.uint8)
  xa, xb = min(max(x0, 0), image_width), min(max(x1 + 1, 0), image_width)
  ya, yb = min(max(y0, 0), image_height), min(max(y1 + 1, 0), image_height)
  return pasted[ya - y0:yb - y0, xa - x0:xb - x0], ya, xa


def _padded_and_boxes(masks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """([N, mh + 2, mw + 2] masks zero-padded by one pixel, [N, 4] int32 expanded boxes)."""
  masks = np.asarray(masks, np.float32)
  _, mask_height, mask_width = masks.shape
  scale = max((mask_width + 2.0) / mask_width, (mask_height + 2.0) / mask_height)
  padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
  # In the boxes' own dtype (the official evaluator's are float32), then truncated to integers.
  boxes = np.asarray(boxes)
  boxes = boxes if boxes.dtype in (np.float32, np.float64) else boxes.astype(np.float64)
  return padded, expand_boxes(boxes, scale).astype(np.int32)


def paste_crops(masks: np.ndarray, boxes: np.ndarray, image_height: int, image_width: int
                ) -> list[tuple[np.ndarray, int, int]]:
  """The pasted masks as (uint8 {0, 1} crop [h, w], top, left) each, the rest of the image 0: the
  official paste without a full-image array per mask (drawing and RLEs need no more)."""
  padded, ref_boxes = _padded_and_boxes(masks, boxes)
  return [_pasted(padded[i], ref_boxes[i], image_height, image_width) for i in range(len(padded))]


def paste_instance_masks(masks: np.ndarray, boxes: np.ndarray, image_height: int,
                         image_width: int) -> np.ndarray:
  """uint8 {0, 1} [N, image_height, image_width] of [N, mh, mw] mask probabilities in the frames
  of [N, 4] boxes [x, y, w, h] (original-image pixels, COCO format)."""
  out = np.zeros((len(masks), image_height, image_width), np.uint8)
  for i, (crop, top, left) in enumerate(paste_crops(masks, boxes, image_height, image_width)):
    out[i, top:top + crop.shape[0], left:left + crop.shape[1]] = crop
  return out


def paste_and_encode(masks: np.ndarray, boxes: np.ndarray, image_height: int,
                     image_width: int) -> list[dict]:
  """The COCO compressed RLEs ({'size': [H, W], 'counts': str}) of `paste_instance_masks`, one per
  mask, built from each pasted crop without materializing the full image mask (the same RLE as
  `pycocotools.mask.encode` of it)."""
  return [coco_masks.encode_placed(crop, top, left, image_height, image_width)
          for crop, top, left in paste_crops(masks, boxes, image_height, image_width)]
