"""Data sources: the COCO-folder TFDS builder (round trip, bad inputs), coco/2017, synthetic."""

import contextlib
import io
import json
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spinenet_jax.data import coco_json, coco_masks, parser, sources, synthetic

CATEGORIES = [{'id': 3, 'name': 'car'}, {'id': 17, 'name': 'cat'}, {'id': 90, 'name': 'toothbrush'}]
PARSER_CONFIG = parser.ParserConfig(output_size=(128, 128))
PYCOCOTOOLS_NUMPY2 = ("ignore:__array__ implementation doesn't accept a copy keyword"
                      ':DeprecationWarning')


def pixels(height, width, channels=3, seed=0):
  shape = (height, width, channels) if channels > 1 else (height, width)
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(array, mode, file_format='PNG'):
  buffer = io.BytesIO()
  Image.fromarray(array, mode).save(buffer, format=file_format, quality=90)
  return buffer.getvalue()


def write_folder(root, images, annotations, categories=CATEGORIES):
  """images: [(id, file name, bytes, (height, width))]; returns (images dir, json path)."""
  images_dir, json_path = root / 'images', root / 'instances.json'
  images_dir.mkdir(parents=True)
  for _, name, data, _ in images:
    (images_dir / name).write_bytes(data)
  anns = [{'id': k + 1, 'iscrowd': 0, 'area': 10.0, **a} for k, a in enumerate(annotations)]
  dataset = {'images': [{'id': i, 'file_name': n, 'height': hw[0], 'width': hw[1]}
                        for i, n, _, hw in images],
             'annotations': anns, 'categories': categories}
  json_path.write_text(json.dumps(dataset))
  return str(images_dir), str(json_path)


def build(tmp_path, images, annotations, categories=CATEGORIES):
  """Prepares a one-split folder; returns (builder, {image id: numpy example})."""
  paths = write_folder(tmp_path / 'src', images, annotations, categories)
  builder = sources.build_coco_folder('t', {'train': paths}, str(tmp_path / 'tfds'))
  builder.download_and_prepare()
  examples = tfds.as_numpy(builder.as_dataset(split='train'))
  return builder, {int(ex['image/id']): ex for ex in examples}


def pixel_boxes(example):
  height, width = example['image'].shape[:2]
  return example['objects']['bbox'] * np.array([height, width, height, width])


