"""Predictions on a folder of images: COCO-format detections json plus drawn PNGs.

    python main.py --mode=predict --config=configs/demo.py --workdir=DIR \
        --config.predict.input_dir=IMAGES [--config.init_checkpoint=MODEL_DIR]

Images are read in display orientation (their EXIF orientation applied, as a photo viewer shows
them), prepared as the evaluation parser does (normalize, resize the long side to the input size,
at least 1 pixel per side, zero pad), and the boxes are scaled back to original (display) pixels.
A detector with masks (Mask R-CNN) also gets each detection's mask pasted into the image as the
official evaluation pastes it (`mask_pasting`): RLE in the json, filled and translucent in the PNG.

One image never costs the others their results: an image over `config.predict.max_image_pixels`
(read from the header, before decoding; default PIL's decompression-bomb limit, 0 or None: no
limit), a file that cannot be read or decoded, or one whose preparation fails is skipped, logged
with its reason, counted, and listed in `skipped.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageOps

from spinenet_jax.data import datasets, preprocess
from spinenet_jax.evaluation import coco_eval, mask_pasting

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
# PIL's own default Image.MAX_IMAGE_PIXELS (about 0.25 GB of 24-bit pixels), for configs without
# the key. PIL itself only warns above it and refuses at twice it.
DEFAULT_MAX_IMAGE_PIXELS = 89478485


class SkipImage(Exception):
  """An image that is not predicted, with the reason (logged and written to skipped.json)."""


@contextlib.contextmanager
def _pil_pixel_limit_off() -> Iterator[None]:
  """PIL's decompression-bomb check off for the block (it is a module global).

  We check `config.predict.max_image_pixels` ourselves from the header; PIL's check would refuse
  (or warn about) an image the user allowed by raising the key.
  """
  saved = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def read_image(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of `path` in display orientation (EXIF orientation applied).

  `max_pixels` (0 or None: no limit) is checked against the header's width * height before
  anything is decoded. Raises SkipImage naming the size and `config.predict.max_image_pixels`
  when the image is larger; PIL's errors (OSError for unreadable or truncated files, ...) pass.
  """
  with _pil_pixel_limit_off(), Image.open(path) as im:
    width, height = im.size
    if max_pixels and width * height > max_pixels:
      raise SkipImage(f'{width}x{height} is {width * height} pixels, over '
                      f'config.predict.max_image_pixels={max_pixels} (a guard against '
                      f'decompression bombs); raise it (0: no limit) to predict this image')
    ImageOps.exif_transpose(im, in_place=True)   # decodes; in place: no copy of a large image
    return np.asarray(im.convert('RGB'))


