"""The COCO evaluator: rescaling, the official submission of all slots, equality with
pycocotools run directly on the same detections, and ground truth built from the evaluation
batches equal to the instances json."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_jax.data import input_pipeline, parser, sources, synthetic
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


@pytest.mark.parametrize('backend', ['pycocotools', 'hotcoco'])
def test_evaluator_equals_pycocotools_on_the_same_detections(val_json, backend):
  rng = np.random.default_rng(0)
  annotations = json.load(open(val_json))
  by_image = _noisy_detections(annotations, rng)
  images = {i['id']: i for i in annotations['images']}
  evaluator = coco_eval.CocoEvaluator(val_json, backend=backend)
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
  assert [ours[k] for k in coco_eval.METRIC_NAMES] == e.stats.tolist()
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


# Ground truth built from the batches equals the instances json (segmentation areas).

# (category, shape, x, y, w, h, crowd) per image; shapes are polygons whose area is about half
# their box's, so objects change size range between box and segmentation area.
_MOCK_IMAGES = {
    11: ((240, 320), [(1, 'triangle', 10, 12, 40, 40, 0),     # box 1600 medium, mask ~800 small
                      (3, 'diamond', 150, 20, 110, 110, 0),   # box 12100 large, mask ~6050 medium
                      (1, 'square', 80, 150, 20, 20, 0),      # small
                      (18, 'square', 300, 200, 20, 20, 0),    # small, on the right/bottom edges
                      (3, 'triangle', 20, 70, 130, 120, 0)]),  # box 15600 large, mask ~7800 medium
    12: ((320, 240), [(3, 'square', 30, 30, 60, 60, 0),       # medium
                      (18, 'triangle', 120, 40, 44, 44, 0),   # box 1936 medium, mask small
                      (1, 'diamond', 20, 150, 100, 100, 0),   # box large, mask medium
                      (3, 'square', 130, 180, 100, 110, 1)]),  # crowd
    13: ((300, 300), [(18, 'square', 150, 150, 130, 130, 0),  # large
                      (1, 'diamond', 20, 20, 36, 36, 0),      # box 1296 medium, mask small
                      (3, 'triangle', 30, 120, 140, 140, 0)]),  # box large, mask medium
}


def _polygon(shape, x, y, w, h):
  if shape == 'triangle':
    return [x, y, x + w, y, x, y + h]
  if shape == 'diamond':
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]
  return [x, y, x + w, y, x + w, y + h, x, y + h]


def _write_mock_coco(root):
  """A COCO-format folder (PNG images + instances json with polygon segmentations whose `area` is
  the mask area, as COCO's); returns (images dir, json path)."""
  images_dir = root / 'images'
  images_dir.mkdir(parents=True)
  images, annotations = [], []
  rng = np.random.default_rng(0)
  for image_id, ((h, w), objects) in _MOCK_IMAGES.items():
    name = f'{image_id}.png'
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images_dir / name)
    images.append({'id': image_id, 'file_name': name, 'height': h, 'width': w})
    for cls, shape, x, y, bw, bh, crowd in objects:
      polygon = [float(v) for v in _polygon(shape, x, y, bw, bh)]
      area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))))
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': cls,
                          'bbox': [float(x), float(y), float(bw), float(bh)], 'area': area,
                          'segmentation': [polygon], 'iscrowd': crowd})
  json_path = root / 'instances_val.json'
  json_path.write_text(json.dumps({
      'images': images, 'annotations': annotations,
      'categories': [{'id': 1, 'name': 'a'}, {'id': 3, 'name': 'b'}, {'id': 18, 'name': 'c'}]}))
  return str(images_dir), str(json_path)


