"""Instance masks pasted into the original image, as the official evaluation does
(`utils/mask_utils.paste_instance_masks`, after Detectron): each 28 x 28 mask is zero-padded by one
pixel, its box expanded by the same factor ((28 + 2) / 28), the padded mask resized to the
expanded box's integer size with OpenCV's bilinear `cv2.resize` (`resize_linear`, written out
here: the stack has no OpenCV), thresholded at > 0.5 and placed in the image, clipped to it.
"""

from __future__ import annotations

import numpy as np


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(source index [out], weight of the next index [out]) of cv2's INTER_LINEAR along one axis:
  src = (dst + 0.5) in / out - 0.5 (computed in double, kept as float), clamped with weight 0
  before the first and from the last source pixel on (the border repeats)."""
  scale = in_size / out_size
  src = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  index = np.floor(src).astype(np.int64)
  frac = (src - index).astype(np.float32)
  low = index < 0
  high = index >= in_size - 1
  index[low], frac[low] = 0, 0.0
  index[high], frac[high] = in_size - 1, 0.0
  return index, frac


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """float32 [height, width] bilinear resize of float32 [h, w], as `cv2.resize(image, (width,
  height))` (INTER_LINEAR): rows are interpolated first, then columns, in float32."""
  image = np.asarray(image, np.float32)
  h, w = image.shape
  if (h, w) == (height, width):
    return image.copy()
  xi, xf = _axis_weights(w, width)
  yi, yf = _axis_weights(h, height)
  nxt = lambda i, n: np.minimum(i + 1, n - 1)  # noqa: E731
  rows = image[:, xi] * (np.float32(1) - xf) + image[:, nxt(xi, w)] * xf        # [h, width]
  return rows[yi] * (np.float32(1) - yf)[:, None] + rows[nxt(yi, h)] * yf[:, None]


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
  """[N, 4] [x, y, w, h] boxes -> [x0, y0, x1, y1] scaled about their centres (Detectron)."""
  w_half, h_half = boxes[:, 2] * 0.5, boxes[:, 3] * 0.5
  x_c, y_c = boxes[:, 0] + w_half, boxes[:, 1] + h_half
  w_half, h_half = w_half * scale, h_half * scale
  return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


def paste_instance_masks(masks: np.ndarray, boxes: np.ndarray, image_height: int,
                         image_width: int) -> np.ndarray:
  """uint8 {0, 1} [N, image_height, image_width] of [N, mh, mw] mask probabilities in the frames
  of [N, 4] boxes [x, y, w, h] (original-image pixels, COCO format)."""
  masks = np.asarray(masks, np.float32)
  n, mask_height, mask_width = masks.shape
  scale = max((mask_width + 2.0) / mask_width, (mask_height + 2.0) / mask_height)
  ref_boxes = expand_boxes(np.asarray(boxes, np.float64), scale).astype(np.int32)
  padded = np.zeros((mask_height + 2, mask_width + 2), np.float32)
  out = np.zeros((n, image_height, image_width), np.uint8)
  for i in range(n):
    padded[1:-1, 1:-1] = masks[i]
    x0, y0, x1, y1 = (int(v) for v in ref_boxes[i])
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    pasted = (resize_linear(padded, w, h) > 0.5).astype(np.uint8)
    xa, xb = min(max(x0, 0), image_width), min(max(x1 + 1, 0), image_width)
    ya, yb = min(max(y0, 0), image_height), min(max(y1 + 1, 0), image_height)
    out[i, ya:yb, xa:xb] = pasted[ya - y0:yb - y0, xa - x0:xb - x0]
  return out
