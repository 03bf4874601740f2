"""`--mode=predict` on users' folders: one image never costs the others their results.

`predict_folder` runs with a fake detect function (fixed detections of the right shapes, no model
to compile) on copies of tests/data/field_cases/{huge_image_predict,thin_strip_predict} and on
images made here (EXIF-rotated, truncated, not images at all). Decoding the real 180-megapixel
image would take ~15 s and ~10 GB, so a raised limit is checked on the ordinary image, with PIL's
own limit set below it.
"""

import json
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import tiny_config
from conftest import DATA
from PIL import Image, ImageOps

from spinenet_jax.data import preprocess
from spinenet_jax.evaluation import predict as predict_lib

FIELD = os.path.join(DATA, 'field_cases')
ORDINARY_PIXELS = 160 * 120       # b_ordinary.png of both field folders


class FakeDetector:
  """A detect function whose one detection per image covers the resized image exactly.

  Slot 0 of each image is [0, 0, scaled_h, scaled_w] in canvas pixels (scaled = the image's
  resized size, from image_info), score 0.9, class 1; slot 1 is padding (score -1). Mapped back by
  predict, slot 0 must be the whole original image. Records the batches it saw.
  """

  def __init__(self):
    self.batches = []

  def __call__(self, variables, batch):
    self.batches.append(batch)
    info = batch['image_info']
    size = info.shape[0]
    scaled = np.maximum(np.round(info[:, 0] * info[:, 2]), 1.0)   # [B, 2] resized h, w
    boxes = np.zeros((size, 2, 4), np.float32)
    boxes[:, 0, 2:] = scaled
    scores = np.tile(np.array([0.9, -1.0], np.float32), (size, 1))
    classes = np.tile(np.array([1, -1], np.int32), (size, 1))
    return {'detection_boxes': boxes, 'detection_scores': scores, 'detection_classes': classes}


def _config(input_dir, output_dir, **predict):
  config = tiny_config.get_config()
  config.predict.input_dir = str(input_dir)
  config.predict.output_dir = str(output_dir)
  for key, value in predict.items():
    config.predict[key] = value
  return config


def _copy(case: str, dest) -> str:
  """A writable copy of a field-case folder."""
  dest = os.path.join(dest, case)
  os.makedirs(dest)
  for name in os.listdir(os.path.join(FIELD, case)):
    shutil.copyfile(os.path.join(FIELD, case, name), os.path.join(dest, name))
  return dest


def _json(path):
  with open(path) as f:
    return json.load(f)


def _run(tmp_path, input_dir, **predict):
  out = tmp_path / 'out'
  fake = FakeDetector()
  result = predict_lib.predict_folder(_config(input_dir, out, **predict), str(tmp_path), fake, {})
  images = {im['file_name']: im for im in _json(out / 'images.json')}
  by_id = {im['id']: name for name, im in images.items()}
  detections = {}
  for det in _json(out / 'detections.json'):
    detections.setdefault(by_id[det['image_id']], []).append(det)
  skipped = _json(out / 'skipped.json')
  for batch in fake.batches:
    assert batch['images'].shape == (8, 128, 128, 3) and batch['image_info'].shape == (8, 4, 2)
    assert np.isfinite(batch['images']).all() and np.isfinite(batch['image_info']).all()
  return result, images, detections, skipped, out


def _assert_whole_image_detected(images, detections, name, width, height):
  assert images[name]['width'] == width and images[name]['height'] == height
  [det] = detections[name]                              # the padding slot is not a result
  np.testing.assert_allclose(det['bbox'], [0, 0, width, height], rtol=1e-5)
  assert det['category_id'] == 1 and det['score'] == pytest.approx(0.9)


def test_huge_image_is_skipped_by_name_and_the_others_are_predicted(tmp_path, caplog):
  folder = _copy('huge_image_predict', tmp_path)
  with caplog.at_level(logging.INFO, logger=predict_lib.__name__):
    result, images, detections, skipped, out = _run(tmp_path, folder)   # the default limit
  assert list(images) == ['b_ordinary.png']
  _assert_whole_image_detected(images, detections, 'b_ordinary.png', 160, 120)
  assert sorted(os.listdir(out)) == ['b_ordinary.png', 'detections.json', 'images.json',
                                     'skipped.json']
  assert list(skipped) == ['a_orthomosaic.png']
  reason = skipped['a_orthomosaic.png']
  assert '20000x9000' in reason and 'config.predict.max_image_pixels=89478485' in reason
  assert result['skipped'] == 1 and result['skipped_files'] == skipped
  assert result['num_images'] == 1 and result['num_detections'] == 1
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('a_orthomosaic.png' in m and 'max_image_pixels' in m for m in warnings)
  summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Predicted')]
  assert len(summary) == 1 and '1 skipped' in summary[0] and 'a_orthomosaic.png' in summary[0]


