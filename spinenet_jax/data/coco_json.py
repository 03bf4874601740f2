"""A COCO-format instances json: read, validate and normalize it before anything trains on it.

Users' jsons come from labelling tools, conversions and hand merges; each kind of fault seen in
them is either a `DatasetError` (it would make training or evaluation wrong: the message names the
file, the ids and the fix) or a counted and logged repair, summarized in one `Report`:

- category ids: 0 is refused (the classifier's column 0 is the background, as official: id-0
  objects would be padding), ids >= the detector's `num_classes` are refused (they would be learned
  as background), annotations of a category the json does not list are refused; non-contiguous ids
  are fine (the classifier has max id + 1 columns, as official for COCO) and the summary gives the
  id -> name table with the unused columns.
- image ids: two images with one id are refused, naming both files (merging them would move
  annotations between files); ids that are not all integers (strings such as 'cam1_0001') are mapped
  to 1..N in the json's order, the original id kept in `original_id` for results.
- missing optional keys default as COCO's own data: `iscrowd` 0, `area` the segmentation's area
  (the box's w h without one); annotation ids that are missing, 0 or repeated are renumbered
  (pycocotools reads id 0 as "unmatched"); annotations of unlisted images or with a malformed box
  are dropped.
- with the images folder (`images_dir`): each file's header gives its size and EXIF orientation;
  `image_geometry` decides how the json's pixel coordinates map onto the file's pixels (EXIF
  applied when the json is in display orientation, boxes rescaled when the file is an exact uniform
  rescale of the json's size), and the normalized boxes and areas are in the file's pixels.
- objects beyond `input.max_num_instances` in one image are counted per file and in total.

The normalized dataset is COCO json in memory: integer image ids, every annotation with `bbox`,
`area` and `iscrowd`, images with the file's `height` / `width` plus `original_id`, `orientation`
(the EXIF orientation to apply, 1: none), `scale` ((sy, sx) file pixels per json pixel) and
`json_size`; segmentations stay in the json's pixels. The dataset builder (`sources.CocoFolder`)
stores examples from it and the COCO evaluator scores against it, so training, evaluation and
saved results agree on ids and pixels.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable
from typing import NamedTuple

from PIL import Image

log = logging.getLogger(__name__)
EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)         # EXIF orientations that swap width and height
MAX_LISTED = 10                    # offending ids listed per problem in a message
DROPPED_FILES = 'images dropped: missing or unreadable file'
DROPPED_BOXES = 'annotations dropped: malformed or empty bbox'


class DatasetError(ValueError):
  """The dataset would train or evaluate wrongly; the message names the file, ids and the fix."""


@dataclasses.dataclass
class Report:
  """What validation found in one json: sizes, categories, and named counts of repairs."""
  json_path: str
  images: int = 0
  annotations: int = 0
  categories: dict[int, str] = dataclasses.field(default_factory=dict)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  errors: list[str] = dataclasses.field(default_factory=list)

  def count(self, what: str, n: int = 1) -> None:
    self.counts[what] += n

  def note(self, what: str, level: int, message: str, *args) -> None:
    """Counts `what` and logs the message for its first MAX_LISTED occurrences only: a json with
    100k bad entries gets ten lines and a count, not 100k lines."""
    self.counts[what] += 1
    if self.counts[what] <= MAX_LISTED:
      log.log(level, message, *args)
    elif self.counts[what] == MAX_LISTED + 1:
      log.log(level, '... (further "%s" not logged; the summary counts them)', what)

  def summary(self, num_classes: int | None = None) -> str:
    """A few lines a user reads: sizes, the category table, each repair with its count."""
    ids = sorted(self.categories)
    table = ', '.join(f'{i} {self.categories[i]!r}' for i in ids[:30])
    if len(ids) > 30:
      table += f', ... ({len(ids)} in all)'
    lines = [f'{self.json_path}: {self.images} images, {self.annotations} objects, '
             f'{len(ids)} categories: {table}']
    if ids and num_classes:
      unused = num_classes - 1 - len(ids)
      lines.append(f'  classifier: {num_classes} columns (0: background, 1..{num_classes - 1}: '
                   f'the category ids){f"; {unused} ids unused" if unused > 0 else ""}')
    lines += [f'  {what}: {n}' for what, n in sorted(self.counts.items())]
    return '\n'.join(lines)


# Reading


def check_paths(json_path: str, images_dir: str | None = None) -> None:
  """FileNotFoundError naming the json or images folder that does not exist."""
  if images_dir is not None and not os.path.isdir(images_dir):
    raise FileNotFoundError(f'images directory not found: {images_dir}')
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f'annotation file not found: {json_path}')


def read(json_path: str) -> dict:
  """The json as a dict; FileNotFoundError / DatasetError naming the file and what is wrong."""
  check_paths(json_path)
  with open(json_path, 'rb') as f:
    try:
      dataset = json.load(f)
    except ValueError as e:
      raise DatasetError(f'{json_path} is not valid json: {e}') from e
  if not isinstance(dataset, dict):
    raise DatasetError(f'{json_path}: a COCO instances json is an object with "images", '
                       f'"annotations" and "categories"; this one is a {type(dataset).__name__}.')
  missing = [k for k in ('images', 'annotations', 'categories')
             if not isinstance(dataset.get(k), list)]
  if missing:
    raise DatasetError(f'{json_path}: no list {" or ".join(repr(k) for k in missing)} (a COCO '
                       'instances json has "images", "annotations" and "categories").')
  return dataset


def listed(values: Iterable) -> str:
  """The first MAX_LISTED values, comma separated, and how many more."""
  values = list(values)
  more = f' and {len(values) - MAX_LISTED} more' if len(values) > MAX_LISTED else ''
  return ', '.join(str(v) for v in values[:MAX_LISTED]) + more


# Categories


def _categories(dataset: dict, report: Report, num_classes: int | None,
                num_classes_key: str) -> dict[int, str]:
  categories = {}
  for c in dataset['categories']:
    cid = c.get('id') if isinstance(c, dict) else None
    if not isinstance(cid, int) or isinstance(cid, bool):
      report.errors.append(f'category {c!r} has no integer "id".')
      continue
    name = str(c.get('name', cid))
    if cid in categories:
      report.errors.append(f'category id {cid} is listed twice, as {categories[cid]!r} and '
                           f'{name!r}: give each category its own id.')
    categories[cid] = name
  if 0 in categories or any(i < 0 for i in categories):
    report.errors.append(
        f'category id {min(categories)} ({categories[min(categories)]!r}): ids must be >= 1, as '
        'column 0 of the classifier is the background (id-0 objects would be taken for '
        'padding). Shift every category id up (in "categories" and each annotation\'s '
        f'"category_id") by {1 - min(categories)}, so ids run from 1.')
  if num_classes is not None and categories and max(categories) >= num_classes:
    beyond = sorted(i for i in categories if i >= num_classes)
    report.errors.append(
        f'category id(s) {listed(beyond)} ({", ".join(repr(categories[i]) for i in beyond[:3])})'
        f' do not fit a classifier of {num_classes_key}={num_classes} (ids 1..{num_classes - 1}):'
        f' their objects would be learned as background. Set {num_classes_key}='
        f'{max(categories) + 1} (max id + 1).')
  report.categories = dict(sorted(categories.items()))
  return report.categories


# Images


def _image_ids(images: list, report: Report) -> dict:
  """{json image id: int id}; errors for missing keys and one id on two files."""
  ids = [info.get('id') if isinstance(info, dict) else None for info in images]
  integral = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
  if not integral:
    report.count('image ids mapped to integers (originals kept for results)', len(ids))
  files = collections.defaultdict(list)
  for info, image_id in zip(images, ids):
    if image_id is None or not isinstance(info.get('file_name'), str):
      report.errors.append(f'image entry {info!r} lacks "id" or "file_name".')
      continue
    try:
      files[image_id].append(info['file_name'])
    except TypeError:
      report.errors.append(f'image {info["file_name"]}: id {image_id!r} is not a number or string.')
  for image_id, names in files.items():
    if len(names) > 1:
      report.errors.append(
          f'image id {image_id!r} is used by {len(names)} files: {listed(names)}. Give each file '
          'its own id (and its annotations that id); this commonly follows a merge of two jsons.')
  if integral:
    return {i: i for i in files}
  return {i: n for n, i in enumerate(files, start=1)}


class Geometry(NamedTuple):
  """How a json's pixel coordinates map onto an image file's (see `image_geometry`)."""
  size: tuple[int, int]            # (height, width) of the image as used
  apply_exif: bool                 # apply the EXIF orientation when decoding
  scale: tuple[float, float]       # (sy, sx): used pixels per json pixel
  kind: str | None = None          # what was noticed, a key of GEOMETRY_NOTES (None: nothing)
  note: str = ''                   # the detail, for the log


GEOMETRY_NOTES = {
    'exif_applied': 'EXIF orientation applied (json in display orientation)',
    'exif_ignored': 'EXIF orientation ignored (json matches the stored pixels)',
    'no_size': 'no height / width in the json (the file size is used)',
    'rescaled': 'files rescaled from the json size (boxes rescaled)',
    'size_mismatch': 'files whose size differs from the json, not a rescale (coordinates kept)',
}


def image_geometry(json_size: tuple, raw_size: tuple[int, int], orientation: int) -> Geometry:
  """How a json's pixels map onto an image file's.

  `json_size` (height, width) as the json gives it (entries may be None); `raw_size` the stored
  pixels' (height, width); `orientation` the EXIF orientation (1: none):
  - the json matches the display orientation: EXIF applied (phones store rotated pixels);
  - the json matches the stored pixels: EXIF ignored (the tool labelled the stored pixels);
  - the file is an exact uniform rescale of the json's size (each side rounded to whole pixels):
    coordinates are scaled;
  - otherwise the file's size is used and the json's coordinates taken as its pixels.
  """
  swap = orientation in _TRANSPOSED
  raw_size = tuple(raw_size)
  display = (raw_size[1], raw_size[0]) if swap else raw_size
  json_size = tuple(json_size)
  if orientation != 1 and json_size == display:
    return Geometry(display, True, (1.0, 1.0), 'exif_applied', f'EXIF orientation {orientation}')
  if json_size == raw_size:
    if orientation != 1:
      return Geometry(raw_size, False, (1.0, 1.0), 'exif_ignored',
                      f'EXIF orientation {orientation}, json size {json_size}')
    return Geometry(raw_size, False, (1.0, 1.0))
  apply = orientation != 1
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
             for v in json_size):
    return Geometry(display, apply, (1.0, 1.0), 'no_size', f'json size {json_size}')
  detail = f'file {display[0]}x{display[1]}, json {json_size[0]}x{json_size[1]}'
  if _uniform_rescale(json_size, display):
    scale = (display[0] / json_size[0], display[1] / json_size[1])
    return Geometry(display, apply, scale, 'rescaled', detail)
  return Geometry(display, apply, (1.0, 1.0), 'size_mismatch', detail)


def _uniform_rescale(json_size: tuple, size: tuple[int, int]) -> bool:
  """True when one factor s maps the json size to `size`, each side rounded to whole pixels."""
  for s in (size[0] / json_size[0], size[1] / json_size[1]):
    if all(abs(j * s - n) <= 0.5 + 1e-9 for j, n in zip(json_size, size)):
      return True
  return False


def read_header(path: str) -> tuple[tuple[int, int], int] | str:
  """((height, width) of the stored pixels, EXIF orientation) from the file's header, or why it
  cannot be read. Cheap: nothing is decoded."""
  try:
    with Image.open(path) as image:
      orientation = image.getexif().get(EXIF_ORIENTATION, 1)
      return (image.height, image.width), int(orientation) if orientation in range(1, 9) else 1
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    return str(e) or type(e).__name__


# Annotations


def _box(bbox) -> list[float] | None:
  if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
    return None
  try:
    box = [float(v) for v in bbox]
  except (TypeError, ValueError):
    return None
  if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
    return None
  return box


def _segmentation_area(segmentation, height, width) -> float | None:
  if not segmentation or not height or not width:
    return None
  from spinenet_jax.data import coco_masks   # pycocotools only when an area is missing
  try:
    return float(coco_masks.segmentation_mask(segmentation, int(height), int(width)).sum())
  except (ValueError, TypeError):
    return None


def _annotation(ann: dict, image: dict, json_size: tuple, report: Report) -> dict | None:
  box = _box(ann.get('bbox'))
  if box is None:
    report.note(DROPPED_BOXES, logging.WARNING,
                '%s: annotation %s dropped: bbox %r is not [x, y, w, h] with w, h > 0',
                image['file_name'], ann.get('id'), ann.get('bbox'))
    return None
  out = dict(ann, image_id=image['id'], bbox=box)
  if 'iscrowd' not in ann:
    report.count('iscrowd missing: 0 (COCO default)')
    out['iscrowd'] = 0
  if not isinstance(ann.get('area'), (int, float)):
    area = _segmentation_area(ann.get('segmentation'), *json_size)
    report.count('area missing: from the segmentation' if area is not None else
                 'area missing: from the box (w h)')
    out['area'] = area if area is not None else box[2] * box[3]
  sy, sx = image['scale']
  if (sy, sx) != (1.0, 1.0):
    out['bbox'] = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
    out['area'] = float(out['area']) * sx * sy
  return out


def _count_cut(objects: dict[int, list[dict]], images: dict[int, dict],
               max_num_instances: int, report: Report) -> None:
  """Counts, per file and in total, the objects `input.max_num_instances` leaves out."""
  cut = {i: len(anns) - max_num_instances for i, anns in objects.items()
         if len(anns) > max_num_instances}
  for n, (image_id, extra) in enumerate(sorted(cut.items())):
    if n < MAX_LISTED:
      log.warning('%s: %d objects, %d beyond config.input.max_num_instances=%d are left out',
                  images[image_id]['file_name'], len(objects[image_id]), extra, max_num_instances)
  if cut:
    report.count(f'objects beyond config.input.max_num_instances={max_num_instances} (left out, '
                 f'in {len(cut)} images; raise the key to keep them)', sum(cut.values()))


# The whole json


def normalize(json_path: str, images_dir: str | None = None, *, num_classes: int | None = None,
              num_classes_key: str = 'num_classes', max_num_instances: int | None = None,
              require_objects: bool = False) -> tuple[dict, Report]:
  """(the normalized dataset, its report) of `json_path`; see the module docstring.

  `images_dir` given: image headers are read (size, EXIF orientation) and coordinates mapped
  onto the files' pixels; unreadable or missing files are dropped (counted, logged; the builder
  reports them too). `num_classes`: category ids must fit (the message names `num_classes_key`).
  `max_num_instances`: what it cuts is counted. `require_objects` (training): no object left is an
  error. Raises DatasetError listing every problem that would make results wrong (also when no
  image file can be read), and FileNotFoundError for a missing json or images folder.
  """
  check_paths(json_path, images_dir)
  dataset = read(json_path)
  report = Report(json_path)
  categories = _categories(dataset, report, num_classes, num_classes_key)
  images_in = [i for i in dataset['images'] if isinstance(i, dict)]
  id_map = _image_ids(images_in, report)
  if report.errors:
    _raise(report)
  images = {}
  for info in images_in:
    image = _image(info, id_map[info['id']], images_dir, report)
    if image is not None:
      images[image['id']] = image
  if images_in and not images:
    first = os.path.join(images_dir, images_in[0]['file_name'])
    raise DatasetError(f'{json_path}: none of its {len(images_in)} images can be read under '
                       f'{images_dir} (the first: {first}). "file_name" must be relative to the '
                       'images folder given.')
  annotations, objects = _annotations(dataset, id_map, images, categories, report)
  if report.errors:
    _raise(report)
  _renumber(annotations, report)
  if require_objects and not annotations:
    raise DatasetError(f'{json_path}: no object is left to train on ({len(images)} images, '
                       f'{len(dataset["annotations"])} annotations; see the warnings above).')
  if max_num_instances:
    _count_cut(objects, images, max_num_instances, report)
  report.images, report.annotations = len(images), len(annotations)
  normalized = {'images': list(images.values()), 'annotations': annotations,
                'categories': [{'id': i, 'name': n} for i, n in categories.items()]}
  return normalized, report


def _image(info: dict, image_id: int, images_dir: str | None, report: Report) -> dict | None:
  json_size = (info.get('height'), info.get('width'))
  image = {'id': image_id, 'file_name': info['file_name'], 'original_id': info['id'],
           'height': json_size[0], 'width': json_size[1], 'json_size': json_size,
           'orientation': 1, 'scale': (1.0, 1.0)}
  if images_dir is None:
    return image
  header = read_header(os.path.join(images_dir, info['file_name']))
  if isinstance(header, str):
    report.note(DROPPED_FILES, logging.WARNING, '%s: skipped, cannot read the file in %s: %s',
                info['file_name'], images_dir, header)
    return None
  geometry = image_geometry(json_size, *header)
  if geometry.kind:
    level = logging.WARNING if geometry.kind == 'size_mismatch' else logging.INFO
    report.note(GEOMETRY_NOTES[geometry.kind], level, '%s: %s: %s', info['file_name'],
                GEOMETRY_NOTES[geometry.kind], geometry.note)
  image.update(height=geometry.size[0], width=geometry.size[1], scale=geometry.scale,
               orientation=header[1] if geometry.apply_exif else 1)
  return image


def _annotations(dataset: dict, id_map: dict, images: dict, categories: dict,
                 report: Report) -> tuple[list[dict], dict[int, list[dict]]]:
  annotations, objects = [], collections.defaultdict(list)
  unknown_category, unknown_image = collections.defaultdict(list), collections.defaultdict(list)
  # An annotation's image_id of another type than the images' ids ("1" for 1) is the same image.
  by_text = {str(k): v for k, v in id_map.items()}
  for ann in dataset['annotations']:
    if not isinstance(ann, dict):
      report.errors.append(f'annotation {ann!r} is not an object.')
      continue
    raw = ann.get('image_id')
    image_id = id_map.get(raw) if _hashable(raw) else None
    if image_id is None and raw is not None and str(raw) in by_text:
      image_id = by_text[str(raw)]
      report.note('annotations whose image_id differs in type from the image id (matched as '
                  'text)', logging.INFO, 'annotation %s: image_id %r matched to image id %r',
                  ann.get('id'), raw, next(k for k in id_map if str(k) == str(raw)))
    if image_id is None:
      unknown_image[repr(raw)].append(ann.get('id'))
      continue
    if image_id not in images:
      report.note('annotations of images skipped (missing or unreadable file)', logging.INFO,
                  'annotation %s: its image (id %r) was skipped', ann.get('id'), raw)
      continue
    category = ann.get('category_id')
    if not _hashable(category) or category not in categories:
      unknown_category[repr(category)].append(ann.get('id'))
      continue
    out = _annotation(ann, images[image_id], images[image_id]['json_size'], report)
    if out is not None:
      annotations.append(out)
      objects[image_id].append(out)
  for category, ids in unknown_category.items():
    report.errors.append(
        f'{len(ids)} annotations (ids {listed(ids)}) have category_id {category}, which '
        f'"categories" does not list (ids {listed(categories)}). Add the category or fix the ids.')
  if unknown_image:
    ids = [i for v in unknown_image.values() for i in v]
    report.errors.append(
        f'{len(ids)} annotations (ids {listed(ids)}) have an image_id that no image lists '
        f'({listed(unknown_image)}): they would be lost. Fix their image_id or add the images.')
  return annotations, objects


def _renumber(annotations: list[dict], report: Report) -> None:
  """Ids 1..N when the json's are missing, not positive integers or repeated: pycocotools marks
  a matched detection by its ground truth's id, so an id 0 would read as unmatched."""
  ids = [a.get('id') for a in annotations]
  if all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids) and \
      len(set(ids)) == len(ids):
    return
  report.count('annotation ids renumbered 1..N (missing, not positive or repeated)',
               len(annotations))
  for n, ann in enumerate(annotations, start=1):
    ann['original_id'] = ann.get('id')
    ann['id'] = n


def _hashable(value) -> bool:
  try:
    hash(value)
  except TypeError:
    return False
  return True


def _raise(report: Report) -> None:
  problems = '\n'.join(f'  - {e}' for e in report.errors)
  raise DatasetError(f'{report.json_path}: {len(report.errors)} problem(s) to fix before '
                     f'training or evaluating on it:\n{problems}')


def log_report(report: Report, num_classes: int | None = None) -> None:
  log.info('Dataset check of %s', report.summary(num_classes))


def fingerprint(json_path: str, images_dir: str, images: Iterable[str], *extra) -> str:
  """A hex digest of the json's bytes, each listed image file's name, size and modification time,
  and `extra` settings: it changes whenever a prepared dataset would be stale."""
  import hashlib
  digest = hashlib.sha256()
  with open(json_path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  for name in images:
    try:
      st = os.stat(os.path.join(images_dir, name))
      digest.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    except OSError:
      digest.update(f'{name}\0missing\n'.encode())
  digest.update(repr(extra).encode())
  return digest.hexdigest()
