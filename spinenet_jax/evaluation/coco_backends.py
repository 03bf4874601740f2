"""COCO scoring (loadRes, evaluate, accumulate, summarize) with a chosen library.

`score()` runs the standard COCO detection protocol on a ground-truth dataset and detections in
COCO results format and returns the 12 numbers of pycocotools' `COCOeval.stats` and their summary
text. The backends:
- 'pycocotools': the reference (pure Python matching and accumulation, C masks and IoUs).
- 'hotcoco': hotcoco, everything in Rust; 30-70x faster on 5,000 images x 100 detections
  (docs/benchmarks.md). tests/test_coco_backends.py checks that its 12 numbers equal pycocotools'
  bit for bit, for boxes and masks, crowd regions, score ties and area-range boundaries included.
faster-coco-eval (1.8.0) is not offered: it is not exact. It computes precision as tp / (tp + fp)
where pycocotools divides by tp + fp + 2^-52, so its precision is 1.0 where pycocotools' is
0.9999999999999998 (one detection, a true positive), and its APs differ now and then in the last
bit; it is also slower than hotcoco (tools/benchmark_coco_eval.py times it for comparison).

Inputs are never modified: pycocotools writes into the dicts it is given (loadRes adds 'id',
'area', 'iscrowd' and a box polygon; evaluation adds 'ignore' and turns polygons into RLE), so it
gets shallow copies of every image, annotation and detection dict; hotcoco copies everything into
Rust itself. hotcoco prints warnings (detections of a category that is not in the ground truth,
categories without a name) straight to the process's stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

IOU_TYPES = ('bbox', 'segm')
NUM_STATS = 12
# Backend name -> (module imported, pip requirement that installs it).
BACKENDS = {
    'pycocotools': ('pycocotools.cocoeval', 'pycocotools==2.0.11'),
    'hotcoco': ('hotcoco', 'hotcoco==1.3.0'),
}

Loaded = tuple[Any, Any]                       # (ground-truth COCO, results COCO) of one library
Scored = tuple[np.ndarray, str]                # ([12] stats, summary text)


def score(groundtruth: dict, detections: list[dict], iou_type: str, image_ids: Sequence[int],
          backend: str = 'pycocotools', timings: dict[str, float] | None = None) -> Scored:
  """The 12 COCO metrics of `detections` against `groundtruth`, over `image_ids` only.

  Args:
    groundtruth: a COCO-format dataset: 'images' (each 'id', 'height', 'width'), 'annotations'
      (each 'id' (non-zero), 'image_id', 'category_id', 'bbox' [x, y, w, h] pixels, 'area' px²
      (what picks small / medium / large), 'iscrowd', and for 'segm' a 'segmentation': polygons or
      RLE, compressed or not) and 'categories' (each 'id'; only these are scored).
    detections: COCO results: 'image_id', 'category_id', 'score' and 'bbox' [x, y, w, h] pixels
      ('bbox') or 'segmentation' an RLE dict {'size': [h, w], 'counts': str} ('segm'). As in
      pycocotools, when 'segm' detections carry a 'bbox' too, a detection's area (what puts an
      unmatched one in or out of an area range) is its box's w h, not its mask's. Empty: every
      metric is 0 where there is ground truth.
    iou_type: 'bbox' or 'segm'.
    image_ids: the images scored (pycocotools' `params.imgIds`); detections and ground truth of
      other images are ignored.
    backend: a key of BACKENDS.
    timings: if given, receives 'load_s' (copies, indexing, loadRes) and 'evaluate_s' (evaluate,
      accumulate, summarize), wall seconds.

  Returns:
    stats: [12] float64, in `COCOeval.stats` order (AP, AP50, AP75, APs, APm, APl, AR1, AR10,
      AR100, ARs, ARm, ARl); -1 where there is no ground truth to score.
    summary: the 12 lines pycocotools' `summarize()` prints, newline-terminated.

  Raises:
    ValueError: unknown backend or iou_type, backend not installed (names the pip command), no
      image ids, or detections of images that are not in the ground truth.
  """
  load, evaluate = _backend(backend)
  _check_inputs(groundtruth, detections, iou_type, image_ids)
  start = time.perf_counter()
  coco_gt, coco_dt = load(groundtruth, detections)
  loaded = time.perf_counter()
  stats, summary = evaluate(coco_gt, coco_dt, iou_type, sorted(set(image_ids)))
  if timings is not None:
    timings.update(load_s=loaded - start, evaluate_s=time.perf_counter() - loaded)
  return np.asarray(stats, np.float64)[:NUM_STATS], summary


def available_backends() -> list[str]:
  """The names of BACKENDS whose library imports here."""
  names = []
  for name, (module, _) in BACKENDS.items():
    try:
      importlib.import_module(module)
    except ImportError:
      continue
    names.append(name)
  return names


def check_backend(name: str) -> None:
  """ValueError (naming the pip command) unless backend `name` is known and installed: call it
  before any inference is spent."""
  _backend(name)


def _backend(name: str) -> tuple[Callable[..., Loaded], Callable[..., Scored]]:
  """(load, evaluate) of backend `name`; ValueError if unknown or not installed."""
  if name not in BACKENDS:
    known = ', '.join(f"'{n}' (pip install {req})" for n, (_, req) in BACKENDS.items())
    raise ValueError(f'Unknown COCO scoring backend {name!r}; known: {known}.')
  module, requirement = BACKENDS[name]
  try:
    importlib.import_module(module)
  except ImportError as e:
    raise ValueError(f'COCO scoring backend {name!r} is not installed ({e}); install it with '
                     f'`pip install {requirement}`.') from e
  return _LOADERS[name], _EVALUATORS[name]


def _check_inputs(groundtruth: dict, detections: list[dict], iou_type: str,
                  image_ids: Sequence[int]) -> None:
  """ValueError for an unknown iou_type, no image ids, or detections of unknown images."""
  if iou_type not in IOU_TYPES:
    raise ValueError(f'iou_type must be one of {IOU_TYPES}, got {iou_type!r}.')
  if len(image_ids) == 0:
    raise ValueError('No image ids to score.')
  known = {image['id'] for image in groundtruth['images']}
  unknown = sorted({d['image_id'] for d in detections} - known)
  if unknown:
    raise ValueError(f'{len(unknown)} detection image ids are not in the ground truth: '
                     f'{unknown[:10]}')


def _copied_dataset(groundtruth: dict) -> dict:
  """`groundtruth` with every image, annotation and category dict copied (one level)."""
  copied = dict(groundtruth)
  for key in ('images', 'annotations', 'categories'):
    copied[key] = [dict(item) for item in groundtruth.get(key, [])]
  return copied


def _empty_results(groundtruth: dict) -> dict:
  """A results dataset without detections (pycocotools' loadRes fails on an empty list)."""
  return {'images': groundtruth['images'], 'categories': groundtruth['categories'],
          'annotations': []}


# The 12 lines of pycocotools' summarize(): (AP or AR, IoU, area range, max detections).
_SUMMARY_ROWS = (
    (True, '0.50:0.95', 'all', 100), (True, '0.50', 'all', 100), (True, '0.75', 'all', 100),
    (True, '0.50:0.95', 'small', 100), (True, '0.50:0.95', 'medium', 100),
    (True, '0.50:0.95', 'large', 100), (False, '0.50:0.95', 'all', 1),
    (False, '0.50:0.95', 'all', 10), (False, '0.50:0.95', 'all', 100),
    (False, '0.50:0.95', 'small', 100), (False, '0.50:0.95', 'medium', 100),
    (False, '0.50:0.95', 'large', 100))


def _summary_text(stats: Sequence[float]) -> str:
  """[12] stats -> the text pycocotools' summarize() prints for them (hotcoco's has one space
  less after 'Average Precision')."""
  lines = []
  for (ap, iou, area, max_dets), value in zip(_SUMMARY_ROWS, stats):
    title, kind = ('Average Precision', '(AP)') if ap else ('Average Recall', '(AR)')
    lines.append(f' {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | '
                 f'maxDets={max_dets:>3d} ] = {value:0.3f}\n')
  return ''.join(lines)


# pycocotools ---------------------------------------------------------------------------------

def _load_pycocotools(groundtruth: dict, detections: list[dict]) -> Loaded:
  from pycocotools.coco import COCO
  coco_gt = COCO()
  coco_gt.dataset = _copied_dataset(groundtruth)
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt.createIndex()
    if detections:
      return coco_gt, coco_gt.loadRes([dict(d) for d in detections])
    coco_dt = COCO()
    coco_dt.dataset = _empty_results(coco_gt.dataset)
    coco_dt.createIndex()
  return coco_gt, coco_dt


def _evaluate_pycocotools(coco_gt: Any, coco_dt: Any, iou_type: str,
                          image_ids: list[int]) -> Scored:
  from pycocotools.cocoeval import COCOeval
  evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
  evaluator.params.imgIds = image_ids
  summary = io.StringIO()
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
  with contextlib.redirect_stdout(summary):
    evaluator.summarize()
  return evaluator.stats, summary.getvalue()


# hotcoco -------------------------------------------------------------------------------------

def _load_hotcoco(groundtruth: dict, detections: list[dict]) -> Loaded:
  import hotcoco
  coco_gt = hotcoco.COCO(groundtruth)     # copies into Rust; nothing is written back
  return coco_gt, coco_gt.loadRes(detections)


def _evaluate_hotcoco(coco_gt: Any, coco_dt: Any, iou_type: str, image_ids: list[int]) -> Scored:
  import hotcoco
  evaluator = hotcoco.COCOeval(coco_gt, coco_dt, iou_type)
  evaluator.params.imgIds = image_ids
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats, _summary_text(evaluator.stats)


_LOADERS = {'pycocotools': _load_pycocotools, 'hotcoco': _load_hotcoco}
_EVALUATORS = {'pycocotools': _evaluate_pycocotools, 'hotcoco': _evaluate_hotcoco}
