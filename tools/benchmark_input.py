"""Train-parser throughput in images/s per CPU core (decode + official RetinaNet train parser).

  python tools/benchmark_input.py [--output_size=640] [--images=200] [--threads=1] [--masks]

Examples are COCO-like in memory: 480x640 JPEGs of smooth random content with 7 boxes each, so no
dataset is needed. With --masks each box also has a full-image PNG mask (an ellipse), decoded as
TFDS decodes `objects/mask`, and the parser makes the Mask R-CNN targets (include_masks, 112x112).
tf.data runs with `--threads` threads (1 = per-core throughput). Prints one JSON object; record it
in docs/benchmarks.md with the machine, date and command.
"""

import io
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from spinenet_jax.data import coco_masks, parser

_SIZE = flags.DEFINE_integer('output_size', 640, 'Square output size.')
_IMAGES = flags.DEFINE_integer('images', 200, 'Images timed (after a warm-up pass).')
_THREADS = flags.DEFINE_integer('threads', 1, 'tf.data threads.')
_MASKS = flags.DEFINE_bool('masks', False, 'Mask R-CNN targets from 7 PNG masks per image.')


def _jpeg(rng) -> bytes:
  small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
  image = Image.fromarray(small).resize((640, 480), Image.BILINEAR)
  noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-20, 20, (480, 640, 3)), 0, 255)
  buffer = io.BytesIO()
  Image.fromarray(noisy.astype(np.uint8)).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def _png_masks(boxes: np.ndarray) -> list[bytes]:
  """One 480x640 PNG mask per normalized box: the ellipse inscribed in it."""
  y, x = np.mgrid[:480, :640] / np.array([480, 640])[:, None, None]
  masks = []
  for y0, x0, y1, x1 in boxes:
    inside = ((y - (y0 + y1) / 2) / (y1 - y0)) ** 2 + ((x - (x0 + x1) / 2) / (x1 - x0)) ** 2 < 0.25
    masks.append(coco_masks.png_mask(inside))
  return masks


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  jpegs = [_jpeg(rng) for _ in range(16)]
  yx = rng.uniform(0, 0.7, (7, 2))
  boxes = np.concatenate([yx, yx + 0.2], 1).astype(np.float32)
  masks = tf.constant(_png_masks(boxes)) if _MASKS.value else None
  config = parser.ParserConfig(output_size=(_SIZE.value, _SIZE.value), include_masks=_MASKS.value)

  def parse(index, data):
    objects = {'bbox': tf.constant(boxes), 'label': tf.range(1, 8), 'is_crowd': tf.zeros(7, tf.bool)}
    if _MASKS.value:
      objects['mask'] = tf.map_fn(lambda png: tf.image.decode_image(png, channels=1), masks,
                                  fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8))
    example = {'image': tf.io.decode_jpeg(data, channels=3), 'image/id': index, 'objects': objects}
    return parser.parse_train(example, tf.stack([tf.constant(0, tf.int64), index]), config)

  options = tf.data.Options()
  options.threading.private_threadpool_size = _THREADS.value
  options.threading.max_intra_op_parallelism = 1
  ds = (tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
        .map(parse, num_parallel_calls=_THREADS.value).with_options(options))
  iterator = iter(ds)
  for _ in range(20):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_IMAGES.value):
    next(iterator)
  seconds = time.perf_counter() - start
  print(json.dumps({'output_size': _SIZE.value, 'masks': _MASKS.value, 'threads': _THREADS.value,
                    'cpus': os.cpu_count(),
                    'images': _IMAGES.value, 'images_per_s': _IMAGES.value / seconds,
                    'images_per_s_per_thread': _IMAGES.value / seconds / _THREADS.value,
                    'tf': tf.__version__}))


if __name__ == '__main__':
  app.run(main)
