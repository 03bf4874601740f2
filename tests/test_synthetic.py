"""The synthetic COCO-format dataset: layout, exact masks, occlusion, crowds, COCOeval, caching."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet_jax.data import synthetic

pytestmark = pytest.mark.filterwarnings(  # pycocotools' decode under numpy 2
  "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
SMALL = {'min_side': 96, 'max_side': 192, 'max_objects': 10}


def _generate(root, num_images=24, seed=3, split='train', **kwargs):
  return synthetic.generate(str(root), split, num_images, seed, **{**SMALL, **kwargs})


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  """(root, json path, COCO) of a 24-image split: every image kind is present at this size."""
  root = tmp_path_factory.mktemp('synthetic')
  path = _generate(root)
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(path)
  return root, path, coco


def _image(root, image):
  return Image.open(os.path.join(root, 'train', 'images', image['file_name']))


def test_categories_are_non_contiguous():
  names = synthetic.category_names()
  assert list(names) == [c['id'] for c in synthetic.CATEGORIES]
  assert list(names) != list(range(1, len(names) + 1))
  assert 5 <= len(names) <= 8 and names[1] == 'circle'


def test_layout_and_image_kinds(split):
  root, path, coco = split
  assert path == os.path.join(str(root), 'annotations', 'instances_train.json')
  kinds = []
  for image in coco.dataset['images']:
    with _image(root, image) as im:
      assert im.size == (image['width'], image['height'])
      kinds.append((im.mode, im.format))
    assert 96 <= image['height'] <= 192 and 96 <= image['width'] <= 192
  assert kinds.count(('RGBA', 'PNG')) == 1
  assert ('L', 'PNG') in kinds and ('L', 'JPEG') in kinds and ('RGB', 'JPEG') in kinds
  assert kinds.count(('RGB', 'PNG')) > len(kinds) // 2
  assert any(im['height'] != im['width'] for im in coco.dataset['images'])
  assert sorted(coco.getCatIds()) == [c['id'] for c in synthetic.CATEGORIES]


def test_empty_images_and_crowds(split):
  _, _, coco = split
  assert any(not coco.getAnnIds(imgIds=i) for i in coco.getImgIds())
  crowds = coco.loadAnns(coco.getAnnIds(iscrowd=True))
  assert crowds and all(a['iscrowd'] == 1 for a in crowds)
  assert all(isinstance(a['segmentation']['counts'], list) for a in crowds)  # COCO's crowd format
  others = coco.loadAnns(coco.getAnnIds(iscrowd=False))
  # Whole shapes keep their outline polygon; occluded or cut ones are compressed RLE.
  kinds = {type(a['segmentation']).__name__ for a in others}
  assert kinds == {'list', 'dict'}
  assert all(isinstance(a['segmentation']['counts'], str) for a in others
             if isinstance(a['segmentation'], dict))


def test_masks_match_area_and_tight_bbox(split):
  _, _, coco = split
  for ann in coco.dataset['annotations']:
    image = coco.imgs[ann['image_id']]
    mask = coco.annToMask(ann).astype(bool)
    assert mask.sum() == ann['area'] > 0
    ys, xs = np.nonzero(mask)
    tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    np.testing.assert_allclose(ann['bbox'], tight, atol=1)
    assert ann['bbox'] == tight   # in fact exact
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if ann['iscrowd']:
      from_json = mask_utils.frPyObjects(ann['segmentation'], image['height'], image['width'])
      assert from_json['counts'] == encoded['counts']
    elif isinstance(ann['segmentation'], dict):
      assert ann['segmentation'] == {'size': [image['height'], image['width']],
                                     'counts': encoded['counts'].decode()}
    else:
      xy = np.concatenate(ann['segmentation']).reshape(-1, 2)
      assert xy.min() >= 0 and (xy <= [image['width'], image['height']]).all()


def test_masks_agree_with_drawn_pixels(split):
  """Saved PNGs are the rendered pixels, and each annotation's mask is where it is drawn on top."""
  root, _, coco = split
  specs = synthetic._schedule(24, 3)
  checked = 0
  for index, spec in enumerate(specs):
    image = coco.imgs[index + 1]
    rendered = synthetic.render_image(3, index, mode=spec.mode, empty=spec.empty,
                                      crowd=spec.crowd, **SMALL)
    if spec.file_format == 'png':
      with _image(root, image) as im:
        np.testing.assert_array_equal(np.asarray(im), rendered.pixels)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image['id']))
    assert len(anns) == len(rendered.annotations)
    for k, ann in enumerate(anns):
      np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), rendered.owner == k)
      checked += 1
    dropped = rendered.owner == -2
    assert dropped.sum() <= synthetic.MIN_VISIBLE_FRACTION * rendered.owner.size
  assert checked > 50


