"""Converts an official TensorFlow SpineNet checkpoint into a model checkpoint of this project.

  python tools/convert_tf_checkpoint.py --format=tf1 --model_id=49 \
      --checkpoint=/path/to/spinenet-49/model.ckpt --output=/tmp/spinenet49 \
      [--backbone_only] [--num_classes=N] [--dump_features=IN.npy:OUT.npz]

The result is a RetinaNet (backbone and head), a Mask R-CNN (tf1 checkpoints with rpn_head/
variables, or --detector=maskrcnn: head sizes and class count read from the checkpoint, defaults of
the SpineNet Mask R-CNN yamls: relu, 190 swish, BN 0.99 / 1e-3, anchor size 3, 190: 5), or with
--backbone_only a SpineNet. --dump_features
writes the endpoints (level3 ... level7) and, for a RetinaNet, the raw head outputs (class_level3 ...,
box_level3 ...; channels anchor * num_classes + class and anchor * 4 + coordinate).

--format=tf1  checkpoints of the official TPU detection code (defaults: swish, explicit stride-2
              padding, BN momentum 0.997 / epsilon 1e-4, as its committed RetinaNet yamls; the
              MODEL_ZOO 350-epoch checkpoints were trained with relu: pass --activation=relu).
--format=tf2  TF Model Garden official.vision checkpoints (defaults: swish, SAME padding,
              BN momentum 0.99 / epsilon 1e-3, as its COCO SpineNet configs).

The class count (background included) is read from the class head's final conv (output channels /
anchors per location), so checkpoints fine-tuned on other classes convert as they are; --num_classes
only checks it (a disagreement is an error).

Mapping is strict: a variable that is unmapped, missing or misshaped stops the conversion with a list
of them. Optimizer slots and step counters are ignored on purpose. The output folder holds the
variables and the model settings (`model.json`), so loading it needs no flags.
"""

import json
import os

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from spinenet_jax import model_io
from spinenet_jax.interop import convert, maskrcnn_convert
from spinenet_jax.interop import tf_checkpoint

_FORMAT = flags.DEFINE_enum('format', None, list(convert.FORMATS), 'Checkpoint format.')
_MODEL_ID = flags.DEFINE_string('model_id', None, 'SpineNet model id: 49S, 49, 96, 143, 143L, 190.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix or directory.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output directory (must not hold a checkpoint).')
_DUMP = flags.DEFINE_string('dump_features', None,
                            'IN.npy:OUT.npz: run the converted model on a float32 NHWC array and '
                            'save its endpoints (level3 ...) and head outputs (class_level3 ...).')
_ACTIVATION = flags.DEFINE_enum('activation', None, ['relu', 'swish'], 'Override the activation.')
_PADDING = flags.DEFINE_enum('conv_padding', None, ['fixed', 'same'], 'Override the conv padding.')
_EPSILON = flags.DEFINE_float('bn_epsilon', None, 'Override the batch-norm epsilon.')
_MOMENTUM = flags.DEFINE_float('bn_momentum', None, 'Override the batch-norm momentum.')
_ENDPOINTS = flags.DEFINE_integer('endpoints_num_filters', None,
                                  'Endpoint width (default: read from the checkpoint).')
_HEAD_CONVS = flags.DEFINE_integer('head_num_convs', None, 'Head convs (default: official, 190: 7).')
_HEAD_FILTERS = flags.DEFINE_integer('head_num_filters', None,
                                     'Head filters (default: official, 49S: 128, 190: 512).')
_ANCHOR_SIZE = flags.DEFINE_float('anchor_size', None,
                                  'Anchor size the model was trained with (default: the official '
                                  'yaml: 3.0 for 49S/49/96, 4.0 for 143/190). Not in checkpoints.')
_BACKBONE_ONLY = flags.DEFINE_bool('backbone_only', False,
                                   'Convert only the backbone of a detector checkpoint (or a '
                                   'backbone-only checkpoint); other variables are counted and '
                                   'left out.')
_DUMP_ROIS = flags.DEFINE_string('dump_rois', None,
                                 'Mask R-CNN: ROIS.npy, float32 [B, N, 4] RoIs (input pixels) whose '
                                 'Fast R-CNN and mask head outputs --dump_features also writes.')