def test_round_trip(tmp_path):
  rgb, gray, rgba = pixels(40, 60), pixels(30, 50, 1, 1), pixels(20, 24, 4, 2)
  jpeg = encode(pixels(32, 48, 3, 3), 'RGB', 'JPEG')
  images = [(7, 'a.png', encode(rgb, 'RGB'), (40, 60)), (9, 'b.png', encode(gray, 'L'), (30, 50)),
            (11, 'c.png', encode(rgba, 'RGBA'), (20, 24)), (12, 'd.jpg', jpeg, (32, 48))]
  annotations = [
      {'image_id': 7, 'bbox': [1.5, 2.25, 30.0, 20.5], 'category_id': 17, 'area': 321.5},
      {'image_id': 7, 'bbox': [0, 0, 60, 40], 'category_id': 90, 'iscrowd': 1},
      {'image_id': 9, 'bbox': [10, 5, 7, 3], 'category_id': 3},
      {'image_id': 11, 'bbox': [2, 3, 4, 5], 'category_id': 3},
      {'image_id': 12, 'bbox': [2, 3, 40, 5], 'category_id': 17}]
  builder, examples = build(tmp_path, images, annotations)
  assert sorted(examples) == [7, 9, 11, 12]
  for image_id in examples:
    ex, anns = examples[image_id], [a for a in annotations if a['image_id'] == image_id]
    x, y, w, h = np.array([a['bbox'] for a in anns], np.float64).T
    np.testing.assert_allclose(pixel_boxes(ex), np.stack([y, x, y + h, x + w], 1), atol=1e-4)
    np.testing.assert_array_equal(ex['objects']['label'], [a['category_id'] for a in anns])
    np.testing.assert_array_equal(ex['objects']['is_crowd'], [bool(a.get('iscrowd')) for a in anns])
  ex = examples[7]
  assert ex['image/filename'] == b'a.png'
  np.testing.assert_array_equal(ex['objects']['id'], [1, 2])
  np.testing.assert_allclose(ex['objects']['area'], [321.5, 10.0])
  np.testing.assert_array_equal(ex['image'], rgb)
  np.testing.assert_array_equal(examples[9]['image'], np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(examples[11]['image'], rgba[..., :3])
  # RGB JPEGs are stored as they are (no recompression) and decoded by TF, as TFDS coco does.
  np.testing.assert_array_equal(examples[12]['image'], tf.io.decode_jpeg(jpeg).numpy())
  assert sources.folder_categories(builder) == {3: 'car', 17: 'cat', 90: 'toothbrush'}
  assert sources.folder_num_classes(builder) == 91
  assert builder.stats['train'].converted_images == 2


def one_good_image():
  return (1, 'good.png', encode(pixels(16, 16), 'RGB'), (16, 16))


@pytest.mark.parametrize('kind', ['corrupt', 'truncated_jpeg', 'empty_file'])
def test_unreadable_image_is_skipped(tmp_path, caplog, kind):
  jpeg = encode(pixels(64, 64), 'RGB', 'JPEG')
  data = {'corrupt': b'\x89PNG\r\n\x1a\n this is not a png',
          'truncated_jpeg': jpeg[:len(jpeg) // 2], 'empty_file': b''}[kind]
  images = [one_good_image(), (2, 'bad.jpg', data, (64, 64))]
  annotations = [{'image_id': 2, 'bbox': [1, 1, 5, 5], 'category_id': 3}]
  with caplog.at_level(logging.INFO, logger=sources.__name__):
    builder, examples = build(tmp_path, images, annotations)
  assert sorted(examples) == [1]
  assert builder.stats['train'].skipped_images == 1
  assert builder.stats['train'].images == 1
  assert any('bad.jpg' in r.getMessage() and 'skipped' in r.getMessage() for r in caplog.records)
  assert any("'skipped_images': 1" in r.getMessage() for r in caplog.records)  # the summary


def _add_images(json_path, *images):
  with open(json_path) as f:
    dataset = json.load(f)
  dataset['images'].extend(images)
  with open(json_path, 'w') as f:
    json.dump(dataset, f)


def test_missing_file_is_skipped(tmp_path):
  paths = write_folder(tmp_path / 'src', [one_good_image()], [])
  _add_images(paths[1], {'id': 2, 'file_name': 'gone.png', 'height': 8, 'width': 8})
  builder = sources.build_coco_folder('t', {'train': paths}, str(tmp_path / 'tfds'))
  builder.download_and_prepare()
  assert builder.stats['train'].skipped_images == 1
  assert builder.info.splits['train'].num_examples == 1


def test_duplicate_image_id_is_refused_naming_both_files(tmp_path):
  paths = write_folder(tmp_path / 'src', [one_good_image()], [])
  _add_images(paths[1], {'id': 1, 'file_name': 'twice.png', 'height': 16, 'width': 16})
  builder = sources.build_coco_folder('t', {'train': paths}, str(tmp_path / 'tfds'))
  with pytest.raises(coco_json.DatasetError, match='image id 1 .*good.png, twice.png'):
    builder.download_and_prepare()


@pytest.mark.parametrize('file_format', ['PNG', 'JPEG'])
def test_grayscale_image_is_converted(tmp_path, caplog, file_format):
  data = encode(pixels(24, 40, 1), 'L', file_format)
  with caplog.at_level(logging.INFO, logger=sources.__name__):
    builder, examples = build(tmp_path, [(1, 'g.img', data, (24, 40))], [])
  expected = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert examples[1]['image'].shape == (24, 40, 3)
  np.testing.assert_array_equal(examples[1]['image'], expected)
  assert builder.stats['train'].converted_images == 1
  assert any('g.img' in r.getMessage() and 'converted' in r.getMessage() for r in caplog.records)


def test_rgba_and_palette_png_are_converted(tmp_path):
  rgba = pixels(20, 30, 4)
  palette = Image.fromarray(pixels(20, 30, 3, 1), 'RGB').convert('P', palette=Image.ADAPTIVE)
  buffer = io.BytesIO()
  palette.save(buffer, format='PNG')
  images = [(1, 'rgba.png', encode(rgba, 'RGBA'), (20, 30)),
            (2, 'p.png', buffer.getvalue(), (20, 30))]
  builder, examples = build(tmp_path, images, [])
  np.testing.assert_array_equal(examples[1]['image'], rgba[..., :3])
  np.testing.assert_array_equal(examples[2]['image'], np.asarray(palette.convert('RGB')))
  assert builder.stats['train'].converted_images == 2


def test_zero_area_box_is_dropped(tmp_path, caplog):
  annotations = [{'image_id': 1, 'bbox': [3, 4, 0, 5], 'category_id': 3, 'id': 41},
                 {'image_id': 1, 'bbox': [3, 4, 6, 0], 'category_id': 3, 'id': 42},
                 {'image_id': 1, 'bbox': [3, 4, 6, 5], 'category_id': 17, 'id': 43}]
  with caplog.at_level(logging.INFO, logger=sources.__name__):
    builder, examples = build(tmp_path, [one_good_image()], annotations)
  np.testing.assert_array_equal(examples[1]['objects']['id'], [43])
  assert builder.stats['train'].dropped_boxes == 2
  assert sum('good.png' in r.getMessage() and 'dropped' in r.getMessage()
             for r in caplog.records) == 2


def test_out_of_image_box_is_clipped_or_dropped(tmp_path):
  annotations = [{'image_id': 1, 'bbox': [-4, 10, 10, 20], 'category_id': 3},   # clipped
                 {'image_id': 1, 'bbox': [20, 2, 5, 5], 'category_id': 3}]     # outside: dropped
  builder, examples = build(tmp_path, [one_good_image()], annotations)
  np.testing.assert_allclose(pixel_boxes(examples[1]), [[10, 0, 16, 6]], atol=1e-5)
  stats = builder.stats['train']
  assert (stats.clipped_boxes, stats.dropped_boxes) == (1, 1)


def test_unknown_category_is_refused(tmp_path):
  annotations = [{'image_id': 1, 'bbox': [2, 2, 5, 5], 'category_id': 55, 'id': 8}]
  with pytest.raises(coco_json.DatasetError, match='ids 8.*category_id 55'):
    build(tmp_path, [one_good_image()], annotations)


def test_image_without_objects_is_kept(tmp_path):
  builder, examples = build(tmp_path, [one_good_image()], [])
  objects = examples[1]['objects']
  assert objects['bbox'].shape == (0, 4) and objects['label'].shape == (0,)
  assert builder.stats['train'].images_without_objects == 1
  out = parser.parse_train(tf.data.Dataset.from_tensors(examples[1]).get_single_element(),
                           tf.constant([0, 0]), PARSER_CONFIG)
  np.testing.assert_array_equal(out['gt_classes'], -1)


def test_crowd_only_image_is_kept(tmp_path):
  annotations = [{'image_id': 1, 'bbox': [1, 1, 8, 8], 'category_id': 90, 'iscrowd': 1}]
  builder, examples = build(tmp_path, [one_good_image()], annotations)
  np.testing.assert_array_equal(examples[1]['objects']['is_crowd'], [True])
  assert builder.stats['train'].crowd_only_images == 1


def test_wrong_paths_fail_before_generation(tmp_path):
  images_dir, json_path = write_folder(tmp_path / 'src', [one_good_image()], [])
  cases = {'missing_dir': (str(tmp_path / 'nope' / 'images'), json_path),
           'missing_json': (images_dir, str(tmp_path / 'nope.json'))}
  for name, (bad_dir, bad_json) in cases.items():
    splits = {'train': (images_dir, json_path), 'val': (bad_dir, bad_json)}
    builder = sources.build_coco_folder(name, splits, str(tmp_path / 'tfds'))
    missing = bad_dir if name == 'missing_dir' else bad_json
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
      builder.download_and_prepare()
    assert builder.stats == {}  # not even the good split was generated
    assert not builder.is_prepared()


def test_coco2017_labels_are_coco_ids_and_parse(tmp_path):
  assert len(sources.COCO_CATEGORY_IDS) == 80 and sources.COCO_CATEGORY_IDS[-1] == 90
  (tmp_path / 'coco' / '2017').mkdir(parents=True)
  with tfds.testing.mock_data(num_examples=2):
    dataset = sources.load_coco2017('train', str(tmp_path))
    examples = list(dataset.take(2))
  for example in examples:
    labels = example['objects']['label'].numpy()
    assert labels.dtype == np.int64 and np.isin(labels, sources.COCO_CATEGORY_IDS).all()
    assert example['objects']['area'].dtype == tf.float32   # int64 in TFDS coco
    out = parser.parse_train(consistent_objects(example), tf.constant([0, 0]), PARSER_CONFIG)
    assert out['images'].shape == (128, 128, 3)
    assert np.isin(out['gt_classes'].numpy(), [-1, *sources.COCO_CATEGORY_IDS]).all()
    out = parser.parse_eval(consistent_objects(example), PARSER_CONFIG)
    assert out['gt_areas'].dtype == tf.float32 and out['gt_areas'].shape == (100,)


def consistent_objects(example):
  """Mock examples draw each object field's length independently: cut them to a common length."""
  objects = example['objects']
  n = min(int(tf.shape(v)[0]) for v in objects.values())
  return {**example, 'objects': {k: v[:n] for k, v in objects.items()}}


def test_coco2017_missing_data_dir_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'coco' / '2017'))):
    sources.load_coco2017('train', str(tmp_path))


