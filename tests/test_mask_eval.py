"""Mask evaluation ('segm'): the pasting against OpenCV itself and a transcription of the official
`paste_instance_masks` with cv2, RLEs built from crops equal to pycocotools' of the full mask, and
the evaluator's 12 mask metrics equal to pycocotools run directly on the same masks."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_jax.data import coco_json, coco_masks, synthetic
from spinenet_jax.evaluation import coco_eval, evaluator as evaluator_lib, mask_pasting


@pytest.fixture(autouse=True)
def _opencv_without_ipp():
  """OpenCV's own resize: with Intel IPP (these wheels) images of 2+ rows take IPP's, whose
  float32 weights give values up to ~2e-6 apart (see mask_pasting.resize_linear)."""
  saved = cv2.ipp.useIPP()
  cv2.ipp.setUseIPP(False)
  yield
  cv2.ipp.setUseIPP(saved)


def official_paste_instance_masks(masks, detected_boxes, image_height, image_width):
  """The official utils/mask_utils.paste_instance_masks, transcribed with cv2 (Detectron's)."""
  def expand_boxes(boxes, scale):
    w_half = boxes[:, 2] * .5
    h_half = boxes[:, 3] * .5
    x_c = boxes[:, 0] + w_half
    y_c = boxes[:, 1] + h_half
    w_half *= scale
    h_half *= scale
    out = np.zeros(boxes.shape)
    out[:, 0] = x_c - w_half
    out[:, 2] = x_c + w_half
    out[:, 1] = y_c - h_half
    out[:, 3] = y_c + h_half
    return out

  _, mask_height, mask_width = masks.shape
  scale = max((mask_width + 2.0) / mask_width, (mask_height + 2.0) / mask_height)
  ref_boxes = expand_boxes(detected_boxes, scale).astype(np.int32)
  padded_mask = np.zeros((mask_height + 2, mask_width + 2), dtype=np.float32)
  segms = []
  for mask_ind, mask in enumerate(masks):
    im_mask = np.zeros((image_height, image_width), dtype=np.uint8)
    padded_mask[1:-1, 1:-1] = mask[:, :]
    ref_box = ref_boxes[mask_ind, :]
    w = ref_box[2] - ref_box[0] + 1
    h = ref_box[3] - ref_box[1] + 1
    w = np.maximum(w, 1)
    h = np.maximum(h, 1)
    mask = cv2.resize(padded_mask, (w, h))
    mask = np.array(mask > 0.5, dtype=np.uint8)
    x_0 = min(max(ref_box[0], 0), image_width)
    x_1 = min(max(ref_box[2] + 1, 0), image_width)
    y_0 = min(max(ref_box[1], 0), image_height)
    y_1 = min(max(ref_box[3] + 1, 0), image_height)
    im_mask[y_0:y_1, x_0:x_1] = mask[(y_0 - ref_box[1]):(y_1 - ref_box[1]),
                                     (x_0 - ref_box[0]):(x_1 - ref_box[0])]
    segms.append(im_mask)
  return np.array(segms)


def _random_boxes(rng, n, height, width):
  """[n, 4] [x, y, w, h]: inside, across every edge, tiny (< 1 px) and larger than the image."""
  xy = rng.uniform(-0.3, 1.1, (n, 2)) * [width, height]
  wh = np.exp(rng.uniform(np.log(0.3), np.log(1.5 * max(height, width)), (n, 2)))
  return np.concatenate([xy, wh], axis=1)


def test_resize_linear_is_opencvs_bit_for_bit():
  rng = np.random.default_rng(0)
  sizes = [(int(h), int(w), int(oh), int(ow)) for h, w, oh, ow in rng.integers(1, 40, (300, 4))]
  sizes += [(30, 30, 30, 30), (30, 30, 1, 1), (1, 30, 7, 300), (30, 1, 300, 7), (2, 2, 500, 3)]
  for h, w, out_h, out_w in sizes:
    image = rng.random((h, w)).astype(np.float32)
    np.testing.assert_array_equal(mask_pasting.resize_linear(image, out_w, out_h),
                                  cv2.resize(image, (out_w, out_h)), err_msg=str((h, w, out_h, out_w)))


def test_resize_linear_is_within_3e6_of_opencv_with_ipp():
  cv2.ipp.setUseIPP(True)
  rng = np.random.default_rng(1)
  for h, w, out_h, out_w in rng.integers(2, 60, (50, 4)):
    image = rng.random((h, w)).astype(np.float32)
    np.testing.assert_allclose(mask_pasting.resize_linear(image, int(out_w), int(out_h)),
                               cv2.resize(image, (int(out_w), int(out_h))), atol=3e-6)


def test_pasting_equals_the_official_paste_with_cv2():
  rng = np.random.default_rng(2)
  for height, width in [(60, 80), (97, 33), (1, 5)]:
    masks = rng.random((200, 28, 28)).astype(np.float32)
    masks[:20] = np.round(masks[:20])                       # values exactly 0.5 after resizing
    boxes = _random_boxes(rng, 200, height, width)
    ours = mask_pasting.paste_instance_masks(masks, boxes, height, width)
    np.testing.assert_array_equal(ours, official_paste_instance_masks(masks, boxes, height, width))
    rles = mask_pasting.paste_and_encode(masks, boxes, height, width)
    assert rles == [coco_masks.encode(m) for m in ours]


def test_rle_of_a_placed_crop_is_the_rle_of_the_full_mask():
  rng = np.random.default_rng(3)
  for case in range(3000):
    height, width = (int(v) for v in rng.integers(1, 30, 2))
    top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
    h, w = int(rng.integers(0, height - top + 1)), int(rng.integers(0, width - left + 1))
    if case % 3 == 0:        # whole columns: runs continue from one column into the next
      top, h = 0, height
    crop = (rng.random((h, w)) < rng.choice([0.0, 0.3, 0.9, 1.0])).astype(np.uint8)
    full = np.zeros((height, width), np.uint8)
    full[top:top + h, left:left + w] = crop
    assert coco_masks.encode_placed(crop, top, left, height, width) == coco_masks.encode(full), (
        height, width, top, left, h, w)


@pytest.fixture(scope='module')
def val_json(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  synthetic.generate(str(root), 'val', 12, seed=1)
  return str(root / 'annotations' / 'instances_val.json')


def _detections_for(annotations, rng, m=20):
  """Per image: [m, 4] [x, y, w, h] boxes (jittered gt plus random), scores, classes, and 28x28
  masks: each gt mask cropped to its jittered box, blurred by noise; random ones elsewhere."""
  coco = COCO()
  coco.dataset = annotations
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  out = {}
  for image in annotations['images']:
    boxes = _random_boxes(rng, m, image['height'], image['width'])
    scores = rng.uniform(0.05, 1.0, m)
    classes = rng.choice([1, 2, 3, 5, 7, 8], m)
    masks = rng.random((m, 28, 28)).astype(np.float32)
    for k, ann in enumerate(coco.imgToAnns[image['id']][:m]):
      x, y, w, h = ann['bbox'] + rng.normal(scale=1.5, size=4)
      boxes[k] = [x, y, max(w, 1), max(h, 1)]
      classes[k] = ann['category_id']
      full = coco.annToMask(ann).astype(np.float32)
      x0, y0 = int(max(x, 0)), int(max(y, 0))
      crop = full[y0:y0 + max(int(h), 1), x0:x0 + max(int(w), 1)]
      if crop.size:
        masks[k] = cv2.resize(crop, (28, 28)) + rng.normal(scale=0.2, size=(28, 28))
    out[image['id']] = boxes, scores, classes, masks
  return out


@pytest.mark.parametrize('backend', ['pycocotools', 'hotcoco'])
def test_mask_evaluator_equals_pycocotools_on_the_same_masks(val_json, backend):
  rng = np.random.default_rng(4)
  annotations = json.load(open(val_json))
  images = {i['id']: i for i in annotations['images']}
  per_image = _detections_for(annotations, rng)
  evaluator = evaluator_lib.build('segm', val_json, backend=backend)
  direct = []
  ids = sorted(images)
  for start in range(0, len(ids), 4):
    chunk = ids[start:start + 4]
    scale = rng.uniform(0.5, 2.0, (len(chunk), 2))        # (y, x) scales into the canvas
    info = np.stack([[[images[i]['height'], images[i]['width']], [640, 640], s, [0, 0]]
                     for i, s in zip(chunk, scale)])
    boxes, scores, classes, masks = (np.stack(v) for v in zip(*(per_image[i] for i in chunk)))
    # The canvas boxes the detector gives (float32): [ymin, xmin, ymax, xmax] times the scale.
    canvas = (np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 1] + boxes[..., 3],
                        boxes[..., 0] + boxes[..., 2]], axis=-1) *
              np.tile(scale, 2)[:, None]).astype(np.float32)
    info = info.astype(np.float32)
    evaluator.process({'detection_boxes': canvas, 'detection_scores': scores,
                       'detection_classes': classes, 'detection_masks': masks},
                      {'image_info': info, 'source_id': np.array(chunk)})
    for b, image_id in enumerate(chunk):
      # Official: float32 boxes divided by the float32 image scale, then yxyx -> xywh.
      y0, x0, y1, x1 = np.moveaxis(canvas[b] / np.tile(info[b, 2], 2), -1, 0)
      xywh = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
      assert xywh.dtype == np.float32
      pasted = official_paste_instance_masks(masks[b], xywh, images[image_id]['height'],
                                             images[image_id]['width'])
      for mask, score, cls in zip(pasted, scores[b], classes[b]):
        rle = mask_utils.encode(np.asfortranarray(mask))
        direct.append({'image_id': image_id, 'category_id': int(cls), 'score': float(score),
                       'segmentation': rle})
  ours = evaluator.evaluate()
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(val_json)
    e = COCOeval(gt, gt.loadRes(direct), 'segm')
    e.params.imgIds = ids
    e.evaluate()
    e.accumulate()
    e.summarize()
  assert [ours[k] for k in coco_eval.METRIC_NAMES] == e.stats.tolist()
  assert 0.2 < ours['AP50'] < 1.0               # a real, non-trivial score
  saved = evaluator.results()
  assert len(saved) == len(ids) * 20 and {'segmentation', 'bbox'} <= set(saved[0])