_DUMP_DTYPE = flags.DEFINE_enum('dump_dtype', 'float32', ['float32', 'float64'],
                                'Run the feature dump in this dtype (float64: the converted '
                                'weights, the model and every op; Mask R-CNN).')
_DETECTOR = flags.DEFINE_enum('detector', 'auto', ['auto', 'retinanet', 'maskrcnn'],
                              'The detector of the checkpoint; auto: Mask R-CNN when it has '
                              'rpn_head/ variables (tf1), else RetinaNet.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None,
                                    'Expected class count, background included (default: read '
                                    'from the checkpoint\'s class head; an error if they differ).')
flags.mark_flags_as_required(['format', 'model_id', 'checkpoint', 'output'])


def _parse_dump(value: str) -> tuple[str, str]:
  parts = value.split(':')
  if len(parts) != 2 or not all(parts):
    raise app.UsageError(f'--dump_features must be IN.npy:OUT.npz, got {value!r}')
  return parts[0], parts[1]


def main(argv):
  del argv
  try:
    _convert()
  except (ValueError, OSError) as e:  # bad input: a message naming it, not a traceback
    raise SystemExit(f'convert_tf_checkpoint: error: {e}') from None


def _convert():
  dump = _parse_dump(_DUMP.value) if _DUMP.value else None
  if dump and not os.path.isfile(dump[0]):
    raise FileNotFoundError(f'--dump_features input {dump[0]} does not exist')
  tensors = tf_checkpoint.read_tf_checkpoint(_CHECKPOINT.value)
  detector = _DETECTOR.value
  if detector == 'auto':
    detector = 'maskrcnn' if maskrcnn_convert.is_maskrcnn(tensors) else 'retinanet'
  if detector == 'maskrcnn':
    if _FORMAT.value != 'tf1':
      raise ValueError('Mask R-CNN checkpoints convert from --format=tf1.')
    config, read = maskrcnn_convert.config_from_checkpoint(
        tensors, _MODEL_ID.value, _ACTIVATION.value, _MOMENTUM.value, _EPSILON.value,
        _ENDPOINTS.value, _ANCHOR_SIZE.value)
    logging.info('Mask R-CNN settings: %s', read)
  else:
    config = convert.model_config(_FORMAT.value, _MODEL_ID.value, _ACTIVATION.value,
                                  _PADDING.value, _MOMENTUM.value, _EPSILON.value,
                                  _ENDPOINTS.value, _HEAD_CONVS.value, _HEAD_FILTERS.value,
                                  _ANCHOR_SIZE.value)
  config, variables, report = convert.convert(
      _FORMAT.value, tensors, config, backbone_only=_BACKBONE_ONLY.value,
      detect_endpoints=_ENDPOINTS.value is None, num_classes=_NUM_CLASSES.value)
  report.update(source=_CHECKPOINT.value, model_id=_MODEL_ID.value)
  model_io.save_model(_OUTPUT.value, config, variables, info={'converted_from': report})
  logging.info('wrote %s', _OUTPUT.value)
  print(json.dumps(report))
  if dump:
    _dump(config, variables, dump, detector)


def _dump(config, variables, dump: tuple[str, str], detector: str) -> None:
  images = np.load(dump[0])
  if detector != 'maskrcnn' or _BACKBONE_ONLY.value:
    if _DUMP_ROIS.value or _DUMP_DTYPE.value != 'float32':
      raise ValueError('--dump_rois and --dump_dtype apply to Mask R-CNN conversions.')
    features = convert.dump_features(config, variables, images)
  else:
    if _DUMP_DTYPE.value == 'float64':
      jax.config.update('jax_enable_x64', True)
    rois = np.load(_DUMP_ROIS.value) if _DUMP_ROIS.value else None
    features = maskrcnn_convert.dump_features(config, variables,
                                              images.astype(_DUMP_DTYPE.value), rois)
  np.savez(dump[1], **features)
  print(f'features of {dump[0]} written to {dump[1]}')


if __name__ == '__main__':
  app.run(main)
