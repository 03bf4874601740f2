"""Prints a detector's trainable parameters (backbone and total), batch-norm statistics and
forward multiply-adds.

  python tools/summarize_model.py --config=configs/spinenet49.py [--image_size=H,W] [--json]

Multiply-adds ("FLOPs" in the SpineNet paper) are per image at the config's input size (or
--image_size), counted from the traced computation. Nothing is computed on real data: the model is
traced abstractly, so even SpineNet-190 at 1280x1280 takes seconds on a CPU.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from spinenet_jax.detectors import base as detectors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_IMAGE_SIZE = flags.DEFINE_list('image_size', None, 'H,W input size (default: the config\'s).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
flags.mark_flags_as_required(['config'])


def _image_size(config) -> tuple[int, int]:
  if _IMAGE_SIZE.value is None:
    return tuple(config.input.image_size)
  try:
    h, w = (int(v) for v in _IMAGE_SIZE.value)
  except ValueError as e:
    raise app.UsageError(f'--image_size must be H,W (two integers), got {_IMAGE_SIZE.value}') from e
  if h < 1 or w < 1:
    raise app.UsageError(f'--image_size must be positive, got {h},{w}')
  return h, w


def main(argv):
  del argv
  config = _CONFIG.value
  result = detectors.build(config).summary(_image_size(config))
  result['model_id'] = config.model.backbone.model_id
  if _JSON.value:
    print(json.dumps(result))
    return
  rows = [('model', f'SpineNet-{result["model_id"]}'),
          ('input size', '{}x{}'.format(*result['image_size'])),
          ('backbone trainable parameters', f'{result["backbone_params"]:,}'),
          ('total trainable parameters', f'{result["total_params"]:,}'),
          ('batch-norm statistics', f'{result["batch_norm_statistics"]:,}'),
          ('backbone multiply-adds (G)', f'{result["backbone_gmacs"]:.2f}'),
          ('forward multiply-adds (G)', f'{result["gmacs"]:.2f}')]
  if 'box_head_gmacs' in result:      # Mask R-CNN: what the total holds
    rows[-1:-1] = [
        ('backbone + RPN multiply-adds (G)', f'{result["backbone_rpn_gmacs"]:.2f}'),
        (f'Fast R-CNN head on {result["test_proposals"]} proposals (G)',
         f'{result["box_head_gmacs"]:.2f}'),
        (f'mask head on {result["test_detections"]} detections (G)',
         f'{result["mask_head_gmacs"]:.2f}')]
  width = max(len(k) for k, _ in rows)
  for k, v in rows:
    print(f'{k:<{width}}  {v}')


if __name__ == '__main__':
  app.run(main)
