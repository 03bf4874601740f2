"""Instance masks in COCO encodings: rasterization, RLE, decoding, tight boxes (pycocotools).

`rasterize` is pycocotools' own rasterization of polygons (what COCOeval uses); `encode` and
`tight_bbox` are pycocotools' RLE encoding and its box. `uncompressed_rle` writes COCO's crowd
format, which pycocotools reads but does not write. `segmentation_mask` decodes any
COCO segmentation as `COCO.annToMask` does, but checks it first: json from the wild holds malformed
ones, and pycocotools reads some of those as garbage (an empty RLE string decodes to uninitialised
memory) instead of raising.
"""

from __future__ import annotations

import io
import math
import numbers
import warnings

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

_PYCOCOTOOLS_COPY_WARNING = "__array__ implementation doesn't accept a copy keyword"


def rasterize(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
  """Bool [H, W] union of COCO polygons, rasterised exactly as pycocotools (and COCOeval) does."""
  rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  return _decode(rle).astype(bool)


def _decode(rle: dict) -> np.ndarray:
  with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 deprecation on every call
    warnings.filterwarnings('ignore', _PYCOCOTOOLS_COPY_WARNING, DeprecationWarning)
    return mask_utils.decode(rle)


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
  """uint8 {0, 1} [H, W] of a COCO segmentation, equal to `COCO.annToMask` on valid input.

  Accepts polygons (a list of [x0, y0, x1, y1, ...], unioned), uncompressed RLE (crowds:
  {'counts': [int, ...], 'size': [H, W]}) and compressed RLE (counts a string). Polygons of fewer
  than 3 points are skipped: they cover no pixel (pycocotools would read a 4-number one as a box).
  Raises ValueError, saying why, for anything else (TypeError when it is neither a list nor a
  dict): coordinates not finite or further than an image size outside the image (pycocotools
  allocates memory in proportion to the polygon's length), an RLE whose size is not
  [height, width] or whose counts do not cover it exactly, ...
  """
  if isinstance(segmentation, list):
    polygons = [_polygon(p, max(height, width)) for p in segmentation]
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
      raise ValueError(f'no polygon of 3 or more points in {_short(segmentation)}')
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  elif isinstance(segmentation, dict):
    rle = _rle(segmentation, height, width)
  else:
    raise TypeError(f'segmentation is a {type(segmentation).__name__}, not polygons or RLE')
  try:
    mask = _decode(rle)
  except ValueError as e:  # pycocotools checks that compressed counts cover the image
    raise ValueError(f'undecodable RLE {_short(segmentation)}: {e}') from e
  if mask.shape != (height, width) or mask.max(initial=0) > 1:
    raise ValueError(f'RLE decodes to a corrupt mask {_short(segmentation)}')
  return mask


def _polygon(polygon, size: int) -> list[float]:
  if not isinstance(polygon, list) or len(polygon) % 2 or not all(
      isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
      for v in polygon):
    raise ValueError(f'malformed polygon {_short(polygon)}')
  if polygon and not -size <= min(polygon) <= max(polygon) <= 2 * size:
    raise ValueError(f'polygon far outside the image {_short(polygon)}')
  return [float(v) for v in polygon]


def _rle(segmentation: dict, height: int, width: int) -> dict:
  size, counts = segmentation.get('size'), segmentation.get('counts')
  if not isinstance(size, list) or size != [height, width]:
    raise ValueError(f'RLE size {size!r} is not the image size {[height, width]}')
  if isinstance(counts, list):
    if not all(isinstance(c, numbers.Integral) and c >= 0 for c in counts) or (
        sum(counts) != height * width):
      raise ValueError(f'RLE counts do not cover the {height}x{width} image: {_short(counts)}')
    return mask_utils.frPyObjects({'size': [height, width], 'counts': counts}, height, width)
  if isinstance(counts, str):
    counts = counts.encode('ascii', errors='replace')
  if not isinstance(counts, bytes) or not counts:
    raise ValueError(f'RLE counts {_short(counts)} are neither run lengths nor a string')
  return {'size': [height, width], 'counts': counts}


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


def png_mask(mask: np.ndarray) -> bytes:
  """Lossless PNG (8-bit grey, values 0 and 1) of a [H, W] mask, as the official tf.Examples."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(mask, np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def as_polygon(points: np.ndarray) -> list[float]:
  """The COCO polygon [x0, y0, x1, y1, ...] of [K, 2] vertices."""
  return [float(v) for v in points.reshape(-1)]


def _encode(mask: np.ndarray) -> dict:
  return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def encode(mask: np.ndarray) -> dict:
  """COCO compressed RLE {'size': [H, W], 'counts': str} of a [H, W] mask (`mask.encode`), exact.

  COCO polygons are unioned and cannot express holes; RLE is what COCO uses for any other mask
  (crowds, results), and `COCO.annToMask` decodes it to exactly `mask`.
  """
  rle = _encode(mask)
  return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO's crowd segmentation {'counts': [run lengths, column-major, 0s first], 'size': [H, W]}."""
  flat = np.asarray(mask, np.int8).reshape(-1, order='F')
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {'counts': counts, 'size': [int(mask.shape[0]), int(mask.shape[1])]}


def encode_placed(crop: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
  """`encode` of the [height, width] mask that is 0 except for `crop` [h, w] at (top, left), from
  the crop alone: a full-image mask per detection (100 per image at evaluation) would cost more
  than the rest of the evaluation. Exact: the same RLE as `encode` of the full mask."""
  crop = np.asarray(crop, np.int8)
  h, w = crop.shape
  # Run starts (+1) and ends (-1) down each crop column, as indices of the column-major image.
  edges = np.diff(np.pad(crop, ((1, 1), (0, 0))), axis=0).T          # [w, h + 1]
  cols, rows = np.nonzero(edges)
  at = (left + cols) * height + top + rows
  starts, ends = at[edges[cols, rows] > 0], at[edges[cols, rows] < 0]
  if len(starts):          # a run down to the bottom row continues at the top of the next column
    joined = starts[1:] == ends[:-1]
    starts = np.concatenate([starts[:1], starts[1:][~joined]])
    ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
  bounds = np.stack([starts, ends], axis=1).reshape(-1)
  counts = np.diff(np.concatenate([[0], bounds, [height * width]])).tolist()
  if len(counts) > 1 and counts[-1] == 0:     # ones up to the last pixel: no final zero run
    counts.pop()
  height, width = int(height), int(width)
  rle = mask_utils.frPyObjects({'size': [height, width], 'counts': counts}, height, width)
  return {'size': [height, width], 'counts': rle['counts'].decode('ascii')}


def tight_bbox(mask: np.ndarray) -> list[float]:
  """COCO [x, y, width, height] of the pixels of a non-empty mask (`mask.toBbox`)."""
  return [float(v) for v in mask_utils.toBbox(_encode(mask))]