def test_masks_of_a_rescaled_file_are_scored_in_the_jsons_pixels(val_json):
  """A file that is a 2x rescale of its json entry: its detections' masks are pasted at the
  json's size, where the ground-truth polygons are; perfect masks score AP 1 either way."""
  annotations = json.load(open(val_json))
  groundtruth, _ = coco_json.normalize(val_json)
  image = next(i for i in groundtruth['images']
               if any(a['image_id'] == i['id'] and not a['iscrowd']
                      for a in groundtruth['annotations']))
  anns = [a for a in groundtruth['annotations'] if a['image_id'] == image['id'] and not a['iscrowd']]
  height, width = image['height'], image['width']
  # As normalize gives a file at twice the json's size: sizes, boxes and areas in file pixels.
  image.update(height=2 * height, width=2 * width, scale=(2.0, 2.0))
  for a in anns:
    a['bbox'] = [2 * v for v in a['bbox']]
    a['area'] *= 4
  coco = COCO()
  coco.dataset = annotations
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  boxes, masks = [], []
  for a in anns:                   # the exact gt mask of each object, resampled into its box
    x, y, w, h = (int(round(v / 2)) for v in a['bbox'])
    full = coco.annToMask(coco.anns[a['id']]).astype(np.float32)
    boxes.append([2 * y, 2 * x, 2 * (y + h), 2 * (x + w)])
    masks.append(cv2.resize(full[y:y + h, x:x + w], (28, 28), interpolation=cv2.INTER_AREA))
  evaluator = coco_eval.CocoEvaluator(groundtruth, iou_type='segm', drop_padded=True)
  info = np.array([[[2 * height, 2 * width], [640, 640], [1.0, 1.0], [0, 0]]])
  evaluator.update({'detection_boxes': np.array([boxes], np.float64),
                    'detection_scores': np.linspace(0.9, 0.5, len(anns))[None],
                    'detection_classes': np.array([[a['category_id'] for a in anns]]),
                    'detection_masks': np.array([masks])}, info, np.array([image['id']]))
  metrics = evaluator.evaluate()
  assert metrics['AP50'] == pytest.approx(1.0)
  rle = evaluator.results()[0]['segmentation']
  assert rle['size'] == [height, width]          # pasted in the json's pixels


