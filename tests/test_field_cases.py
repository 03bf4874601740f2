"""Users' real data: each kind of input in tests/data/field_cases (README there) behaves as its
"what it should do" column says. Predict cases (huge image, thin strip) are in test_predict.py;
the documented custom-dataset command end to end is in test_custom_dataset.py."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tiny_config
from conftest import ROOT

from spinenet_jax.data import coco_json, datasets
from spinenet_jax.evaluation import coco_eval
from spinenet_jax.training import modes

CASES = os.path.join(ROOT, 'tests', 'data', 'field_cases')


def case(name, *parts):
  return os.path.join(CASES, name, *parts)


def folder_config(tmp_path, name, json_name='train.json', images='train', eval_json=None,
                  eval_images=None):
  config = tiny_config.get_config()
  d = config.data
  d.source = 'coco_folder'
  d.tfds_data_dir = str(tmp_path / 'tfds')
  d.train_images, d.train_annotations = case(name, images), case(name, 'annotations', json_name)
  d.eval_images = case(name, eval_images or images)
  d.eval_annotations = case(name, 'annotations', eval_json or json_name)
  config.model.head.num_classes = 4
  config.eval.num_images = None
  return config


def examples(split):
  return {int(ex['image/id']): ex for ex in tfds.as_numpy(split.dataset)}


def colour_at_box_centres(example):
  """The RGB at the centre of each stored (normalized) box."""
  height, width = example['image'].shape[:2]
  out = []
  for ymin, xmin, ymax, xmax in example['objects']['bbox']:
    y, x = int((ymin + ymax) / 2 * height), int((xmin + xmax) / 2 * width)
    out.append(example['image'][y, x].astype(int))
  return np.array(out)


def expected_colours(name):
  with open(case(name, 'expect.json')) as f:
    return {o['id']: o['colour'] for o in json.load(f)['objects']}


# Refused before training: the run stops, naming the id and the fix.


def test_category_ids_beyond_num_classes_stop_before_training(tmp_path):
  config = folder_config(tmp_path, 'category_ids_beyond_num_classes')
  with pytest.raises(coco_json.DatasetError,
                     match=r"category id\(s\) 7 \('yellow'\).*config.model.head.num_classes=4.*"
                           r"Set config.model.head.num_classes=8"):
    modes.run(config, str(tmp_path / 'w'), 'train')
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')   # nothing trained, nothing built
  assert not os.path.exists(tmp_path / 'tfds')


def test_category_id_zero_is_refused_with_the_shift(tmp_path):
  config = folder_config(tmp_path, 'category_id_zero')
  with pytest.raises(coco_json.DatasetError, match=r"category id 0 \('cat'\).*background.*by 1"):
    modes.run(config, str(tmp_path / 'w'), 'train')


def test_duplicate_image_ids_name_both_files(tmp_path):
  config = folder_config(tmp_path, 'duplicate_image_ids', images='images')
  with pytest.raises(coco_json.DatasetError,
                     match='image id 5 is used by 2 files: partA_0001.png, partB_0001.png'):
    datasets.load_split(config, 'train', str(tmp_path), 4)


# Repaired (counted, logged) with the right result.


def test_exif_orientation_is_applied(tmp_path):
  config = folder_config(tmp_path, 'exif_orientation', images='images')
  ex = examples(datasets.load_split(config, 'train', str(tmp_path), 4))[1]
  assert ex['image'].shape == (160, 120, 3)          # display orientation, as the json
  colours = expected_colours('exif_orientation')
  np.testing.assert_allclose(colour_at_box_centres(ex), [colours[i] for i in ex['objects']['id']],
                             atol=12)


def test_exif_orientation_ignored_when_the_json_matches_the_stored_pixels():
  geometry = coco_json.image_geometry((120, 160), (120, 160), 6)
  assert (geometry.size, geometry.apply_exif, geometry.kind) == ((120, 160), False,
                                                                 'exif_ignored')


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
  config = folder_config(tmp_path, 'cmyk_jpeg', images='images')
  ex = examples(datasets.load_split(config, 'train', str(tmp_path), 4))[1]
  colours = expected_colours('cmyk_jpeg')
  np.testing.assert_allclose(colour_at_box_centres(ex), [colours[i] for i in ex['objects']['id']],
                             atol=12)


def test_rescaled_file_gets_rescaled_boxes(tmp_path, caplog):
  config = folder_config(tmp_path, 'json_size_mismatch', images='images')
  with caplog.at_level(logging.INFO):
    ex = examples(datasets.load_split(config, 'train', str(tmp_path), 4))[1]
  assert ex['image'].shape == (96, 128, 3)
  boxes = ex['objects']['bbox'] * np.array([96, 128, 96, 128])
  np.testing.assert_allclose(boxes, [[10, 10, 40, 50], [50, 75, 85, 115]], atol=1e-4)
  np.testing.assert_array_equal(colour_at_box_centres(ex), [[220, 40, 40], [40, 200, 60]])
  assert any('shrunk_0001.png' in r.getMessage() and 'rescaled' in r.getMessage()
             for r in caplog.records)


@pytest.mark.parametrize('json_size, raw, orientation, expected', [
    ((192, 256), (96, 128), 1, ((96, 128), False, (0.5, 0.5), 'rescaled')),
    ((100, 301), (50, 150), 1, ((50, 150), False, (0.5, 150 / 301), 'rescaled')),  # rounded
    ((160, 120), (60, 80), 6, ((80, 60), True, (0.5, 0.5), 'rescaled')),    # rotated and shrunk
    ((100, 100), (50, 80), 1, ((50, 80), False, (1.0, 1.0), 'size_mismatch')),
    ((None, None), (50, 80), 1, ((50, 80), False, (1.0, 1.0), 'no_size')),
    ((50, 80), (50, 80), 1, ((50, 80), False, (1.0, 1.0), None)),
    ((80, 50), (50, 80), 8, ((80, 50), True, (1.0, 1.0), 'exif_applied')),
])
def test_image_geometry_regimes(json_size, raw, orientation, expected):
  g = coco_json.image_geometry(json_size, raw, orientation)
  assert (g.size, g.apply_exif, g.scale, g.kind) == expected


def test_string_image_ids_are_mapped_and_kept_for_results(tmp_path):
  config = folder_config(tmp_path, 'string_image_ids')
  split = datasets.load_split(config, 'eval', str(tmp_path), 4)
  exs = examples(split)
  assert sorted(exs) == [1, 2, 3]
  evaluator = coco_eval.CocoEvaluator(split.groundtruth)
  _perfect_detections(evaluator, split.groundtruth)
  assert evaluator.evaluate()['AP'] == pytest.approx(1.0)
  assert {d['image_id'] for d in evaluator.results()} == {'cam1_0001', 'cam1_0002', 'cam1_0003'}


def _perfect_detections(evaluator, groundtruth):
  """Feeds the ground truth boxes as detections (scale 1, one image per batch)."""
  for image in groundtruth['images']:
    anns = [a for a in groundtruth['annotations'] if a['image_id'] == image['id']]
    x, y, w, h = np.array([a['bbox'] for a in anns]).T
    dets = {'detection_boxes': np.stack([y, x, y + h, x + w], -1)[None],
            'detection_scores': np.ones((1, len(anns))),
            'detection_classes': np.array([[a['category_id'] for a in anns]])}
    info = np.array([[[image['height'], image['width']], [1, 1], [1, 1], [0, 0]]], np.float32)
    evaluator.update(dets, info, np.array([image['id']]))


def test_json_without_iscrowd_and_area_evaluates(tmp_path):
  path = case('json_without_iscrowd_area', 'annotations', 'val.json')
  evaluator = coco_eval.CocoEvaluator(path)     # checks and defaults before any inference
  gt = evaluator.groundtruth
  assert all(a['iscrowd'] == 0 for a in gt['annotations'])
  # The area of a rectangle polygon is its box's (COCO's area is the segmentation's).
  assert [a['area'] for a in gt['annotations']] == [a['bbox'][2] * a['bbox'][3]
                                                     for a in gt['annotations']]
  _perfect_detections(evaluator, gt)
  assert evaluator.evaluate()['AP'] == pytest.approx(1.0)


def test_evaluation_json_problems_are_reported_before_inference(tmp_path):
  path = tmp_path / 'val.json'
  path.write_text(json.dumps({'images': [{'id': 1, 'file_name': 'a.png'}], 'annotations': [
      {'id': 1, 'image_id': 1, 'category_id': 9, 'bbox': [0, 0, 4, 4]}]}))
  with pytest.raises(coco_json.DatasetError, match='no list .categories.'):
    coco_eval.CocoEvaluator(str(path))
  path.write_text(json.dumps({'images': [{'id': 1, 'file_name': 'a.png'}], 'categories': [
      {'id': 1, 'name': 'a'}], 'annotations': [
          {'id': 1, 'image_id': 1, 'category_id': 9, 'bbox': [0, 0, 4, 4]}]}))
  with pytest.raises(coco_json.DatasetError, match='ids 1.*category_id 9'):
    coco_eval.CocoEvaluator(str(path))


def test_objects_beyond_max_num_instances_are_counted_and_named(tmp_path, caplog):
  config = folder_config(tmp_path, 'over_100_objects', images='images')
  config.input.max_num_instances = 100
  with caplog.at_level(logging.INFO):
    split = datasets.load_split(config, 'train', str(tmp_path), 4)
  assert len(examples(split)[1]['objects']['id']) == 150      # all stored
  messages = [r.getMessage() for r in caplog.records]
  assert any('shelf_0001.png' in m and '50 beyond config.input.max_num_instances=100' in m
             for m in messages)
  assert any('objects beyond config.input.max_num_instances=100' in m and ': 50' in m
             for m in messages)


def test_stale_prepared_dataset_is_rebuilt(tmp_path, caplog):
  src = tmp_path / 'src'
  shutil.copytree(case('stale_prepared_dataset'), src)
  config = folder_config(tmp_path, 'stale_prepared_dataset')
  config.data.train_images = str(src / 'train')
  config.data.train_annotations = str(src / 'annotations' / 'train.json')
  expected = json.loads((src / 'expect.json').read_text())
  counts = {}
  for version in ('v1', 'v2'):
    shutil.copy(src / 'annotations' / f'train_{version}.json', src / 'annotations' / 'train.json')
    with caplog.at_level(logging.WARNING):
      split = datasets.load_split(config, 'train', str(tmp_path), 4)
    counts[version] = sum(len(ex['objects']['id']) for ex in examples(split).values())
  assert counts == {'v1': expected['v1_objects'], 'v2': expected['v2_objects']}
  assert any('changed since' in r.getMessage() for r in caplog.records)
  # An image edited in place (same json) is noticed too.
  image = src / 'train' / 'train_000.png'
  os.utime(image, ns=(0, 0))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    datasets.load_split(config, 'train', str(tmp_path), 4)
  assert any('changed since' in r.getMessage() for r in caplog.records)


def test_annotation_id_zero_is_renumbered_so_its_match_counts(tmp_path):
  """pycocotools marks a matched detection by its ground truth's id: id 0 would read as a miss."""
  path = tmp_path / 'val.json'
  path.write_text(json.dumps({
      'images': [{'id': 1, 'file_name': 'a.png', 'height': 50, 'width': 50}],
      'categories': [{'id': 1, 'name': 'a'}],
      'annotations': [{'id': 0, 'image_id': 1, 'category_id': 1, 'bbox': [5, 5, 20, 20]},
                      {'id': 0, 'image_id': 1, 'category_id': 1, 'bbox': [28, 28, 20, 20]}]}))
  evaluator = coco_eval.CocoEvaluator(str(path))
  assert [a['id'] for a in evaluator.groundtruth['annotations']] == [1, 2]
  _perfect_detections(evaluator, evaluator.groundtruth)
  assert evaluator.evaluate()['AP'] == pytest.approx(1.0)


