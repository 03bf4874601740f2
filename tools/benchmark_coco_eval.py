"""Times COCO scoring with each backend of spinenet_jax.evaluation.coco_backends and checks that
they give pycocotools' metrics.

  python tools/benchmark_coco_eval.py --iou_type=bbox [--images=5000] [--detections=100]
  python tools/benchmark_coco_eval.py --iou_type=segm [--images=5000] [--output=FILE.json]

The data is generated (deterministic for a --seed): --images images of --height x --width with
on average --objects ground-truth objects each (Poisson; polygons, 1% crowd regions as uncompressed
RLE, areas the polygons', sizes spread over COCO's small / medium / large), 80 COCO category ids,
and exactly --detections detections per image as a detector makes them: a few near each object
(mostly of its class), the rest anywhere, scores continuous. 'segm' detections are compressed RLE
masks (an octagon filling the detection's box) without a 'bbox' key.

Each backend of coco_backends, and for comparison faster-coco-eval when installed (not a backend:
it is not exact, see coco_backends), scores the same inputs once: load (copies, index, loadRes) and evaluate (evaluate,
accumulate, summarize) are timed apart, wall and process CPU seconds (CPU > wall: threads; wall >
CPU: other processes took the cores, see the 1-minute load average recorded after each). Prints
a table and writes one JSON file (machine, versions, command, timings, the 12 metrics of each
backend); record it in docs/benchmarks.md with the date and command.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags
from pycocotools import mask as mask_utils

from spinenet_jax.evaluation import coco_backends

_IOU_TYPE = flags.DEFINE_enum('iou_type', 'bbox', list(coco_backends.IOU_TYPES), 'What is scored.')
_IMAGES = flags.DEFINE_integer('images', 5000, 'Images.')
_DETECTIONS = flags.DEFINE_integer('detections', 100, 'Detections per image.')
_OBJECTS = flags.DEFINE_float('objects', 7.0, 'Mean ground-truth objects per image (Poisson).')
_HEIGHT = flags.DEFINE_integer('height', 480, 'Image height, pixels.')
_WIDTH = flags.DEFINE_integer('width', 640, 'Image width, pixels.')
_SEED = flags.DEFINE_integer('seed', 0, 'Data seed.')
_BACKENDS = flags.DEFINE_list('backends', None, 'Backends timed (default: all installed, and '
                              'faster_coco_eval if installed); pycocotools always runs first, '
                              'as the reference.')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON file written (default: '
                              '/tmp/benchmark_coco_eval_<iou_type>.json).')

# COCO's 80 category ids (1..90 with gaps).
CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in
                     (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def _octagon(boxes: np.ndarray) -> np.ndarray:
  """[N, 4] [x, y, w, h] -> [N, 16] polygons (x0, y0, x1, y1, ...) of the octagons in the boxes."""
  x, y, w, h = (boxes[:, i:i + 1] for i in range(4))
  fx = np.array([0.3, 0.7, 1.0, 1.0, 0.7, 0.3, 0.0, 0.0])
  fy = np.array([0.0, 0.0, 0.3, 0.7, 1.0, 1.0, 0.7, 0.3])
  return np.stack([x + fx * w, y + fy * h], axis=-1).reshape(len(boxes), 16)


def _polygon_area(polygons: np.ndarray) -> np.ndarray:
  """[N, 2K] polygons -> [N] areas (shoelace), px²."""
  x, y = polygons[:, 0::2], polygons[:, 1::2]
  return 0.5 * np.abs(np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1))


def _boxes(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
  """[count, 4] [x, y, w, h] inside the image; sqrt(area) log-uniform in [6, 0.8 min side]."""
  side = np.exp(rng.uniform(np.log(6), np.log(0.8 * min(height, width)), (count, 1)))
  wh = np.clip(side * np.exp(rng.normal(0, 0.35, (count, 2))), 2, [width - 1, height - 1])
  xy = rng.uniform(0, 1, (count, 2)) * ([width, height] - wh)
  return np.concatenate([xy, wh], axis=1)


def _crowd_rle(box: np.ndarray, height: int, width: int) -> dict:
  """The box's octagon as COCO writes crowd regions: uncompressed RLE (run lengths, 0s first)."""
  rle = mask_utils.frPyObjects([_octagon(box[None])[0].tolist()], height, width)[0]
  flat = mask_utils.decode(rle).flatten(order='F')
  edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = ([0] if flat[0] else []) + np.diff(edges).tolist()
  return {'size': [height, width], 'counts': counts}