def test_mask_evaluation_without_a_json_is_refused_before_inference():
  with pytest.raises(ValueError, match='config.eval.annotation_file'):
    evaluator_lib.build('segm', None)


def _one_image_case(tmp_path, annotations_edit=None, image_edit=None):
  """A 40 x 60 image with two square objects, its json, and detections equal to them."""
  image = {'id': 1, 'file_name': 'a.png', 'height': 40, 'width': 60}
  anns = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 20, 20], 'area': 400,
           'iscrowd': 0, 'segmentation': [[10, 10, 30, 10, 30, 30, 10, 30]]},
          {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [35, 5, 20, 30], 'area': 600,
           'iscrowd': 0, 'segmentation': [[35, 5, 55, 5, 55, 35, 35, 35]]}]
  if annotations_edit:
    annotations_edit(anns)
  if image_edit:
    image_edit(image)
  path = tmp_path / 'instances.json'
  path.write_text(json.dumps({'images': [image], 'annotations': anns,
                              'categories': [{'id': 1, 'name': 'square'}]}))
  dets = {'detection_boxes': np.array([[[10, 10, 30, 30], [5, 35, 35, 55]]], np.float32),
          'detection_scores': np.array([[0.9, 0.8]], np.float32),
          'detection_classes': np.array([[1, 1]]),
          'detection_masks': np.ones((1, 2, 28, 28), np.float32)}
  info = np.array([[[40, 60], [64, 64], [1, 1], [0, 0]]], np.float32)
  return str(path), dets, info