# Kinds found by trying the workflow as a user (the review of the first version).


def base_json(split='train'):
  with open(case('base', 'annotations', f'{split}.json')) as f:
    return json.load(f)


def write_json(tmp_path, dataset, name='edited.json'):
  path = tmp_path / name
  path.write_text(json.dumps(dataset))
  return str(path)


def test_image_id_of_another_type_is_matched_and_unknown_ones_are_refused(tmp_path):
  dataset = base_json()
  for ann in dataset['annotations']:
    ann['image_id'] = str(ann['image_id'])          # "1" for the image id 1
  normalized, report = coco_json.normalize(write_json(tmp_path, dataset))
  assert len(normalized['annotations']) == len(dataset['annotations'])
  assert any('matched as text' in k for k in report.counts)
  dataset['annotations'][0]['image_id'] = 'nope'
  with pytest.raises(coco_json.DatasetError, match=r"1 annotations \(ids 1\) have an image_id"):
    coco_json.normalize(write_json(tmp_path, dataset))


@pytest.mark.parametrize('annotations', [None, {}, 'missing'])
def test_json_without_an_annotations_list_is_refused(tmp_path, annotations):
  dataset = base_json()
  if annotations == 'missing':
    del dataset['annotations']
  else:
    dataset['annotations'] = annotations
  with pytest.raises(coco_json.DatasetError, match='no list .annotations.'):
    coco_json.normalize(write_json(tmp_path, dataset))