def _groundtruth(rng: np.random.Generator, image: dict, first_id: int) -> list[dict]:
  height, width = image['height'], image['width']
  boxes = _boxes(rng, int(rng.poisson(_OBJECTS.value)), height, width)
  polygons = _octagon(boxes)
  areas = _polygon_area(polygons)
  classes = rng.choice(CATEGORY_IDS, len(boxes), p=_CATEGORY_FREQUENCY)
  anns = []
  for k, (box, polygon, area, cls) in enumerate(zip(boxes, polygons, areas, classes)):
    crowd = rng.uniform() < 0.01
    anns.append({'id': first_id + k, 'image_id': image['id'], 'category_id': int(cls),
                 'bbox': box.tolist(), 'area': float(area), 'iscrowd': int(crowd),
                 'segmentation': (_crowd_rle(box, height, width) if crowd else
                                  [polygon.tolist()])})
  return anns


def _detection_boxes(rng: np.random.Generator, anns: list[dict], image: dict
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """([D, 4] boxes, [D] classes, [D] scores): D = --detections, the best-scored first."""
  count = _DETECTIONS.value
  near = np.array([a['bbox'] for a in anns for _ in range(3)]).reshape(-1, 4)[:count]
  near_classes = np.array([a['category_id'] for a in anns for _ in range(3)], int)[:count]
  jitter = rng.normal(0, 0.1, near.shape) * np.tile(near[:, 2:], 2)
  near = near + jitter
  near[:, 2:] = np.maximum(near[:, 2:], 1.0)
  wrong = rng.uniform(size=len(near)) < 0.15
  near_classes = np.where(wrong, rng.choice(CATEGORY_IDS, len(near)), near_classes)
  far = _boxes(rng, count - len(near), image['height'], image['width'])
  boxes = np.concatenate([near, far])
  classes = np.concatenate([near_classes, rng.choice(CATEGORY_IDS, len(far),
                                                     p=_CATEGORY_FREQUENCY)])
  scores = np.concatenate([rng.beta(4, 2, len(near)), rng.beta(1, 6, len(far))])
  order = np.argsort(-scores, kind='stable')
  return boxes[order], classes[order], scores[order]


def _detections(rng: np.random.Generator, anns: list[dict], image: dict) -> list[dict]:
  boxes, classes, scores = _detection_boxes(rng, anns, image)
  dets = [{'image_id': image['id'], 'category_id': int(c), 'score': float(s)}
          for c, s in zip(classes, scores)]
  if _IOU_TYPE.value == 'bbox':
    for d, box in zip(dets, boxes):
      d['bbox'] = [float(v) for v in box]
    return dets
  rles = mask_utils.frPyObjects(_octagon(boxes).tolist(), image['height'], image['width'])
  for d, rle in zip(dets, rles):     # one RLE per polygon
    d['segmentation'] = {'size': [int(v) for v in rle['size']],
                         'counts': rle['counts'].decode('ascii')}
  return dets


def make_data(seed: int) -> tuple[dict, list[dict], list[int]]:
  """(ground truth, detections, image ids), deterministic for `seed` and the flags."""
  rng = np.random.default_rng(seed)
  images = [{'id': i + 1, 'height': _HEIGHT.value, 'width': _WIDTH.value}
            for i in range(_IMAGES.value)]
  annotations, detections = [], []
  for image in images:
    anns = _groundtruth(rng, image, first_id=len(annotations) + 1)
    annotations += anns
    detections += _detections(rng, anns, image)
  groundtruth = {'images': images, 'annotations': annotations,
                 'categories': [{'id': c, 'name': f'class_{c}'} for c in CATEGORY_IDS]}
  return groundtruth, detections, [image['id'] for image in images]


def _category_frequency() -> np.ndarray:
  """[80] COCO-like skew: the first class ('person') a quarter of the objects, the rest Zipf."""
  weights = 1.0 / np.arange(1, len(CATEGORY_IDS) + 1) ** 0.8
  weights[0] = 0.0
  weights = 0.75 * weights / weights.sum()
  weights[0] = 0.25
  return weights


_CATEGORY_FREQUENCY = _category_frequency()


def _score_faster_coco_eval(groundtruth: dict, detections: list[dict], iou_type: str,
                            image_ids: list[int], timings: dict[str, float]) -> np.ndarray:
  """[12] stats by faster-coco-eval, run as coco_backends runs pycocotools (copied inputs)."""
  from faster_coco_eval import COCO, COCOeval_faster
  start = time.perf_counter()
  dataset = {key: [dict(item) for item in groundtruth[key]]
             for key in ('images', 'annotations', 'categories')}
  coco_gt = COCO(dataset, print_function=lambda *_: None)
  coco_dt = coco_gt.loadRes([dict(d) for d in detections])
  loaded = time.perf_counter()
  evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=lambda *_: None)
  evaluator.params.imgIds = sorted(set(image_ids))
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  timings.update(load_s=loaded - start, evaluate_s=time.perf_counter() - loaded)
  return np.asarray(evaluator.stats[:coco_backends.NUM_STATS])