def _prepare(pixels: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
  """(normalized image [padded_h, padded_w, 3] float32, image_info [4, 2]) as parse_eval makes."""
  pc = datasets.parser_config(config)
  image, info = preprocess.resize_and_crop_image(
      preprocess.normalize_image(tf.constant(pixels)), pc.output_size, pc.padded_size)
  return image.numpy(), info.numpy()


def _load(path: str, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(pixels, image, image_info) of one file; raises SkipImage with the reason of any failure."""
  max_pixels = config.predict.get('max_image_pixels', DEFAULT_MAX_IMAGE_PIXELS)
  try:
    pixels = read_image(path, max_pixels)
  except SkipImage:
    raise
  except Exception as e:  # whatever one file does, the others are predicted
    raise SkipImage(f'not a readable image ({type(e).__name__}: {e})') from e
  try:
    return (pixels, *_prepare(pixels, config))
  except Exception as e:  # as above: one image's failure is that image's only
    raise SkipImage(f'preparing the {pixels.shape[1]}x{pixels.shape[0]} image failed '
                    f'({type(e).__name__}: {e})') from e


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
  """Runs `predict(variables, batch)` on every image of `config.predict.input_dir`.

  `predict` is a detect function at the config's input size: batch {'images' [B, H, W, 3] float32
  (padded size), 'image_info' [B, 4, 2]} (B = config.eval.batch_size) -> {'detection_boxes'
  [B, M, 4] ymin, xmin, ymax, xmax in canvas pixels, 'detection_scores' [B, M] (padding <= -1),
  'detection_classes' [B, M], optional 'detection_masks' [B, M, mh, mw] probabilities in each
  box's frame}. Writes to `config.predict.output_dir` (default <workdir>/predictions):
  `detections.json` (COCO results, boxes in original display pixels; with masks, a 'segmentation'
  compressed RLE {'size': [H, W], 'counts': str} per detection), `images.json` (id,
  file_name, height, width of each predicted image), one PNG per predicted image with the
  detections over `config.predict.draw_score_threshold` drawn, and `skipped.json` ({file name:
  reason} of the images skipped: over `config.predict.max_image_pixels`, unreadable, truncated or
  failing preparation). A PNG that cannot be written is logged and listed; its detections stay.

  Returns {'num_images', 'num_detections', 'skipped' (count), 'skipped_files' ({name: reason}),
  'not_drawn' ({name: reason}), 'output_dir'}. Raises FileNotFoundError when the folder is
  missing or holds no images; an error of `predict` itself (the model, not an image) is raised.
  """
  files = image_files(config)
  input_dir = config.predict.input_dir
  out_dir = config.predict.output_dir or os.path.join(workdir, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  size = datasets.parser_config(config).padded_size
  names = datasets.category_names(config, workdir)
  images, results, skipped, not_drawn = [], [], {}, {}
  batch_size = config.eval.batch_size
  for start in range(0, len(files), batch_size):
    chunk = []
    for name in files[start:start + batch_size]:
      try:
        chunk.append((name, *_load(os.path.join(input_dir, name), config)))
      except SkipImage as e:
        log.warning('Skipping %s: %s.', os.path.join(input_dir, name), e)
        skipped[name] = str(e)
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
      image_results, drawn = _image_detections(
          {k: v[i] for k, v in dets.items()}, image_info, pixels.shape[:2],
          config.predict.draw_score_threshold)
      results.extend(dict(r, image_id=image_id) for r in image_results)
      try:
        with _pil_pixel_limit_off():   # the image is allowed: its drawing is too
          draw_detections(pixels, *drawn, names).save(
              os.path.join(out_dir, os.path.splitext(name)[0] + '.png'))
      except Exception as e:  # noqa: BLE001 -- a drawing never costs the json its results
        log.warning('No PNG for %s: %s: %s.', name, type(e).__name__, e)
        not_drawn[name] = f'{type(e).__name__}: {e}'
  with open(os.path.join(out_dir, 'detections.json'), 'w') as f:
    json.dump(results, f)
  with open(os.path.join(out_dir, 'images.json'), 'w') as f:
    json.dump(images, f, indent=1)
  with open(os.path.join(out_dir, 'skipped.json'), 'w') as f:
    json.dump(skipped, f, indent=1)
  listed = ', '.join(list(skipped)[:5]) + (', ...' if len(skipped) > 5 else '')
  log.info('Predicted %d images into %s; %d skipped%s.', len(images), out_dir, len(skipped),
           f' ({listed}; reasons in skipped.json)' if skipped else '')
  return {'num_images': len(images), 'num_detections': len(results), 'skipped': len(skipped),
          'skipped_files': skipped, 'not_drawn': not_drawn, 'output_dir': out_dir}


def _image_detections(dets: dict, image_info: np.ndarray, size: tuple[int, int],
                      draw_threshold: float) -> tuple[list[dict], tuple[list, np.ndarray | None,
                                                                    np.ndarray]]:
  """(COCO results of one image's detections without image_id, (the detections to draw as (box,
  score, class), their [K, mh, mw] mask probabilities or None, their [K, 4] [x, y, w, h] boxes)),
  in original (display) pixels."""
  # image_scale is scaled / original size per axis (>= 1 scaled pixel: a thin strip too).
  boxes = np.asarray(dets['detection_boxes'], np.float32) / np.tile(
      np.asarray(image_info[2], np.float32), 2)
  scores = np.asarray(dets['detection_scores'])
  valid = scores > -1.0
  boxes, scores, classes = boxes[valid], scores[valid], np.asarray(dets['detection_classes'])[valid]
  xywh = coco_eval.yxyx_to_xywh(boxes)
  results = [{'category_id': int(c), 'bbox': [float(v) for v in b], 'score': float(s)}
             for b, s, c in zip(xywh, scores, classes)]
  drawn = scores >= draw_threshold
  masks = None
  if 'detection_masks' in dets:
    masks = np.asarray(dets['detection_masks'])[valid]
    for r, rle in zip(results, mask_pasting.paste_and_encode(masks, xywh, *size)):
      r['segmentation'] = rle
    masks = masks[drawn]
  return results, ([(b, float(s), int(c)) for b, s, c in zip(boxes[drawn], scores[drawn],
                                                             classes[drawn])], masks, xywh[drawn])


def class_color(cls: int) -> tuple[int, int, int]:
  """The drawing colour of a class (the same in every image)."""
  return tuple(int(c) for c in np.random.default_rng(cls).integers(64, 256, 3))


def draw_detections(pixels: np.ndarray, detections: list, masks: np.ndarray | None,
                    mask_boxes: np.ndarray | None, names: dict[int, str],
                    mask_opacity: float = 0.45) -> Image.Image:
  """The image with each (box [ymin, xmin, ymax, xmax], score, class) drawn and labelled, and each
  detection's mask ([K, mh, mw] probabilities in its [K, 4] [x, y, w, h] `mask_boxes`, or None)
  pasted as the evaluation pastes it and filled translucently in its class's colour. Only each
  mask's pasted crop is held, never a full-image array per mask."""
  image = np.array(Image.fromarray(pixels).convert('RGB'))
  if masks is not None and len(masks):
    crops = mask_pasting.paste_crops(masks, mask_boxes, *image.shape[:2])
    for (_, _, cls), (crop, top, left) in zip(detections, crops):
      region = image[top:top + crop.shape[0], left:left + crop.shape[1]]
      on = crop.astype(bool)
      region[on] = np.round((1 - mask_opacity) * region[on].astype(np.float32) +
                            mask_opacity * np.float32(class_color(cls))).astype(np.uint8)
  image = Image.fromarray(image)
  draw = ImageDraw.Draw(image)
  for box, score, cls in detections:
    y0, x0, y1, x1 = (float(v) for v in box)
    color = class_color(cls)
    draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
    label = f'{names.get(cls, cls)} {score:.2f}'
    draw.text((x0 + 2, max(0.0, y0 - 11)), label, fill=color)
  return image