def test_training_json_without_objects_is_refused(tmp_path):
  dataset = dict(base_json(), annotations=[])
  config = folder_config(tmp_path, 'base')
  config.data.train_annotations = write_json(tmp_path, dataset)
  with pytest.raises(coco_json.DatasetError, match='no object is left to train on'):
    datasets.load_split(config, 'train', str(tmp_path), 4)


def test_file_names_relative_to_another_folder_are_refused(tmp_path):
  dataset = base_json()
  for image in dataset['images']:
    image['file_name'] = 'train/' + image['file_name']
  with pytest.raises(coco_json.DatasetError,
                     match=r'none of its 8 images can be read .*train/train/train_000.png'):
    coco_json.normalize(write_json(tmp_path, dataset), case('base', 'train'))


def test_duplicate_and_unhashable_category_ids_are_refused(tmp_path):
  dataset = base_json()
  dataset['categories'].append({'id': 1, 'name': 'dup'})
  with pytest.raises(coco_json.DatasetError, match="id 1 is listed twice, as 'red' and 'dup'"):
    coco_json.normalize(write_json(tmp_path, dataset))
  dataset = base_json()
  dataset['annotations'][0]['category_id'] = [1]
  with pytest.raises(coco_json.DatasetError, match=r'category_id \[1\]'):
    coco_json.normalize(write_json(tmp_path, dataset))