def test_annotations_without_a_decodable_mask_are_left_out_and_named(tmp_path, caplog):
  def break_second(anns):
    del anns[1]['segmentation']
  path, dets, info = _one_image_case(tmp_path, break_second)
  evaluator = coco_eval.CocoEvaluator(path, iou_type='segm', backend='hotcoco')
  assert 'id 2' in caplog.text and '1 annotations without a decodable segmentation' in caplog.text
  evaluator.update(dets, info, np.array([1]))
  metrics = evaluator.evaluate()
  # Scored against the first object only (the second detection is a false positive), by either
  # library alike: hotcoco would otherwise have scored the missing mask as its box.
  pyco = coco_eval.CocoEvaluator(path, iou_type='segm', backend='pycocotools')
  pyco.update(dets, info, np.array([1]))
  assert metrics == pyco.evaluate() and 0 < metrics['AP50'] < 1


def test_a_json_without_image_sizes_pastes_at_the_decoded_images_size(tmp_path):
  def no_size(image):
    del image['height'], image['width']
  path, dets, info = _one_image_case(tmp_path, image_edit=no_size)
  evaluator = coco_eval.CocoEvaluator(path, iou_type='segm', drop_padded=True)
  evaluator.update(dets, info, np.array([1]))
  assert evaluator.detections[0]['segmentation']['size'] == [40, 60]
  assert evaluator.evaluate()['AP50'] == pytest.approx(1.0)


def test_mask_evaluation_names_missing_detection_masks(tmp_path):
  path, dets, info = _one_image_case(tmp_path)
  del dets['detection_masks']
  with pytest.raises(KeyError, match='detection_masks'):
    coco_eval.CocoEvaluator(path, iou_type='segm').update(dets, info, np.array([1]))


def test_an_unknown_scoring_backend_is_refused_by_the_config_checks():
  from configs import demo_maskrcnn

  from spinenet_jax.training import settings
  config = demo_maskrcnn.get_config()
  config.eval.coco_backend = 'hotcocoo'
  with pytest.raises(ValueError, match="config.eval.coco_backend='hotcocoo'"):
    settings.finalize(config)


def test_mask_rcnn_evaluation_batches_need_no_masks(tmp_path):
  """As TFDS coco/2017 (no objects/mask): Mask R-CNN's eval parser reads no masks."""
  import tiny_maskrcnn_config

  from spinenet_jax.data import datasets
  config = tiny_maskrcnn_config.get_config()
  config.input.include_masks = False
  split = datasets.load_split(config, 'eval', str(tmp_path))      # built without masks
  config.input.include_masks = True
  batch = next(datasets.eval_batches(config, split).as_numpy_iterator())
  assert 'gt_masks' not in batch and batch['images'].shape[0] == config.eval.batch_size