def test_max_image_pixels_is_the_limit_and_raising_it_lets_the_image_through(tmp_path,
                                                                             monkeypatch):
  folder = _copy('thin_strip_predict', tmp_path)
  os.remove(os.path.join(folder, 'a_strip.png'))
  result, images, _, skipped, _ = _run(tmp_path, folder, max_image_pixels=ORDINARY_PIXELS - 1)
  assert not images and result['skipped'] == 1
  assert '160x120 is 19200 pixels' in skipped['b_ordinary.png']
  # PIL's own bomb check (here made to refuse anything over 2 * 100 pixels) must not fire when the
  # key lets an image through, and PIL's setting is left as it was.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
  for limit in (ORDINARY_PIXELS, 0, None):
    shutil.rmtree(tmp_path / 'out')
    result, images, detections, skipped, _ = _run(tmp_path, folder, max_image_pixels=limit)
    assert not skipped and result['skipped'] == 0 and not result['not_drawn']
    _assert_whole_image_detected(images, detections, 'b_ordinary.png', 160, 120)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_thin_strip_is_predicted_and_its_boxes_scale_back_to_original_pixels(tmp_path):
  folder = _copy('thin_strip_predict', tmp_path)
  result, images, detections, skipped, out = _run(tmp_path, folder)
  assert not skipped and result['num_images'] == 2
  # 1200 wide, 2 high at 128: the height would round to 0; it is 1 pixel, image_scale 1/2.
  _assert_whole_image_detected(images, detections, 'a_strip.png', 1200, 2)
  _assert_whole_image_detected(images, detections, 'b_ordinary.png', 160, 120)
  with Image.open(out / 'a_strip.png') as drawn:
    assert drawn.size == (1200, 2)


@pytest.mark.parametrize('height, width', [(2, 1200), (1200, 2), (1, 1)])
def test_predict_preparation_of_thin_images(height, width):
  pixels = np.full((height, width, 3), 200, np.uint8)
  image, info = predict_lib._prepare(pixels, tiny_config.get_config())
  assert image.shape == (128, 128, 3) and np.isfinite(image).all()
  scaled = np.round(info[0] * info[2])
  assert (scaled >= 1).all() and scaled.max() == 128
  value = (200 / 255 - np.array(preprocess.MEAN_RGB)) / np.array(preprocess.STDDEV_RGB)
  h, w = scaled.astype(int)
  np.testing.assert_allclose(image[:h, :w], np.broadcast_to(value, (h, w, 3)), atol=1e-5)
  assert not image[h:].any() and not image[:, w:].any()