def test_occlusion_updates_visible_masks_and_drops_hidden_objects():
  owner = np.full((20, 30), -1, np.int32)
  owner[2:12, 2:12] = 0      # object 0: 100 px, then mostly covered by object 1
  owner[2:12, 5:20] = 1      # object 1: 150 px, then 5 px covered by object 3
  owner[0:1, 0:30] = 2       # object 2: a strip, under object 3
  owner[9:10, 15:25] = 3
  owner[14:16, 0:30] = 3     # object 3 also has a second part
  drawn = [synthetic._Drawn(1, 0, 100, None), synthetic._Drawn(2, 0, 150, None),
           synthetic._Drawn(3, 0, 30, None), synthetic._Drawn(5, 0, 70, None)]
  drawn[3].area = int((owner == 3).sum())
  anns, final = synthetic._annotate(drawn, owner)
  assert [a['category_id'] for a in anns] == [1, 2, 3, 5]
  assert anns[0]['area'] == 30 and anns[0]['bbox'] == [2.0, 2.0, 3.0, 10.0]
  assert anns[1]['area'] == 145 and anns[3]['bbox'] == [0.0, 9.0, 30.0, 7.0]
  np.testing.assert_array_equal(mask_utils.decode(anns[3]['segmentation']), owner == 3)
  owner[2:12, 2:5] = 1       # object 0 now almost completely hidden: dropped
  drawn[1].area = int((owner == 1).sum())
  anns, final = synthetic._annotate(drawn, owner)
  assert [a['category_id'] for a in anns] == [2, 3, 5]
  assert (final == -2).sum() == 0 and (final == 0).sum() == (owner == 1).sum()
  drawn[0].area = 200        # 3 px left of 200: dropped, the remnants marked -2
  owner[2, 2] = 0
  owner[3, 2] = 0
  owner[4, 2] = 0
  anns, final = synthetic._annotate(drawn, owner)
  assert len(anns) == 3 and (final == -2).sum() == 3


def _numpy_tight_bbox(mask):
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
          float(ys.max() - ys.min() + 1)]


def test_rle_and_bbox_are_exact_with_holes_and_diagonals():
  """`encode` (pycocotools RLE) decodes to exactly the mask, holes and islands included, and
  `tight_bbox` (pycocotools `toBbox`) is the tight pixel box, as the numpy formula it replaced."""
  rng = np.random.default_rng(0)
  ring = np.zeros((30, 40), bool)
  ring[3:27, 4:36] = True
  ring[8:12, 10:14] = False
  ring[15:20, 20:30] = False
  ring[20, 25] = True                               # an island inside a hole
  diagonal = np.zeros((6, 6), bool)
  diagonal[1, 1] = diagonal[2, 2] = diagonal[3, 1] = True
  masks = [ring, diagonal] + [rng.random((12, 17)) < p for p in (0.3, 0.5, 0.7)]
  column = np.zeros((7, 5), bool)
  column[1:6, 3] = True                             # one run across several rows
  masks += [column, column.T, np.ones((4, 6), bool), rng.random((40, 3)) < 0.05]
  for mask in masks:
    if not mask.any():
      continue
    rle = synthetic.encode(mask)
    assert rle['size'] == list(mask.shape) and isinstance(rle['counts'], str)
    json.dumps(rle)
    np.testing.assert_array_equal(mask_utils.decode(rle), mask)
    assert synthetic.tight_bbox(mask) == _numpy_tight_bbox(mask)


def test_uncompressed_rle_equals_encode():
  rng = np.random.default_rng(1)
  for mask in (rng.random((9, 7)) < 0.5, np.ones((4, 5), bool), np.zeros((3, 3), bool)):
    rle = synthetic.uncompressed_rle(mask)
    assert sum(rle['counts']) == mask.size
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert mask_utils.frPyObjects(rle, *mask.shape)['counts'] == encoded['counts']


def _evaluate(coco, iou_type):
  anns = coco.loadAnns(coco.getAnnIds(iscrowd=False))
  if iou_type == 'bbox':
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
             'score': 1.0} for a in anns]
  else:
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'],
             'segmentation': coco.annToRLE(a), 'score': 1.0} for a in anns]
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator = COCOeval(coco, coco.loadRes(dets), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_cocoeval_of_ground_truth_is_perfect(split, iou_type):
  """Non-crowd ground truth used as detections: AP = AR = 1 (crowds are only ever ignored)."""
  stats = _evaluate(split[2], iou_type)
  np.testing.assert_allclose(stats[[0, 1, 2, 8]], 1.0)


def _files(root):
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(folder, name), 'rb') as f:
        out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
  return out


def test_deterministic_for_a_seed(tmp_path, split):
  root, _, _ = split
  _generate(tmp_path / 'again')
  expected, got = _files(root), _files(tmp_path / 'again')
  assert sorted(expected) == sorted(got)
  for name in expected:
    assert expected[name] == got[name], name
  other = _generate(tmp_path / 'other', seed=4)
  with open(other, 'rb') as f:
    assert f.read() != expected[os.path.join('annotations', 'instances_train.json')]


def test_generate_is_idempotent_and_regenerates_on_change(tmp_path):
  path = _generate(tmp_path, num_images=6)
  images = os.path.join(tmp_path, 'train', 'images')
  first = _files(tmp_path)
  stamps = {n: os.stat(os.path.join(images, n)).st_mtime_ns for n in os.listdir(images)}
  assert _generate(tmp_path, num_images=6) == path
  assert stamps == {n: os.stat(os.path.join(images, n)).st_mtime_ns for n in os.listdir(images)}
  victim = os.path.join(images, sorted(stamps)[2])
  with open(victim, 'wb') as f:
    f.write(b'broken')
  _generate(tmp_path, num_images=6)
  assert _files(tmp_path) == first                # corrupt content: regenerated identically
  _generate(tmp_path, num_images=4)               # new parameters: regenerated, stale files gone
  assert len(os.listdir(images)) == 4
  with open(path) as f:
    assert len(json.load(f)['images']) == 4
  with open(os.path.join(tmp_path, 'train', 'manifest.json')) as f:
    assert json.load(f)['params']['num_images'] == 4


def test_generate_default_makes_train_and_val(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic, 'DEFAULT_SPLITS', {'train': (5, 0), 'val': (3, 1)})
  paths = synthetic.generate_default(str(tmp_path))
  assert sorted(paths) == ['train', 'val']
  with open(paths['val']) as f:
    assert len(json.load(f)['images']) == 3
  assert synthetic.generate_default(str(tmp_path)) == paths