def test_synthetic_source_parses(tmp_path):
  dataset = sources.load_synthetic('train', str(tmp_path / 'synth'), str(tmp_path / 'tfds'),
                                   num_images=6, seed=3)
  ids = set(synthetic.category_names())
  count = 0
  for example in dataset:
    assert np.isin(example['objects']['label'].numpy(), list(ids)).all()
    out = parser.parse_train(example, tf.constant([0, count]), PARSER_CONFIG)
    assert out['images'].shape == (128, 128, 3)
    count += 1
  assert count == 6


# Instance masks (include_masks)


def mask_annotations(height, width):
  """Every COCO segmentation kind, one undecodable of each sort, and one empty mask."""
  blob = np.zeros((height, width), np.uint8)
  blob[3:9, 20:26] = 1
  blob[5, 27:30] = 1
  compressed = mask_utils.encode(np.asfortranarray(blob[::-1]))
  compressed['counts'] = compressed['counts'].decode('ascii')
  good = [
      {'id': 1, 'bbox': [2, 2, 28, 13], 'category_id': 3,           # two polygons, unioned
       'segmentation': [[2, 2, 12, 2, 12, 10, 2, 10], [20, 5, 30, 5, 25, 15]]},
      {'id': 2, 'bbox': [20, 3, 10, 6], 'category_id': 17, 'iscrowd': 1,
       'segmentation': coco_masks.uncompressed_rle(blob)},          # crowd: uncompressed RLE
      {'id': 3, 'bbox': [20, 21, 10, 6], 'category_id': 17, 'segmentation': compressed},
      {'id': 4, 'bbox': [0, 0, 10, 8], 'category_id': 90,           # reaches out of the image
       'segmentation': [[-5, -5, 10, -5, 10, 8, -5, 8]]},
      {'id': 8, 'bbox': [1, 1, 3, 3], 'category_id': 3,             # no pixel inside the image
       'segmentation': [[50, 50, 60, 50, 60, 60]]}]
  bad = [{'id': 5, 'bbox': [1, 1, 5, 5], 'category_id': 3, 'segmentation': 'junk'},
         {'id': 6, 'bbox': [1, 1, 5, 5], 'category_id': 3,
          'segmentation': {'counts': [0, 12], 'size': [3, 4]}},
         {'id': 7, 'bbox': [1, 1, 5, 5], 'category_id': 3}]
  return [{'image_id': 1, **a} for a in good + bad]