def _time_backend(backend: str, data: tuple[dict, list[dict], list[int]]) -> dict:
  groundtruth, detections, image_ids = data
  timings: dict[str, float] = {}
  wall, cpu = time.perf_counter(), time.process_time()
  if backend == 'faster_coco_eval':
    stats = _score_faster_coco_eval(groundtruth, detections, _IOU_TYPE.value, image_ids, timings)
  else:
    stats, _ = coco_backends.score(groundtruth, detections, _IOU_TYPE.value, image_ids,
                                   backend=backend, timings=timings)
  return {'backend': backend, 'version': _version(backend), **timings,
          'total_s': time.perf_counter() - wall, 'cpu_s': time.process_time() - cpu,
          'load_average_after': os.getloadavg()[0], 'stats': stats.tolist()}


def _version(backend: str) -> str:
  return importlib.metadata.version(backend.replace('_', '-'))


def _faster_coco_eval() -> list[str]:
  """['faster_coco_eval'] if it is installed, else []."""
  try:
    importlib.metadata.version('faster-coco-eval')
  except importlib.metadata.PackageNotFoundError:
    return []
  return ['faster_coco_eval']


def _machine() -> dict:
  model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                if line.startswith('model name')), platform.processor())
  return {'cpu': model, 'nproc': os.cpu_count(), 'affinity': len(os.sched_getaffinity(0)),
          'python': platform.python_version(), 'numpy': np.__version__,
          'platform': platform.platform()}


def _table(rows: list[dict]) -> str:
  reference = rows[0]
  lines = ['| backend | load s | evaluate s | total s | CPU s | speed-up | max abs diff of 12 stats |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    diff = float(np.max(np.abs(np.subtract(r['stats'], reference['stats']))))
    lines.append(f"| {r['backend']} {r['version']} | {r['load_s']:.2f} | {r['evaluate_s']:.2f} | "
                 f"{r['total_s']:.2f} | {r['cpu_s']:.2f} | "
                 f"{reference['total_s'] / r['total_s']:.1f}x | {diff:.3g} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  backends = _BACKENDS.value or coco_backends.available_backends() + _faster_coco_eval()
  backends = ['pycocotools'] + [b for b in backends if b != 'pycocotools']
  start = time.perf_counter()
  data = make_data(_SEED.value)
  generated_s = time.perf_counter() - start
  print(f'{_IOU_TYPE.value}: {len(data[0]["images"])} images, {len(data[0]["annotations"])} '
        f'ground-truth objects, {len(data[1])} detections, generated in {generated_s:.1f} s',
        flush=True)
  rows = []
  for backend in backends:
    rows.append(_time_backend(backend, data))
    print(f"{backend}: {rows[-1]['total_s']:.2f} s", flush=True)
  print(_table(rows))
  for r in rows[1:]:
    r['equal_to_pycocotools'] = r['stats'] == rows[0]['stats']
    print(f"{r['backend']} stats == pycocotools (bit for bit): {r['equal_to_pycocotools']}")
  result = {'date': datetime.date.today().isoformat(), 'command': ' '.join(sys.argv),
            'machine': _machine(), 'iou_type': _IOU_TYPE.value, 'images': _IMAGES.value,
            'detections_per_image': _DETECTIONS.value, 'objects_per_image': _OBJECTS.value,
            'image_size': [_HEIGHT.value, _WIDTH.value], 'seed': _SEED.value,
            'ground_truth_objects': len(data[0]['annotations']),
            'detections': len(data[1]), 'generated_s': generated_s, 'backends': rows}
  output = _OUTPUT.value or f'/tmp/benchmark_coco_eval_{_IOU_TYPE.value}.json'
  with open(output, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'Wrote {output}')


if __name__ == '__main__':
  app.run(main)
