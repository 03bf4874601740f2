"""A deterministic synthetic detection dataset of coloured shapes, written in COCO format.

Demo training and the input-pipeline tests must run without downloading COCO, so this module draws a
small dataset from a seed: `<root>/<split>/images/<id>.png|jpg` and the standard instances json
`<root>/annotations/instances_<split>.json`. It is meant to exercise what real COCO exercises:

- **Categories** have non-contiguous ids (1, 2, 3, 5, 7, 8), so code that maps category ids to
  contiguous class indices is tested.
- **Images** are 96-320 px per side, non-square, on textured, noisy backgrounds (gradients, stripes,
  checkers, blotches). Most are RGB PNGs; a few are grayscale (mode 'L', PNG and JPEG), a few are
  RGB JPEGs and exactly one per split is an RGBA PNG (RGB carries the picture, alpha a vignette).
  About 8% of the images hold no object at all.
- **Objects** are shapes from ~6 px to half the image side, with random colours (always at least 50
  grey levels from what lies beneath, so grayscale copies stay learnable), shading, noise and
  sometimes stripes. Shapes may be cut by the image border.
- **Occlusion:** shapes are drawn in order, later over earlier. Every annotation describes the
  *visible* pixels: its mask, `area` (pixel count) and `bbox` (tight box of the mask, as COCO). An
  object with fewer than `MIN_VISIBLE_FRACTION` of its in-image pixels, or fewer than
  `MIN_VISIBLE_PIXELS`, left visible is dropped from the annotations (its few remaining pixels stay
  in the image as unlabelled clutter, as in real data).
- **Masks** of iscrowd=0 objects are the shape's own outline (a COCO polygon) when it is whole and
  inside the image, else the compressed RLE of its visible mask (`pycocotools.mask.encode`).
  Shapes are painted where pycocotools rasterises their polygons, so masks agree with the drawn
  pixels exactly.
- **Crowds:** about 15% of the images hold one cluster of 6-16 small shapes of a class, annotated
  once with iscrowd=1 and an uncompressed RLE (COCO's crowd format; equal to `mask.encode`).

Image `i` is drawn from `numpy.random.default_rng([seed, i])`, so the same seed gives byte-identical
json and identical pixels (and files: PNG and JPEG encoding are deterministic for one PIL build).
JPEG files hold the rendered pixels after lossy compression; annotations describe the rendering. A
manifest with the parameters and a content hash, written last, makes `generate` idempotent.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import re

import numpy as np
from PIL import Image

# Re-exported: the mask encodings live in coco_masks.
from spinenet_jax.data.coco_masks import (
  as_polygon,
  encode,
  rasterize,
  tight_bbox,
  uncompressed_rle,
)

# 2: segmentations of occluded or cut objects are RLE, not traced polygons (same masks, boxes,
# areas and images as 1).
GENERATOR_VERSION = 2
CATEGORIES: tuple[dict, ...] = (
  {'id': 1, 'name': 'circle', 'supercategory': 'round'},
  {'id': 2, 'name': 'square', 'supercategory': 'polygon'},
  {'id': 3, 'name': 'triangle', 'supercategory': 'polygon'},
  {'id': 5, 'name': 'ellipse', 'supercategory': 'round'},
  {'id': 7, 'name': 'cross', 'supercategory': 'polygon'},
  {'id': 8, 'name': 'star', 'supercategory': 'polygon'},
)
DEFAULT_SPLITS: dict[str, tuple[int, int]] = {'train': (256, 0), 'val': (64, 1)}  # (images, seed)
MIN_VISIBLE_FRACTION = 0.2
MIN_VISIBLE_PIXELS = 8
MIN_CONTRAST = 50.0  # grey levels between a shape's colour and the mean of what it covers

_MIN_SIZE = {'circle': 6, 'square': 6, 'triangle': 8, 'ellipse': 8, 'cross': 10, 'star': 12}
_CROWD_SHAPES = ('circle', 'square', 'triangle')
_FILE_NAME = re.compile(r'^\d{12}\.(png|jpg)$')
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # PIL's RGB -> L weights


def category_names() -> dict[int, str]:
  """{category id: name}, e.g. {1: 'circle', 2: 'square', ..., 8: 'star'}."""
  return {c['id']: c['name'] for c in CATEGORIES}


# Drawing


def _outline(rng: np.random.Generator, name: str, size: float, cx: float, cy: float) -> np.ndarray:
  """[K, 2] outline of a shape whose circumscribed circle has diameter `size`, randomly rotated."""
  r = size / 2.0
  if name in ('circle', 'ellipse'):
    n = int(np.clip(size * 1.5, 12, 64))
    t = np.arange(n) * 2 * np.pi / n
    ry = r * (rng.uniform(0.35, 0.6) if name == 'ellipse' else 1.0)
    points = np.stack([r * np.cos(t), ry * np.sin(t)], 1)
  elif name in ('square', 'triangle'):
    n = 4 if name == 'square' else 3
    t = np.arange(n) * 2 * np.pi / n
    points = np.stack([r * np.cos(t), r * np.sin(t)], 1)
  elif name == 'star':
    t = np.arange(10) * np.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    points = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
  else:  # cross: a plus sign with arms of half-width a
    a = r * 0.35
    q = [(a, -a), (r, -a), (r, a)]
    points = np.array([p for k in range(4) for p in _rot90(q, k)], np.float64)
  angle = rng.uniform(0, 2 * np.pi)
  rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  return np.round(points @ rot.T + [cx, cy], 2)


def _rot90(points, k):
  for _ in range(k):
    points = [(-y, x) for x, y in points]
  return points


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
  """[H, W] bilinear interpolation of a coarse uniform grid (blotches of about `cell` px)."""
  grid = rng.random((height // cell + 2, width // cell + 2))
  y, x = np.arange(height) / cell, np.arange(width) / cell
  y0, x0 = y.astype(int), x.astype(int)
  fy, fx = (y - y0)[:, None], (x - x0)[None, :]
  top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
  bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Float [H, W, 3] textured background: gradient, stripes, checker or blotches, plus noise."""
  c1, c2 = rng.uniform(0, 255, (2, 3))
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  along = xx * math.cos(angle) + yy * math.sin(angle)
  kind = int(rng.integers(4))
  if kind == 0:
    t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
  elif kind == 1:
    t = (0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(6, 40))) * rng.uniform(0.2, 0.6)
  elif kind == 2:
    cell = int(rng.integers(6, 33))
    t = ((xx // cell + yy // cell) % 2) * rng.uniform(0.2, 0.5)
  else:
    t = _smooth_noise(rng, height, width, int(rng.integers(12, 48)))
  image = (c1 + t[..., None] * (c2 - c1)).astype(np.float32)
  return image + rng.standard_normal(image.shape, np.float32) * np.float32(rng.uniform(3, 12))


def _pick_color(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
  """A random RGB colour at least MIN_CONTRAST grey levels from the mean of `beneath` [N, 3]."""
  luma = float(np.clip(beneath, 0, 255).mean(axis=0) @ _LUMA)
  for _ in range(16):
    color = rng.uniform(0, 255, 3)
    if abs(float(color @ _LUMA) - luma) >= MIN_CONTRAST:
      return color
  return np.full(3, 0.0 if luma > 127.5 else 255.0)


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, color: np.ndarray):
  """Fills `mask` with `color`, a linear shading, noise and sometimes stripes of a nearby colour."""
  ys, xs = np.nonzero(mask)
  angle = rng.uniform(0, 2 * np.pi)
  along = xs * math.cos(angle) + ys * math.sin(angle)
  shade = (along - along.mean()) / (float(np.ptp(along)) + 1.0) * rng.uniform(0, 50)
  values = color + shade[:, None] + rng.normal(0, 4, (len(ys), 3))
  if rng.random() < 0.25:
    stripes = np.sin(2 * np.pi * along / rng.uniform(3, 10)) > 0
    values[stripes] += rng.uniform(-40, 40, 3)
  canvas[ys, xs] = values


@dataclasses.dataclass
class _Drawn:
  category_id: int
  iscrowd: int
  area: int                      # in-image pixels when drawn
  outline: list[float] | None    # the shape's own polygon, when it lies wholly inside the image


def _draw_shape(rng: np.random.Generator, canvas: np.ndarray) -> tuple[_Drawn, np.ndarray] | None:
  """Draws one random shape; None when it would cover no pixel."""
  height, width = canvas.shape[:2]
  category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
  low = _MIN_SIZE[category['name']]
  high = max(low, 0.5 * min(height, width))
  size = math.exp(rng.uniform(math.log(low), math.log(high)))
  cx, cy = rng.uniform(0, width), rng.uniform(0, height)
  points = _outline(rng, category['name'], size, cx, cy)
  polygon = [float(v) for v in points.reshape(-1)]
  mask = rasterize([polygon], height, width)
  if not mask.any():
    return None
  _paint(rng, canvas, mask, _pick_color(rng, canvas[mask]))
  inside = points.min() >= 0 and points[:, 0].max() <= width and points[:, 1].max() <= height
  return _Drawn(category['id'], 0, int(mask.sum()), polygon if inside else None), mask


def _draw_crowd(rng: np.random.Generator, canvas: np.ndarray) -> tuple[_Drawn, np.ndarray] | None:
  """Draws a cluster of 6-16 small shapes of one class, to be annotated once as a crowd."""
  height, width = canvas.shape[:2]
  name = _CROWD_SHAPES[int(rng.integers(len(_CROWD_SHAPES)))]
  spread = rng.uniform(6, max(6.0, 0.15 * min(height, width)))
  cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
  union = np.zeros((height, width), bool)
  color = None
  for _ in range(int(rng.integers(6, 17))):
    x, y = rng.normal([cx, cy], spread)
    mask = rasterize([as_polygon(_outline(rng, name, rng.uniform(6, 11), x, y))], height, width)
    if not mask.any():
      continue
    color = _pick_color(rng, canvas[mask]) if color is None else color
    _paint(rng, canvas, mask, np.clip(color + rng.uniform(-25, 25, 3), 0, 255))
    union |= mask
  if not union.any():
    return None
  category_id = next(c['id'] for c in CATEGORIES if c['name'] == name)
  return _Drawn(category_id, 1, int(union.sum()), None), union


@dataclasses.dataclass
class RenderedImage:
  """One drawn image before encoding, with its COCO annotations (no `id` / `image_id` yet)."""
  pixels: np.ndarray        # uint8 [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] L
  mode: str                 # PIL mode: 'RGB', 'RGBA' or 'L'
  annotations: list[dict]
  owner: np.ndarray         # int32 [H, W]: index of the annotation drawn on top, -1 background,
                            # -2 the remnants of dropped (almost hidden) objects


def render_image(seed: int, index: int, *, mode: str = 'RGB', empty: bool = False,
                 crowd: bool = False, min_side: int = 96, max_side: int = 320,
                 max_objects: int = 12) -> RenderedImage:
  """Draws image `index` of the stream of `seed` (independent of the other images)."""
  rng = np.random.default_rng([seed, index])
  height, width = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
  canvas = _background(rng, height, width)
  owner = np.full((height, width), -1, np.int32)
  count = 0 if empty else int(rng.integers(1, max_objects + 1))
  crowd_at = int(rng.integers(count + 1)) if crowd else -1
  drawn = []
  for k in range(count + int(crowd)):
    result = _draw_crowd(rng, canvas) if k == crowd_at else _draw_shape(rng, canvas)
    if result is not None:
      owner[result[1]] = len(drawn)
      drawn.append(result[0])
  annotations, owner = _annotate(drawn, owner)
  return RenderedImage(_finish(rng, canvas, mode), mode, annotations, owner)


def _annotate(drawn: list[_Drawn], owner: np.ndarray) -> tuple[list[dict], np.ndarray]:
  """COCO annotations of the visible parts; drops almost hidden objects (owner -2)."""
  annotations, final = [], np.where(owner < 0, owner, -2)
  for k, obj in enumerate(drawn):
    visible = owner == k
    area = int(visible.sum())
    if area < MIN_VISIBLE_PIXELS or area < MIN_VISIBLE_FRACTION * obj.area:
      continue
    final[visible] = len(annotations)
    annotations.append(_annotation(obj, visible, area))
  return annotations, final


def _annotation(obj: _Drawn, visible: np.ndarray, area: int) -> dict:
  if obj.iscrowd:
    segmentation = uncompressed_rle(visible)
  elif obj.outline is not None and area == obj.area:
    segmentation = [obj.outline]
  else:
    segmentation = encode(visible)
  return {'segmentation': segmentation, 'area': float(area), 'iscrowd': obj.iscrowd,
          'bbox': tight_bbox(visible), 'category_id': obj.category_id}


def _finish(rng: np.random.Generator, canvas: np.ndarray, mode: str) -> np.ndarray:
  """uint8 pixels of the float canvas in PIL `mode` (RGBA: the RGB picture and alpha vignette)."""
  rgb = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  if mode == 'RGB':
    return rgb
  if mode == 'L':
    return np.asarray(Image.fromarray(rgb, 'RGB').convert('L'))
  if mode != 'RGBA':
    raise ValueError(f'unsupported mode {mode!r}')
  height, width = rgb.shape[:2]
  yy, xx = np.mgrid[0:height, 0:width]
  d = ((yy / height - 0.5) ** 2 + (xx / width - 0.5) ** 2) * 2
  alpha = np.clip(np.round(255 - rng.uniform(40, 90) * d), 0, 255).astype(np.uint8)
  return np.concatenate([rgb, alpha[..., None]], axis=-1)


def encode_image(pixels: np.ndarray, mode: str, file_format: str) -> bytes:
  """PNG (lossless) or JPEG (quality 90) bytes of `pixels`; deterministic for a given PIL build."""
  buffer = io.BytesIO()
  image = Image.fromarray(pixels, mode)
  if file_format == 'png':
    image.save(buffer, format='PNG')
  else:
    image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


# Splits


@dataclasses.dataclass(frozen=True)
class _ImageSpec:
  mode: str
  file_format: str
  empty: bool
  crowd: bool


def _schedule(num_images: int, seed: int) -> list[_ImageSpec]:
  """Which images are RGBA / grayscale / JPEG / empty / crowded (each kind present when it fits)."""
  rng = np.random.default_rng([seed, num_images, 2**32])
  n = num_images
  special = ([('RGBA', 'png')] + [('L', 'png')] * max(1, round(0.04 * n))
             + [('RGB', 'jpg')] * max(1, round(0.06 * n)) + [('L', 'jpg')] * int(n >= 16))
  formats = [('RGB', 'png')] * n
  for i, kind in zip(rng.permutation(n), special):
    formats[i] = kind
  num_empty = max(1, round(0.08 * n)) if n >= 2 else 0
  num_crowd = max(1, round(0.15 * n)) if n >= 2 else 0
  order = rng.permutation(n).tolist()
  empty, crowd = set(order[:num_empty]), set(order[num_empty:num_empty + num_crowd])
  return [_ImageSpec(m, f, i in empty, i in crowd) for i, (m, f) in enumerate(formats)]


def _paths(root: str, split: str) -> tuple[str, str, str]:
  return (os.path.join(root, 'annotations', f'instances_{split}.json'),
          os.path.join(root, split, 'images'), os.path.join(root, split, 'manifest.json'))


def _digest(json_bytes: bytes, images: dict[str, bytes]) -> str:
  h = hashlib.sha256(json_bytes)
  for name in sorted(images):
    h.update(name.encode())
    h.update(hashlib.sha256(images[name]).digest())
  return h.hexdigest()


def _read(path: str) -> bytes | None:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError:
    return None


def _is_complete(root: str, split: str, params: dict) -> bool:
  """Whether a split with these parameters is on disk, with the content its manifest hashed."""
  json_path, images_dir, manifest_path = _paths(root, split)
  manifest, json_bytes = _read(manifest_path), _read(json_path)
  if manifest is None or json_bytes is None:
    return False
  try:
    manifest = json.loads(manifest)
    names = [image['file_name'] for image in json.loads(json_bytes)['images']]
  except (ValueError, KeyError, TypeError):
    return False
  if manifest.get('params') != params:
    return False
  images = {name: _read(os.path.join(images_dir, name)) for name in names}
  if any(data is None for data in images.values()):
    return False
  return _digest(json_bytes, images) == manifest.get('sha256')


def _write(path: str, data: bytes) -> None:
  """Writes through a temporary file, so that a reader never sees a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def generate(root: str, split: str, num_images: int, seed: int, *, min_side: int = 96,
             max_side: int = 320, max_objects: int = 12) -> str:
  """Writes split `split` (images and instances json) under `root`; returns the json path.

  Does nothing when the split is already there with the same parameters and intact content (the
  manifest, written last, records both). Image content depends on (seed, index, sizes), not on the
  split name: give different splits different seeds.
  """
  if num_images < 1 or seed < 0 or not 1 <= min_side <= max_side or max_objects < 1:
    raise ValueError('need num_images >= 1, seed >= 0, 1 <= min_side <= max_side, max_objects >= 1')
  params = {'generator_version': GENERATOR_VERSION, 'split': split, 'num_images': num_images,
            'seed': seed, 'min_side': min_side, 'max_side': max_side, 'max_objects': max_objects}
  json_path, images_dir, manifest_path = _paths(root, split)
  if _is_complete(root, split, params):
    return json_path
  for d in (os.path.dirname(json_path), images_dir):
    os.makedirs(d, exist_ok=True)
  if os.path.exists(manifest_path):
    os.remove(manifest_path)
  dataset, files = _build(split, num_images, seed, min_side, max_side, max_objects)
  _replace_images(images_dir, files)
  json_bytes = json.dumps(dataset, separators=(',', ':')).encode()
  _write(json_path, json_bytes)
  manifest = {'params': params, 'sha256': _digest(json_bytes, files), 'num_images': num_images,
              'num_annotations': len(dataset['annotations'])}
  _write(manifest_path, json.dumps(manifest, indent=1).encode())
  return json_path


def _build(split: str, num_images: int, seed: int, min_side: int, max_side: int,
           max_objects: int) -> tuple[dict, dict[str, bytes]]:
  """The COCO dataset dict and {file name: encoded image} of one split."""
  images, annotations, files = [], [], {}
  for index, spec in enumerate(_schedule(num_images, seed)):
    rendered = render_image(seed, index, mode=spec.mode, empty=spec.empty, crowd=spec.crowd,
                            min_side=min_side, max_side=max_side, max_objects=max_objects)
    image_id = index + 1
    name = f'{image_id:012d}.{spec.file_format}'
    files[name] = encode_image(rendered.pixels, rendered.mode, spec.file_format)
    height, width = rendered.pixels.shape[:2]
    images.append({'id': image_id, 'file_name': name, 'height': height, 'width': width})
    for ann in rendered.annotations:
      annotations.append({**ann, 'image_id': image_id, 'id': len(annotations) + 1})
  info = {'description': f'spinenet_jax synthetic shapes, split {split}, seed {seed}',
          'version': str(GENERATOR_VERSION), 'contributor': 'spinenet_jax.data.synthetic'}
  dataset = {'info': info, 'licenses': [], 'images': images, 'annotations': annotations,
             'categories': [dict(c) for c in CATEGORIES]}
  return dataset, files


def _replace_images(images_dir: str, files: dict[str, bytes]) -> None:
  """Writes the images and removes stale generated ones (only names this module writes)."""
  for name in os.listdir(images_dir):
    if _FILE_NAME.match(name) and name not in files:
      os.remove(os.path.join(images_dir, name))
  for name, data in files.items():
    _write(os.path.join(images_dir, name), data)


def generate_default(root: str) -> dict[str, str]:
  """Generates (or finds) the default splits: {'train': json path, 'val': json path}."""
  return {split: generate(root, split, num_images, seed)
          for split, (num_images, seed) in DEFAULT_SPLITS.items()}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='output folder')
  args = parser.parse_args(argv)
  for split, path in generate_default(args.root).items():
    print(f'{split}: {path}')


if __name__ == '__main__':
  main()