def coco_api(json_path):
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(json_path)


def assert_masks_equal_ann_to_mask(example, coco):
  masks = example['objects']['mask']   # [0, 0, 0, 1] for an image without objects
  assert masks.dtype == np.uint8 and len(masks) == len(example['objects']['id'])
  assert not len(masks) or masks.shape[1:] == (*example['image'].shape[:2], 1)
  for mask, ann_id in zip(masks, example['objects']['id']):
    np.testing.assert_array_equal(mask[..., 0], coco.annToMask(coco.anns[int(ann_id)]))


@pytest.mark.filterwarnings(PYCOCOTOOLS_NUMPY2)
def test_masks_round_trip_and_bad_segmentations(tmp_path, caplog):
  images = [(1, 'a.png', encode(pixels(30, 40), 'RGB'), (30, 40)),
            (2, 'b.png', encode(pixels(16, 16), 'RGB'), (16, 16))]
  paths = write_folder(tmp_path / 'src', images, mask_annotations(30, 40))
  with caplog.at_level(logging.INFO, logger=sources.__name__):
    builder = sources.build_coco_folder('t', {'train': paths}, str(tmp_path / 'tfds'),
                                        include_masks=True)
    builder.download_and_prepare()
  examples = {int(ex['image/id']): ex for ex in tfds.as_numpy(builder.as_dataset(split='train'))}
  np.testing.assert_array_equal(examples[1]['objects']['id'], [1, 2, 3, 4, 8])
  assert_masks_equal_ann_to_mask(examples[1], coco_api(paths[1]))
  assert examples[2]['objects']['mask'].shape[0] == 0
  stats = builder.stats['train']
  assert (stats.bad_masks, stats.empty_masks, stats.dropped_boxes) == (3, 1, 0)
  for ann_id in (5, 6, 7):
    assert any('a.png' in r.getMessage() and f'annotation {ann_id} dropped: bad segmentation'
               in r.getMessage() for r in caplog.records)
  # Off by default: no feature, segmentations not even read.
  plain = sources.build_coco_folder('t', {'train': paths}, str(tmp_path / 'tfds'))
  assert 'mask' not in plain.info.features['objects'].feature
  plain.download_and_prepare()
  assert plain.stats['train'].bad_masks == 0
  plain_examples = tfds.as_numpy(plain.as_dataset(split='train'))
  ids = {int(ex['image/id']): sorted(ex['objects']['id'].tolist()) for ex in plain_examples}
  assert ids == {1: [1, 2, 3, 4, 5, 6, 7, 8], 2: []}


@pytest.mark.filterwarnings(PYCOCOTOOLS_NUMPY2)
def test_synthetic_masks_equal_ann_to_mask(tmp_path):
  dataset = sources.load_synthetic('train', str(tmp_path / 'synth'), str(tmp_path / 'tfds'),
                                   num_images=6, seed=2, include_masks=True)
  coco = coco_api(str(tmp_path / 'synth' / 'annotations' / 'instances_train.json'))
  config = parser.ParserConfig(output_size=(128, 128), include_masks=True, mask_crop_size=28)
  crowds = 0
  for i, example in enumerate(dataset):
    assert_masks_equal_ann_to_mask(tf.nest.map_structure(lambda t: t.numpy(), example), coco)
    crowds += int(example['objects']['is_crowd'].numpy().sum())
    out = parser.parse_train(example, tf.constant([0, i]), config)
    valid = out['gt_classes'].numpy() > 0
    assert out['gt_masks'].shape == (100, 28, 28)
    masks = out['gt_masks'].numpy()
    assert (masks[valid] >= 0).all() and (masks[~valid] == -1).all()
  assert crowds > 0   # polygons and RLE both checked