def _mock_detections(annotations, batch, rng, m=12):
  """Canvas-pixel detections for a batch: per object a jittered box (missed now and then; the
  edge object exactly), plus false positives; unused slots as the generator pads them."""
  n = len(batch['source_id'])
  boxes, scores, classes = np.zeros((n, m, 4)), np.full((n, m), -1.0), np.ones((n, m), np.int32)
  for b, image_id in enumerate(batch['source_id'].tolist()):
    if image_id == coco_eval.DUMMY_SOURCE_ID:
      continue
    dets = []
    for a in annotations:
      if a['image_id'] != image_id or a['iscrowd']:
        continue
      x, y, w, h = a['bbox']
      if a['category_id'] == 18 and x + w == _MOCK_IMAGES[image_id][0][1]:
        dets.append(([x, y, w, h], 0.9, 18))
      elif rng.uniform() < 0.8:
        j = rng.normal(scale=0.07 * max(w, h), size=4)
        dets.append(([x + j[0], y + j[1], w + j[2], h + j[3]], rng.uniform(0.1, 1),
                     a['category_id']))
    for _ in range(3):
      dets.append(([*rng.uniform(0, 150, 2), *rng.uniform(10, 90, 2)], rng.uniform(0.1, 0.6),
                   int(rng.choice([1, 3, 18]))))
    scale = np.tile(batch['image_info'][b, 2], 2)
    for k, ((x, y, w, h), score, cls) in enumerate(dets):
      boxes[b, k] = np.array([y, x, y + h, x + w]) * scale
      scores[b, k], classes[b, k] = score, cls
  return {'detection_boxes': boxes, 'detection_scores': scores, 'detection_classes': classes}


def test_ground_truth_from_batches_equals_the_json(tmp_path):
  """The real eval parser over a COCO-folder TFDS dataset (coco/2017's features): the evaluator
  built from the batches gives the json's 12 metrics, size ranges included, because it reads the
  segmentation areas (`gt_areas`) and the unclipped boxes (`gt_original_boxes`)."""
  images_dir, json_path = _write_mock_coco(tmp_path / 'coco')
  builder = sources.build_coco_folder('mock', {'val': (images_dir, json_path)},
                                      str(tmp_path / 'tfds'))
  builder.download_and_prepare()
  config = parser.ParserConfig(output_size=(256, 256), max_level=7, max_num_instances=8)
  batches = list(input_pipeline.eval_dataset(builder.as_dataset(split='val'), 2, config)
                 .as_numpy_iterator())
  annotations = json.load(open(json_path))['annotations']

  # The batches carry the json's areas and boxes, row-aligned with the classes.
  seen = 0
  for batch in batches:
    assert batch['gt_areas'].dtype == np.float32 and batch['gt_areas'].shape == (2, 8)
    for b, image_id in enumerate(batch['source_id'].tolist()):
      if image_id == coco_eval.DUMMY_SOURCE_ID:
        continue
      anns = [a for a in annotations if a['image_id'] == image_id]
      n = len(anns)
      np.testing.assert_array_equal(batch['gt_classes'][b, :n], [a['category_id'] for a in anns])
      np.testing.assert_allclose(batch['gt_areas'][b, :n], [a['area'] for a in anns], rtol=1e-6)
      np.testing.assert_array_equal(batch['gt_areas'][b, n:], -1)
      x, y, w, h = np.array([a['bbox'] for a in anns]).T
      np.testing.assert_allclose(batch['gt_original_boxes'][b, :n],
                                 np.stack([y, x, y + h, x + w], 1), atol=1e-4)
      seen += 1
  assert seen == len(_MOCK_IMAGES)

  def run(annotation_file, drop=()):
    evaluator = coco_eval.CocoEvaluator(annotation_file)
    rng = np.random.default_rng(4)
    for batch in batches:
      groundtruth = {k: v for k, v in batch.items() if k.startswith('gt_') and k not in drop}
      evaluator.update(_mock_detections(annotations, batch, rng), batch['image_info'],
                       batch['source_id'], groundtruth)
    return evaluator.evaluate()

  from_json = run(json_path)
  from_batches = run(None)
  np.testing.assert_allclose([from_batches[k] for k in coco_eval.METRIC_NAMES],
                             [from_json[k] for k in coco_eval.METRIC_NAMES], atol=1e-12)
  assert 0.2 < from_json['AP'] < 0.9 and all(from_json[k] > 0 for k in ('APs', 'APm', 'APl'))
  # The test can see the difference: box areas move objects between the size ranges, and boxes
  # clipped to the canvas shrink the edge object (its exact detection no longer has IoU >= 0.95).
  box_areas = run(None, drop=('gt_areas',))
  for k in ('APs', 'APm', 'APl', 'ARs', 'ARm', 'ARl'):
    assert abs(box_areas[k] - from_json[k]) > 1e-3, k
  clipped = run(None, drop=('gt_original_boxes',))
  assert abs(clipped['AP'] - from_json['AP']) > 1e-4 and clipped['APs'] < from_json['APs']