def test_exif_rotated_jpeg_is_predicted_in_display_orientation(tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  stored = np.full((120, 160, 3), 128, np.uint8)     # stored 160 wide, 120 high
  stored[10:40, 10:50] = (255, 0, 0)                 # red block at the stored top-left
  exif = Image.Exif()
  exif[0x0112] = 6                                   # Orientation: rotate 90 degrees clockwise
  Image.fromarray(stored).save(folder / 'phone.jpg', quality=95, exif=exif)
  fake = FakeDetector()
  config = _config(folder, tmp_path / 'out')
  predict_lib.predict_folder(config, str(tmp_path), fake, {})
  np.testing.assert_allclose(fake.batches[0]['image_info'][0, 0], [160, 120])   # display h, w
  images = {im['file_name']: im for im in _json(tmp_path / 'out' / 'images.json')}
  detections = {'phone.jpg': _json(tmp_path / 'out' / 'detections.json')}
  _assert_whole_image_detected(images, detections, 'phone.jpg', 120, 160)
  with Image.open(tmp_path / 'out' / 'phone.png') as drawn:
    assert drawn.size == (120, 160)
    pixels = np.asarray(drawn.convert('RGB')).astype(int)
  # Rotated clockwise, the stored top-left block is at the display top-right: rows 10:50, columns
  # 80:110 (JPEG blurs the edges; the centre is red).
  np.testing.assert_allclose(pixels[30, 95], (255, 0, 0), atol=40)
  np.testing.assert_allclose(pixels[30, 25], (128, 128, 128), atol=40)


def test_unreadable_truncated_and_failing_images_are_skipped_with_reasons(tmp_path, monkeypatch):
  folder = _copy('thin_strip_predict', tmp_path)
  folder = pathlib.Path(folder)
  data = (folder / 'b_ordinary.png').read_bytes()
  (folder / 'c_truncated.png').write_bytes(data[:len(data) // 2])
  (folder / 'd_text.jpg').write_bytes(b'not an image')
  Image.new('RGB', (77, 33)).save(folder / 'e_fails.png')
  Image.new('RGB', (55, 22)).save(folder / 'f_bad_exif.png')
  resize, transpose = preprocess.resize_and_crop_image, ImageOps.exif_transpose

  def failing_resize(image, *args, **kwargs):
    if image.shape[:2] == (33, 77):
      raise ValueError('planted failure')
    return resize(image, *args, **kwargs)

  def failing_transpose(image, **kwargs):
    if image.size == (55, 22):
      raise SyntaxError('planted EXIF failure')        # what PIL raises for some broken blocks
    return transpose(image, **kwargs)
  monkeypatch.setattr(preprocess, 'resize_and_crop_image', failing_resize)
  monkeypatch.setattr(ImageOps, 'exif_transpose', failing_transpose)
  result, images, detections, skipped, out = _run(tmp_path, folder)
  assert sorted(images) == ['a_strip.png', 'b_ordinary.png']
  _assert_whole_image_detected(images, detections, 'b_ordinary.png', 160, 120)
  assert sorted(skipped) == ['c_truncated.png', 'd_text.jpg', 'e_fails.png', 'f_bad_exif.png']
  assert 'truncated' in skipped['c_truncated.png']
  assert 'not a readable image' in skipped['d_text.jpg']
  assert 'planted failure' in skipped['e_fails.png'] and '77x33' in skipped['e_fails.png']
  assert 'planted EXIF failure' in skipped['f_bad_exif.png']
  assert result['skipped'] == 4
  assert sorted(f for f in os.listdir(out) if f.endswith('.png')) == ['a_strip.png',
                                                                      'b_ordinary.png']


def test_a_drawing_that_fails_keeps_the_detections(tmp_path, monkeypatch):
  folder = _copy('thin_strip_predict', tmp_path)
  draw = predict_lib.draw_detections

  def failing_draw(pixels, *args):
    if pixels.shape[:2] == (2, 1200):
      raise OSError('planted disk full')
    return draw(pixels, *args)
  monkeypatch.setattr(predict_lib, 'draw_detections', failing_draw)
  result, images, detections, skipped, out = _run(tmp_path, folder)
  assert not skipped and result['not_drawn'] == {'a_strip.png': 'OSError: planted disk full'}
  _assert_whole_image_detected(images, detections, 'a_strip.png', 1200, 2)
  assert sorted(f for f in os.listdir(out) if f.endswith('.png')) == ['b_ordinary.png']


class FakeMaskDetector(FakeDetector):
  """FakeDetector plus 28 x 28 masks: slot 0's left half is 1, its right half 0."""

  def __call__(self, variables, batch):
    dets = super().__call__(variables, batch)
    masks = np.zeros((len(batch['images']), 2, 28, 28), np.float32)
    masks[:, 0, :, :14] = 1.0
    return dict(dets, detection_masks=masks)


def test_masks_are_pasted_into_the_json_as_rle_and_drawn(tmp_path):
  from pycocotools import mask as mask_utils
  folder = tmp_path / 'images'
  folder.mkdir()
  pixels = np.full((90, 160, 3), 200, np.uint8)
  Image.fromarray(pixels).save(folder / 'gray.png')
  out = tmp_path / 'out'
  predict_lib.predict_folder(_config(folder, out), str(tmp_path), FakeMaskDetector(), {})
  [det] = _json(out / 'detections.json')
  np.testing.assert_allclose(det['bbox'], [0, 0, 160, 90], rtol=1e-5)
  mask = mask_utils.decode(det['segmentation'])
  assert mask.shape == (90, 160) and det['segmentation']['size'] == [90, 160]
  # The box is the whole image: the left half of the mask covers the left half of the image (but
  # the first column: the official paste's zero border, expanded by 30 / 28, reaches into it).
  assert mask[2:-2, 2:78].all() and not mask[:, 82:].any() and not mask[:, 0].any()
  drawn = np.asarray(Image.open(out / 'gray.png').convert('RGB')).astype(int)
  color = np.array(predict_lib.class_color(1))
  np.testing.assert_allclose(drawn[45, 40], np.round(0.55 * 200 + 0.45 * color), atol=1)
  assert (drawn[45, 120] == 200).all()              # outside the mask and the box outline
