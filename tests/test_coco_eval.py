"""The COCO evaluator: rescaling, the official submission of all slots, and equality with
pycocotools run directly on the same detections."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_jax.data import synthetic
from spinenet_jax.evaluation import coco_eval


@pytest.fixture(scope='module')
def val_json(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  synthetic.generate(str(root), 'val', 12, seed=1)
  return str(root / 'annotations' / 'instances_val.json')


def _noisy_detections(annotations, rng):
  """Per image: jittered copies of the ground truth plus random boxes, in [x, y, w, h] pixels."""
  by_image = {}
  for a in annotations['annotations']:
    x, y, w, h = a['bbox']
    jitter = rng.normal(scale=0.08 * max(w, h, 1.0), size=4)
    by_image.setdefault(a['image_id'], []).append(
        ([x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)],
         float(rng.uniform(0.05, 1.0)),
         a['category_id'] if rng.uniform() < 0.8 else int(rng.choice([1, 2, 3, 5, 7, 8]))))
  for image in annotations['images']:
    for _ in range(3):
      by_image.setdefault(image['id'], []).append(
          ([*rng.uniform(0, 60, 2), *rng.uniform(5, 50, 2)], float(rng.uniform(0.05, 0.5)), 1))
  return by_image


def test_evaluator_equals_pycocotools_on_the_same_detections(val_json):
  rng = np.random.default_rng(0)
  annotations = json.load(open(val_json))
  by_image = _noisy_detections(annotations, rng)
  images = {i['id']: i for i in annotations['images']}
  evaluator = coco_eval.CocoEvaluator(val_json)
  direct = []
  m = 100
  ids = sorted(images)
  for start in range(0, len(ids), 4):
    chunk = ids[start:start + 4] + [coco_eval.DUMMY_SOURCE_ID] * (4 - len(ids[start:start + 4]))
    boxes = np.zeros((4, m, 4))
    scores = np.full((4, m), -1.0)
    classes = np.ones((4, m), np.int32)
    info = np.ones((4, 4, 2))
    for b, image_id in enumerate(chunk):
      if image_id == coco_eval.DUMMY_SOURCE_ID:
        continue
      h, w = images[image_id]['height'], images[image_id]['width']
      scale = rng.uniform(0.5, 2.0, 2)                   # (y, x) scales into the canvas
      info[b] = [[h, w], [640, 640], scale, [0, 0]]
      for k, ((x, y, bw, bh), score, cls) in enumerate(by_image.get(image_id, [])):
        boxes[b, k] = np.array([y, x, y + bh, x + bw]) * np.tile(scale, 2)
        scores[b, k], classes[b, k] = score, cls
      for k in range(m):
        y0, x0, y1, x1 = boxes[b, k] / np.tile(scale, 2)
        direct.append({'image_id': image_id, 'category_id': int(classes[b, k]),
                       'bbox': [x0, y0, x1 - x0, y1 - y0], 'score': float(scores[b, k])})
    evaluator.update({'detection_boxes': boxes, 'detection_scores': scores,
                      'detection_classes': classes}, info, np.array(chunk))
  ours = evaluator.evaluate()

  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(val_json)
    e = COCOeval(gt, gt.loadRes(direct), 'bbox')
    e.params.imgIds = ids
    e.evaluate()
    e.accumulate()
    e.summarize()
  assert list(ours) == list(coco_eval.METRIC_NAMES)
  np.testing.assert_allclose([ours[k] for k in coco_eval.METRIC_NAMES], e.stats, atol=1e-12)
  assert 0.2 < ours['AP50'] < 1.0               # a real, non-trivial score
  assert len(evaluator.detections) == len(ids) * m   # padded slots are submitted (official)


def test_ground_truth_from_batches_gives_perfect_scores():
  boxes = np.array([[[10, 20, 50, 80], [60, 60, 90, 120], [-1, -1, -1, -1]]], np.float64)
  info = np.array([[[100, 200], [128, 256], [1.28, 1.28], [0, 0]]])
  evaluator = coco_eval.CocoEvaluator(None, drop_padded=True)
  dets = {'detection_boxes': boxes, 'detection_scores': np.array([[0.9, 0.8, -1.0]]),
          'detection_classes': np.array([[3, 5, 1]])}
  gt = {'gt_boxes': boxes, 'gt_classes': np.array([[3, 5, -1]]),
        'gt_is_crowd': np.array([[0, 0, 0]])}
  evaluator.update(dets, info, np.array([7]), gt)
  metrics = evaluator.evaluate()
  assert metrics['AP'] == pytest.approx(1.0) and metrics['AP50'] == pytest.approx(1.0)
  assert len(evaluator.detections) == 2
  # Boxes went back to original pixels: x = 20 / 1.28.
  assert evaluator.detections[0]['bbox'][0] == pytest.approx(20 / 1.28)


def test_unknown_image_ids_are_named(val_json):
  evaluator = coco_eval.CocoEvaluator(val_json)
  evaluator.update({'detection_boxes': np.zeros((1, 1, 4)), 'detection_scores': np.ones((1, 1)),
                    'detection_classes': np.ones((1, 1), np.int32)}, np.ones((1, 4, 2)),
                   np.array([123456]))
  with pytest.raises(ValueError, match='123456'):
    evaluator.evaluate()
  with pytest.raises(FileNotFoundError, match='nope.json'):
    coco_eval.CocoEvaluator('nope.json')
