"""coco_backends.score: every installed fast backend gives pycocotools' 12 numbers exactly, for
boxes and masks, on generated data made of COCO's corner cases: crowd regions (uncompressed and
compressed RLE), areas on the small / medium / large boundaries (32², 96²), scores with ties (also
at the 100-detection cut), IoUs exactly on the thresholds, degenerate detections, images without
detections or without ground truth, categories without ground truth, detections of unlisted
categories and of images outside the scored ids.

The one-detection case pins pycocotools' precision epsilon, tp / (tp + fp + 2^-52), which
faster-coco-eval 1.8.0 leaves out (and is therefore not a backend).
"""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import ROOT
from spinenet_jax.evaluation import coco_backends

FAST = [b for b in coco_backends.available_backends() if b != 'pycocotools']
CATEGORIES = (1, 2, 3, 5, 8, 13, 21)      # 13: crowd ground truth only; 21: no ground truth
GT_CATEGORIES = (1, 2, 3, 5, 8)
UNLISTED_CATEGORY = 99


def _mask(height: int, width: int, box: np.ndarray, ellipse: bool) -> np.ndarray:
  """[height, width] uint8 (Fortran order): the box [x, y, w, h] filled, or its inscribed ellipse."""
  ys, xs = np.mgrid[0:height, 0:width] + 0.5
  x, y, w, h = box
  if ellipse:
    inside = ((xs - x - w / 2) / max(w / 2, 1e-6)) ** 2 + ((ys - y - h / 2) / max(h / 2, 1e-6)) ** 2 <= 1
  else:
    inside = (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
  return np.asfortranarray(inside.astype(np.uint8))


def _compressed_rle(mask: np.ndarray) -> dict:
  rle = mask_utils.encode(mask)
  return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO's crowd format: run lengths (0s first) of the column-major mask, as a list of ints."""
  flat = mask.flatten(order='F')
  changes = np.flatnonzero(np.diff(flat)) + 1
  edges = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(edges).tolist()
  if flat[0] == 1:
    counts = [0] + counts
  return {'size': list(mask.shape), 'counts': counts}


def _polygon(box: np.ndarray) -> list[list[float]]:
  """An octagon inside the box (COCO polygon format)."""
  x, y, w, h = box
  c = 0.25
  points = [(x + c * w, y), (x + (1 - c) * w, y), (x + w, y + c * h), (x + w, y + (1 - c) * h),
            (x + (1 - c) * w, y + h), (x + c * w, y + h), (x, y + (1 - c) * h), (x, y + c * h)]
  return [[float(v) for p in points for v in p]]


def _gt_box(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """[x, y, w, h]: sizes log-uniform over all three area ranges; half of them integral with
  widths in multiples of 20 (so that IoUs of k/20 are exact), half fractional."""
  side = np.exp(rng.uniform(np.log(4), np.log(min(height, width) - 2), 2))
  if rng.uniform() < 0.5:
    side = np.array([min(max(np.round(side[0] / 20) * 20, 20), (width // 20 - 1) * 20),
                     min(max(np.round(side[1]), 1), height - 1)])
    xy = np.floor(rng.uniform(0, 1, 2) * ([width, height] - side))
  else:
    xy = rng.uniform(0, 1, 2) * ([width, height] - side)
  return np.array([xy[0], xy[1], side[0], side[1]])


def _gt_area(rng: np.random.Generator, box: np.ndarray) -> float:
  """COCO's area is the segment's, not the box's: a fraction of it, or a range boundary."""
  u = rng.uniform()
  if u < 0.04:
    return 32.0 ** 2
  if u < 0.08:
    return 96.0 ** 2
  return float(box[2] * box[3] * rng.uniform(0.5, 1.0))


def _groundtruth(rng: np.random.Generator, image: dict, next_id: int) -> list[dict]:
  anns = []
  count = 0 if rng.uniform() < 0.1 else int(rng.integers(1, 12))
  for _ in range(count):
    box = _gt_box(rng, image['height'], image['width'])
    crowd = rng.uniform() < 0.08
    category = 13 if crowd and rng.uniform() < 0.3 else int(rng.choice(GT_CATEGORIES))
    if crowd:
      mask = _mask(image['height'], image['width'], box, ellipse=True)
      rle = _uncompressed_rle(mask) if rng.uniform() < 0.7 else _compressed_rle(mask)
      segmentation = rle
    else:
      segmentation = _polygon(box)
    anns.append({'id': next_id + len(anns), 'image_id': image['id'], 'category_id': category,
                 'bbox': [float(v) for v in box], 'area': _gt_area(rng, box),
                 'iscrowd': int(crowd), 'segmentation': segmentation})
  return anns


def _score(rng: np.random.Generator, ties: bool) -> float:
  return float(np.round(rng.uniform(0.05, 1.0), 1)) if ties else float(rng.uniform(0.05, 1.0))


def _near_boxes(rng: np.random.Generator, box: np.ndarray, image: dict) -> list[np.ndarray]:
  """Detections of one object: exact IoU k/20 (integral boxes), jittered copies, a duplicate."""
  x, y, w, h = box
  out = []
  if float(w).is_integer() and w % 20 == 0:
    k = int(rng.integers(9, 21))                       # IoU k/20 with the box: 0.45 .. 1.0
    out.append(np.array([x, y, w * k / 20, h]))
  for _ in range(int(rng.integers(0, 3))):
    jitter = rng.normal(scale=0.12, size=4) * [w, h, w, h]
    out.append(np.array([x + jitter[0], y + jitter[1], max(w + jitter[2], 0.5),
                         max(h + jitter[3], 0.5)]))
  if rng.uniform() < 0.2:
    out.append(box.copy())
  return out


def _random_boxes(rng: np.random.Generator, image: dict, count: int) -> list[np.ndarray]:
  """False positives anywhere; a few degenerate (zero width)."""
  out = []
  for _ in range(count):
    w, h = np.exp(rng.uniform(np.log(2), np.log(image['width'] / 2), 2))
    x, y = rng.uniform(0, 1, 2) * [image['width'] - w, image['height'] - h]
    out.append(np.array([x, y, 0.0 if rng.uniform() < 0.03 else w, h]))
  return out


def _detection(rng: np.random.Generator, image: dict, box: np.ndarray, category: int,
               score: float, iou_type: str) -> dict:
  d = {'image_id': image['id'], 'category_id': category, 'score': score}
  if iou_type == 'bbox':
    d['bbox'] = [float(v) for v in box]
  else:
    mask = _mask(image['height'], image['width'], box, ellipse=rng.uniform() < 0.5)
    d['segmentation'] = _compressed_rle(mask)
  return d


def _detections(rng: np.random.Generator, image: dict, anns: list[dict],
                iou_type: str) -> list[dict]:
  if rng.uniform() < 0.1:
    return []
  ties = rng.uniform() < 0.7
  out = []
  for a in anns:
    for box in _near_boxes(rng, np.array(a['bbox']), image):
      category = a['category_id'] if rng.uniform() < 0.85 else int(rng.choice(CATEGORIES))
      out.append(_detection(rng, image, box, category, _score(rng, ties), iou_type))
  for box in _random_boxes(rng, image, int(rng.integers(0, 8))):
    category = UNLISTED_CATEGORY if rng.uniform() < 0.03 else int(rng.choice(CATEGORIES))
    out.append(_detection(rng, image, box, category, _score(rng, ties), iou_type))
  rng.shuffle(out)
  return out


def _crowded(rng: np.random.Generator, image: dict, anns: list[dict], iou_type: str) -> list[dict]:
  """130 detections of one category on one image, scores in 11 levels: ties at the 100 cut."""
  category = anns[0]['category_id'] if anns else 1
  boxes = [np.array(a['bbox']) for a in anns if a['category_id'] == category]
  boxes += _random_boxes(rng, image, 130 - len(boxes))
  return [_detection(rng, image, box, category, float(rng.integers(0, 11)) / 10, iou_type)
          for box in boxes[:130]]


def make_case(seed: int, iou_type: str, num_images: int = 300) -> tuple[dict, list[dict], list[int]]:
  """(ground truth, detections, scored image ids) for one seed."""
  rng = np.random.default_rng(seed)
  images = [{'id': 1000 + 7 * i, 'height': int(rng.integers(100, 241)),
             'width': int(rng.integers(120, 321))} for i in range(num_images)]
  annotations, detections = [], []
  for n, image in enumerate(images):
    anns = _groundtruth(rng, image, next_id=len(annotations) + 1)
    annotations += anns
    detections += _crowded(rng, image, anns, iou_type) if n % 97 == 5 else _detections(
        rng, image, anns, iou_type)
  groundtruth = {'images': images, 'annotations': annotations,
                 'categories': [{'id': c, 'name': f'c{c}'} for c in CATEGORIES]}
  image_ids = [i['id'] for i in images if rng.uniform() > 0.1]
  return groundtruth, detections, image_ids


@pytest.fixture(scope='module', params=['bbox', 'segm'])
def case(request):
  """(iou_type, ground truth, detections, image ids, pycocotools' stats and summary)."""
  groundtruth, detections, image_ids = make_case(seed=0, iou_type=request.param)
  stats, summary = coco_backends.score(groundtruth, detections, request.param, image_ids)
  return request.param, groundtruth, detections, image_ids, stats, summary


def test_the_generated_data_exercises_the_corner_cases(case):
  iou_type, groundtruth, detections, image_ids, stats, _ = case
  anns = groundtruth['annotations']
  assert sum(a['iscrowd'] for a in anns) > 20
  assert {type(a['segmentation']['counts']) for a in anns if a['iscrowd']} == {str, list}
  assert sum(a['area'] in (32.0 ** 2, 96.0 ** 2) for a in anns) > 50
  with_gt = {a['image_id'] for a in anns}
  with_dets = {d['image_id'] for d in detections}
  scored = set(image_ids)
  assert scored - with_gt and scored - with_dets and with_dets - scored
  scores = [d['score'] for d in detections]
  assert len(set(scores)) < len(scores) / 2
  assert UNLISTED_CATEGORY in {d['category_id'] for d in detections}
  assert np.all((stats > 0.05) & (stats < 0.95)), stats       # far from trivial


@pytest.mark.parametrize('backend', FAST)
def test_fast_backends_equal_pycocotools_exactly(case, backend):
  iou_type, groundtruth, detections, image_ids, stats, summary = case
  fast_stats, fast_summary = coco_backends.score(groundtruth, detections, iou_type, image_ids,
                                                 backend=backend)
  np.testing.assert_array_equal(fast_stats, stats)
  assert fast_summary == summary


@pytest.mark.parametrize('backend', FAST)
def test_a_second_seed_with_boxes_on_the_segm_detections(backend):
  """As official detection results do: segm detections with their 'bbox' too, which makes
  pycocotools take a detection's area from its box, not its mask."""
  groundtruth, detections, image_ids = make_case(seed=1, iou_type='segm', num_images=120)
  for d in detections:
    d['bbox'] = [float(v) for v in mask_utils.toBbox(d['segmentation'])]
  expected, _ = coco_backends.score(groundtruth, detections, 'segm', image_ids)
  got, _ = coco_backends.score(groundtruth, detections, 'segm', image_ids, backend=backend)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('backend', ['pycocotools'] + FAST)
def test_one_perfect_detection_scores_the_precision_epsilon(backend):
  """pycocotools' precision of 1 TP in 1 detection is 1 / (1 + 2^-52) (faster-coco-eval's: 1)."""
  groundtruth = {'images': [{'id': 1, 'height': 50, 'width': 50}],
                 'categories': [{'id': 1, 'name': 'a'}],
                 'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'iscrowd': 0,
                                  'bbox': [0.0, 0.0, 10.0, 10.0], 'area': 100.0}]}
  detections = [{'image_id': 1, 'category_id': 1, 'bbox': [0.0, 0.0, 10.0, 10.0], 'score': 0.5}]
  stats, summary = coco_backends.score(groundtruth, detections, 'bbox', [1], backend=backend)
  assert stats[0] == 1 / (1 + np.spacing(1)) == 0.9999999999999998
  assert stats[8] == 1.0 and summary.splitlines()[0].endswith('= 1.000')


@pytest.mark.parametrize('backend', ['pycocotools'] + FAST)
def test_inputs_are_not_modified(backend):
  groundtruth, detections, image_ids = make_case(seed=2, iou_type='segm', num_images=20)
  before = copy.deepcopy((groundtruth, detections, image_ids))
  coco_backends.score(groundtruth, detections, 'segm', image_ids, backend=backend)
  coco_backends.score(groundtruth, detections, 'bbox', image_ids, backend=backend)
  assert (groundtruth, detections, image_ids) == before


@pytest.mark.parametrize('backend', ['pycocotools'] + FAST)
def test_no_detections_score_zero_where_there_is_ground_truth(backend):
  groundtruth, _, image_ids = make_case(seed=3, iou_type='bbox', num_images=20)
  stats, summary = coco_backends.score(groundtruth, [], 'bbox', image_ids, backend=backend)
  assert set(stats.tolist()) <= {0.0, -1.0} and stats[0] == 0.0
  assert len(summary.splitlines()) == 12


def test_timings_are_reported():
  groundtruth, detections, image_ids = make_case(seed=4, iou_type='bbox', num_images=10)
  timings = {}
  coco_backends.score(groundtruth, detections, 'bbox', image_ids, timings=timings)
  assert set(timings) == {'load_s', 'evaluate_s'} and min(timings.values()) > 0


def test_errors_name_the_backend_and_the_fix(monkeypatch):
  groundtruth, detections, image_ids = make_case(seed=5, iou_type='bbox', num_images=5)
  with pytest.raises(ValueError, match=r"'torchmetrics'.*pip install hotcoco==1\.3\.0"):
    coco_backends.score(groundtruth, detections, 'bbox', image_ids, backend='torchmetrics')
  real_import = coco_backends.importlib.import_module

  def missing(name, *args):
    if name == 'hotcoco':
      raise ImportError("No module named 'hotcoco'")
    return real_import(name, *args)

  monkeypatch.setattr(coco_backends.importlib, 'import_module', missing)
  with pytest.raises(ValueError, match=r"'hotcoco' is not installed.*pip install hotcoco==1\.3\.0"):
    coco_backends.score(groundtruth, detections, 'bbox', image_ids, backend='hotcoco')
  assert 'hotcoco' not in coco_backends.available_backends()
  with pytest.raises(ValueError, match='iou_type'):
    coco_backends.score(groundtruth, detections, 'keypoints', image_ids)
  with pytest.raises(ValueError, match='not in the ground truth'):
    coco_backends.score(groundtruth, [dict(detections[0], image_id=-5)], 'bbox', image_ids)


@pytest.mark.skipif(not FAST, reason='no fast backend installed')
def test_the_benchmark_tool_runs_and_compares(tmp_path):
  output = tmp_path / 'out.json'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'benchmark_coco_eval.py'), '--iou_type=segm',
       '--images=20', '--backends=' + ','.join(FAST), f'--output={output}'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(output.read_text())
  assert report['detections'] == 20 * 100 and report['backends'][0]['backend'] == 'pycocotools'
  assert [r['equal_to_pycocotools'] for r in report['backends'][1:]] == [True] * len(FAST)
