"""COCO box evaluation as the official `COCOEvaluator` (box type), on top of pycocotools.

Detections arrive as the detection generator makes them, in output-canvas pixels; they are divided
by the per-axis scale `image_info[:, 2]` back to original-image pixels (no offset: it is 0 at
evaluation, and no re-clipping, as official) and converted to [x, y, w, h]. As official, every slot
is submitted, padded slots with score -1 included (`drop_padded=True` leaves them out).

Ground truth comes from the dataset's instances json (any COCO-format dataset, or COCO's
`instances_val2017.json`) normalized by `coco_json` (integer image ids, `iscrowd` and `area`
defaulted as COCO does, coordinates in the image files' pixels), or, when there is none (TFDS
`coco/2017`), from the evaluation batches themselves, as the official
`convert_groundtruths_to_coco_dataset` builds it from the eval parser's `groundtruths` (crowd flags
kept):
- boxes: `gt_original_boxes`, the dataset's boxes in original-image pixels (official); without
  that key, `gt_boxes` / image scale (these were clipped to the output canvas, so boxes reaching
  the right or bottom edge come back up to 1/scale px smaller than in the json);
- area: `gt_areas`, the dataset's `objects/area` (official `areas`). COCO's are segmentation
  areas, and pycocotools picks the small / medium / large objects (APs/APm/APl, ARs/ARm/ARl) by
  `area`, so these metrics equal the json's only with them. Without the key (or with -1 in a
  valid row), the box area w h is used, as official without `areas`.
Differences left with the json: TFDS coco/2017 stores areas as int64 (the json's areas truncated),
so an object whose json area lies in (1024, 1025) or (9216, 9217) px falls on a range boundary;
and the rows are those the eval parser keeps (boxes non-empty after the clip to the canvas, at
most `max_num_instances`), where official drops none but also truncates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_jax.data import coco_json

log = logging.getLogger(__name__)

METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
                'ARmax1', 'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl')
DUMMY_SOURCE_ID = -1


def _xywh(boxes: np.ndarray) -> np.ndarray:
  """[..., 4] [ymin, xmin, ymax, xmax] -> [x, y, w, h] (w = xmax - xmin, no +1)."""
  return np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3] - boxes[..., 1],
                   boxes[..., 2] - boxes[..., 0]], axis=-1)


class CocoEvaluator:
  """Accumulates detections batch by batch; `evaluate()` returns the 12 standard box metrics."""

  def __init__(self, groundtruth: dict | str | None = None, drop_padded: bool = False):
    """`groundtruth`: a normalized dataset (`coco_json.normalize`), the path of an instances json
    (normalized here: missing `iscrowd` / `area` defaulted, problems raised as
    coco_json.DatasetError before any inference is spent), or None to build it from the batches.
    """
    if isinstance(groundtruth, (str, os.PathLike)):
      self.annotation_file = os.fspath(groundtruth)
      groundtruth, report = coco_json.normalize(self.annotation_file)
      coco_json.log_report(report)
    else:
      self.annotation_file = None if groundtruth is None else groundtruth.get(
          'json_path', '(the given ground truth)')
    self.groundtruth = groundtruth
    self.drop_padded = drop_padded
    self.reset()

  def reset(self) -> None:
    self.detections: list[dict] = []
    self.image_ids: list[int] = []
    self._gt_images: list[dict] = []
    self._gt_annotations: list[dict] = []

  def update(self, detections: dict, image_info: np.ndarray, source_id: np.ndarray,
             groundtruth: dict | None = None) -> None:
    """One batch. `detections`: detection_boxes [B, M, 4] (canvas pixels), detection_scores
    [B, M], detection_classes [B, M]; `image_info` [B, 4, 2]; `source_id` [B] (-1: padding).
    `groundtruth` (needed without an annotation file, ignored with one): gt_boxes [B, G, 4]
    canvas pixels, gt_classes [B, G] (-1 padding), optional gt_is_crowd [B, G] (default 0),
    gt_areas [B, G] and gt_original_boxes [B, G, 4] in original-image pixels (see the module
    docstring for their defaults); other keys are ignored."""
    image_info = np.asarray(image_info, np.float64)
    source_id = np.asarray(source_id).reshape(-1)
    scale = np.tile(image_info[:, 2, :], 2)[:, None, :]                  # [B, 1, 4]
    boxes = _xywh(np.asarray(detections['detection_boxes'], np.float64) / scale)
    scores = np.asarray(detections['detection_scores'], np.float64)
    classes = np.asarray(detections['detection_classes'])
    for i, image_id in enumerate(source_id.tolist()):
      if image_id == DUMMY_SOURCE_ID:
        continue
      self.image_ids.append(int(image_id))
      for box, score, cls in zip(boxes[i], scores[i], classes[i]):
        if self.drop_padded and score <= -1.0:
          continue
        self.detections.append({'image_id': int(image_id), 'category_id': int(cls),
                                'bbox': [float(v) for v in box], 'score': float(score)})
      if groundtruth is not None and self.groundtruth is None:
        self._add_groundtruth(int(image_id), image_info[i], groundtruth, i, scale[i])

  def _add_groundtruth(self, image_id: int, info: np.ndarray, gt: dict, i: int,
                       scale: np.ndarray) -> None:
    height, width = info[0]
    self._gt_images.append({'id': image_id, 'height': float(height), 'width': float(width)})
    if 'gt_original_boxes' in gt:
      boxes = _xywh(np.asarray(gt['gt_original_boxes'][i], np.float64))
    else:
      boxes = _xywh(np.asarray(gt['gt_boxes'][i], np.float64) / scale)
    classes = np.asarray(gt['gt_classes'][i])
    crowd = np.asarray(gt['gt_is_crowd'][i]) if 'gt_is_crowd' in gt else np.zeros_like(classes)
    box_areas = boxes[:, 2] * boxes[:, 3]
    areas = np.asarray(gt['gt_areas'][i], np.float64) if 'gt_areas' in gt else box_areas
    areas = np.where(areas < 0, box_areas, areas)   # -1: padding, or no area known
    for box, cls, is_crowd, area in zip(boxes, classes, crowd, areas):
      if cls <= 0:
        continue
      self._gt_annotations.append({
          'id': len(self._gt_annotations) + 1, 'image_id': image_id, 'category_id': int(cls),
          'bbox': [float(v) for v in box], 'area': float(area), 'iscrowd': int(is_crowd)})

  def _groundtruth(self) -> COCO:
    if self.groundtruth is not None:
      coco = COCO()
      coco.dataset = self.groundtruth
      with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
      return coco
    if not self._gt_images:
      raise ValueError('No annotation file and no ground truth given to CocoEvaluator.update().')
    categories = sorted({a['category_id'] for a in self._gt_annotations} |
                        {d['category_id'] for d in self.detections})
    coco = COCO()
    coco.dataset = {'images': self._gt_images, 'annotations': self._gt_annotations,
                    'categories': [{'id': c} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
      coco.createIndex()
    return coco

  def evaluate(self) -> dict[str, float]:
    """The 12 COCO box metrics over the images seen since `reset()`."""
    coco_gt = self._groundtruth()
    unknown = sorted(set(self.image_ids) - set(coco_gt.getImgIds()))
    if unknown:
      raise coco_json.DatasetError(f'{len(unknown)} evaluated image ids are not in the ground truth '
                       f'{self.annotation_file or "(from the batches)"}: {unknown[:10]}')
    if not self.detections:
      log.warning('No detections to evaluate; all metrics are 0.')
      return {name: 0.0 for name in METRIC_NAMES}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
      coco_dt = coco_gt.loadRes([dict(d) for d in self.detections])  # loadRes edits them
      evaluator = COCOeval(coco_gt, coco_dt, iouType='bbox')
      evaluator.params.imgIds = sorted(set(self.image_ids))
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    log.info('COCO box evaluation over %d images:\n%s', len(set(self.image_ids)),
             output.getvalue())
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}

  def results(self) -> list[dict]:
    """The detections in COCO results format, in the json's own image ids (strings included) and
    pixels (a file that is a rescale of the json's size: boxes scaled back)."""
    if self.groundtruth is None:
      return self.detections
    images = {i['id']: i for i in self.groundtruth['images']}
    out = []
    for d in self.detections:
      image = images.get(d['image_id'], {})
      sy, sx = image.get('scale', (1.0, 1.0))
      x, y, w, h = d['bbox']          # back to the json's pixels where the file is a rescale
      out.append(dict(d, image_id=image.get('original_id', d['image_id']),
                      bbox=[x / sx, y / sy, w / sx, h / sy]))
    return out
