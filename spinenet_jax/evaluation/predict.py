"""Predictions on a folder of images: COCO-format detections json plus drawn PNGs.

    python main.py --mode=predict --config=configs/demo.py --workdir=DIR \
        --config.predict.input_dir=IMAGES [--config.init_checkpoint=MODEL_DIR]

Images are prepared as the evaluation parser does (normalize, resize the long side to the input
size, zero pad), and the boxes are scaled back to original pixels. Files that cannot be read as
images are logged by name, counted and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from spinenet_jax.data import datasets, preprocess

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


def _read(path: str) -> np.ndarray | None:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:
    log.warning('Skipping %s: not a readable image (%s).', path, e)
    return None


def _prepare(pixels: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
  pc = datasets.parser_config(config)
  image, info = preprocess.resize_and_crop_image(
      preprocess.normalize_image(tf.constant(pixels)), pc.output_size, pc.padded_size)
  return image.numpy(), info.numpy()


def image_files(config) -> list[str]:
  """The image file names of `config.predict.input_dir`, sorted; raises FileNotFoundError (naming
  the key) when it is not a folder or holds no images. Cheap: call it before loading a model."""
  input_dir = config.predict.input_dir
  if not input_dir or not os.path.isdir(input_dir):
    raise FileNotFoundError(f'config.predict.input_dir={input_dir!r} is not a folder of images.')
  files = sorted(f for f in os.listdir(input_dir) if f.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise FileNotFoundError(f'No {"/".join(IMAGE_SUFFIXES)} files in {input_dir}.')
  return files


def predict_folder(config, workdir: str, predict: Callable[[dict, dict], dict],
                   variables: dict) -> dict:
  """Runs `predict(variables, batch)` (a jitted detect function at the config's input size) on
  every image of `config.predict.input_dir`; writes `detections.json` (COCO results, original
  pixels), `images.json` and one PNG per image with the detections drawn.

  Raises FileNotFoundError when the folder is missing or holds no images.
  """
  files = image_files(config)
  input_dir = config.predict.input_dir
  out_dir = config.predict.output_dir or os.path.join(workdir, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  size = datasets.parser_config(config).padded_size
  names = datasets.category_names(config, workdir)
  images, results, skipped = [], [], 0
  batch_size = config.eval.batch_size
  for start in range(0, len(files), batch_size):
    chunk = []
    for name in files[start:start + batch_size]:
      pixels = _read(os.path.join(input_dir, name))
      if pixels is None:
        skipped += 1
        continue
      chunk.append((name, pixels, *_prepare(pixels, config)))
    if not chunk:
      continue
    batch = np.zeros((batch_size, *size, 3), np.float32)
    info = np.ones((batch_size, 4, 2), np.float32)
    for i, item in enumerate(chunk):
      batch[i], info[i] = item[2], item[3]
    dets = jax.device_get(predict(variables, {'images': batch, 'image_info': info}))
    for i, (name, pixels, _, image_info) in enumerate(chunk):
      image_id = len(images) + 1
      images.append({'id': image_id, 'file_name': name, 'height': int(pixels.shape[0]),
                     'width': int(pixels.shape[1])})
      boxes = dets['detection_boxes'][i] / np.tile(image_info[2], 2)
      kept = []
      for box, score, cls in zip(boxes, dets['detection_scores'][i], dets['detection_classes'][i]):
        if score <= -1.0:
          continue
        y0, x0, y1, x1 = (float(v) for v in box)
        results.append({'image_id': image_id, 'category_id': int(cls),
                        'bbox': [x0, y0, x1 - x0, y1 - y0], 'score': float(score)})
        if score >= config.predict.draw_score_threshold:
          kept.append((box, float(score), int(cls)))
      draw_detections(pixels, kept, names).save(
          os.path.join(out_dir, os.path.splitext(name)[0] + '.png'))
  with open(os.path.join(out_dir, 'detections.json'), 'w') as f:
    json.dump(results, f)
  with open(os.path.join(out_dir, 'images.json'), 'w') as f:
    json.dump(images, f, indent=1)
  log.info('Predicted %d images (%d skipped) into %s.', len(images), skipped, out_dir)
  return {'num_images': len(images), 'skipped': skipped, 'num_detections': len(results),
          'output_dir': out_dir}


def draw_detections(pixels: np.ndarray, detections: list, names: dict[int, str]) -> Image.Image:
  """The image with each (box [ymin, xmin, ymax, xmax], score, class) drawn and labelled."""
  image = Image.fromarray(pixels).convert('RGB')
  draw = ImageDraw.Draw(image)
  for box, score, cls in detections:
    y0, x0, y1, x1 = (float(v) for v in box)
    color = tuple(int(c) for c in np.random.default_rng(cls).integers(64, 256, 3))
    draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
    label = f'{names.get(cls, cls)} {score:.2f}'
    draw.text((x0 + 2, max(0.0, y0 - 11)), label, fill=color)
  return image
