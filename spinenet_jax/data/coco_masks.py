"""Instance masks in COCO encodings: exact polygons, rasterization, RLE, decoding, tight boxes.

`rasterize` is pycocotools' own rasterization (what COCOeval uses), so a polygon made by
`mask_polygons` turns back into exactly its mask. COCO unions a shape's polygons and cannot express
holes, so masks with holes are split into hole-free pieces first. `segmentation_mask` decodes any
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


def _trace_loops(mask: np.ndarray) -> list[np.ndarray]:
  """Boundary loops [K, 2] (x, y pixel corners) of `mask`; outer loops clockwise on screen.

  Every pixel edge between foreground and background becomes a directed edge with the foreground on
  its right; edges are chained, turning towards the foreground where two pixels touch diagonally.
  """
  m = np.pad(mask, 1)
  fg = m[1:-1, 1:-1]
  r, c = np.nonzero(fg & ~m[:-2, 1:-1])          # top edges: (c, r) -> (c + 1, r)
  edges = [np.stack([c, r, c + 1, r], 1)]
  r, c = np.nonzero(fg & ~m[1:-1, 2:])           # right edges
  edges.append(np.stack([c + 1, r, c + 1, r + 1], 1))
  r, c = np.nonzero(fg & ~m[2:, 1:-1])           # bottom edges
  edges.append(np.stack([c + 1, r + 1, c, r + 1], 1))
  r, c = np.nonzero(fg & ~m[1:-1, :-2])          # left edges
  edges.append(np.stack([c, r + 1, c, r], 1))
  return _chain(np.concatenate(edges).tolist())


def _chain(edges: list[list[int]]) -> list[np.ndarray]:
  """Chains directed unit edges [x0, y0, x1, y1] into closed loops of corner vertices."""
  starts: dict[tuple[int, int], list[int]] = {}
  for i, (x0, y0, _, _) in enumerate(edges):
    starts.setdefault((x0, y0), []).append(i)
  used = [False] * len(edges)
  loops = []
  for first in range(len(edges)):
    if used[first]:
      continue
    loop, i = [], first
    while not used[i]:
      used[i] = True
      x0, y0, x1, y1 = edges[i]
      loop.append((x0, y0))
      i = _next_edge(edges, starts[(x1, y1)], used, x1 - x0, y1 - y0)
      if i is None:
        break
    loops.append(_drop_collinear(np.array(loop)))
  return loops


def _next_edge(edges, candidates, used, dx, dy):
  """The unused edge leaving a vertex; the right turn (towards the foreground) wins a tie."""
  free = [j for j in candidates if not used[j]]
  for j in free:
    if (edges[j][2] - edges[j][0], edges[j][3] - edges[j][1]) == (-dy, dx):
      return j
  return free[0] if free else None


def _drop_collinear(loop: np.ndarray) -> np.ndarray:
  """Keeps only the corners of a closed loop of unit steps."""
  prev = np.roll(loop, 1, axis=0)
  nxt = np.roll(loop, -1, axis=0)
  a, b = loop - prev, nxt - loop
  return loop[a[:, 0] * b[:, 1] != a[:, 1] * b[:, 0]]


def _signed_area(loop: np.ndarray) -> float:
  x, y = loop[:, 0], loop[:, 1]
  return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def as_polygon(loop: np.ndarray) -> list[float]:
  return [float(v) for v in loop.reshape(-1)]


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
  """COCO polygons whose pycocotools rasterisation is exactly `mask` (bool [H, W], non-empty).

  Outer pixel boundaries are traced; where the mask has holes (which unioned polygons cannot
  express) it is cut at the first column holding a hole pixel and each side is traced again.
  """
  x, y, w, h = (int(v) for v in tight_bbox(mask))
  polygons = _crop_polygons(mask[y:y + h, x:x + w])
  return [[v + (y if k % 2 else x) for k, v in enumerate(p)] for p in polygons]


def _crop_polygons(mask: np.ndarray, depth: int = 0) -> list[list[float]]:
  height, width = mask.shape
  outer = [l for l in _trace_loops(mask) if len(l) >= 4 and _signed_area(l) > 0]
  polygons = [as_polygon(l) for l in outer]
  filled = rasterize(polygons, height, width) if polygons else np.zeros_like(mask)
  if np.array_equal(filled, mask):
    return polygons
  holes = filled & ~mask
  if depth > 64 or not holes.any() or (mask & ~filled).any():
    return _run_rectangles(mask)
  col = int(np.nonzero(holes.any(axis=0))[0][0])
  left, right = mask.copy(), mask.copy()
  left[:, col:] = False
  right[:, :col] = False
  return [p for part in (left, right) if part.any() for p in _crop_polygons(part, depth + 1)]


def _run_rectangles(mask: np.ndarray) -> list[list[float]]:
  """Fallback: one rectangle polygon per horizontal run of each row (always exact)."""
  polygons = []
  for y in range(mask.shape[0]):
    row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
    d = np.diff(row)
    for x0, x1 in zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]):
      polygons.append([float(v) for v in (x0, y, x1, y, x1, y + 1, x0, y + 1)])
  return polygons


def uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO's crowd segmentation {'counts': [run lengths, column-major, 0s first], 'size': [H, W]}."""
  flat = np.asarray(mask, np.int8).reshape(-1, order='F')
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {'counts': counts, 'size': [int(mask.shape[0]), int(mask.shape[1])]}


def tight_bbox(mask: np.ndarray) -> list[float]:
  """COCO [x, y, width, height] of the pixels of a non-empty mask (as `mask.toBbox`)."""
  ys = np.nonzero(mask.any(axis=1))[0]
  xs = np.nonzero(mask.any(axis=0))[0]
  return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]