def test_swapped_category_ids_between_train_and_eval_are_refused(tmp_path):
  config = folder_config(tmp_path, 'base', eval_json='val.json', eval_images='val')
  swapped = base_json('val')
  swapped['categories'] = [{'id': 1, 'name': 'green'}, {'id': 2, 'name': 'red'},
                           {'id': 3, 'name': 'blue'}]
  config.data.eval_annotations = write_json(tmp_path, swapped)
  train = datasets.load_split(config, 'train', str(tmp_path), 4)
  evaluation = datasets.load_split(config, 'eval', str(tmp_path), 4)
  with pytest.raises(coco_json.DatasetError, match="'red' \\(1 in train, 2 in eval\\)"):
    datasets.check_categories(train, evaluation)


def test_eval_annotation_file_override_uses_the_folders_image_ids(tmp_path):
  """String ids map to 1..N in each json's own order: an override listing the images in another
  order is aligned by file name; one lacking images is refused before any inference."""
  src = tmp_path / 'src'
  shutil.copytree(case('string_image_ids'), src)
  config = folder_config(tmp_path, 'string_image_ids')
  config.data.eval_images = str(src / 'train')
  config.data.eval_annotations = str(src / 'annotations' / 'train.json')
  dataset = json.loads((src / 'annotations' / 'train.json').read_text())
  reversed_json = dict(dataset, images=dataset['images'][::-1])
  config.eval.annotation_file = write_json(tmp_path, reversed_json, 'override.json')
  split = datasets.load_split(config, 'eval', str(tmp_path), 4)
  names = {int(ex['image/id']): ex['image/filename'].decode() for ex in examples(split).values()}
  assert {i['id']: i['file_name'] for i in split.groundtruth['images']} == names
  subset = dict(dataset, images=dataset['images'][:2])
  subset['annotations'] = [a for a in dataset['annotations']
                           if a['image_id'] in {i['id'] for i in subset['images']}]
  config.eval.annotation_file = write_json(tmp_path, subset, 'subset.json')
  with pytest.raises(coco_json.DatasetError, match='lacks 1 of the evaluation images'):
    datasets.load_split(config, 'eval', str(tmp_path), 4)


def test_saved_detections_are_in_the_jsons_pixels_for_a_rescaled_file(tmp_path):
  config = folder_config(tmp_path, 'json_size_mismatch', images='images')
  split = datasets.load_split(config, 'eval', str(tmp_path), 4)
  evaluator = coco_eval.CocoEvaluator(split.groundtruth)
  _perfect_detections(evaluator, split.groundtruth)
  assert evaluator.evaluate()['AP'] == pytest.approx(1.0)
  with open(case('json_size_mismatch', 'annotations', 'train.json')) as f:
    boxes = sorted(a['bbox'] for a in json.load(f)['annotations'])
  np.testing.assert_allclose(sorted(d['bbox'] for d in evaluator.results()), boxes)
