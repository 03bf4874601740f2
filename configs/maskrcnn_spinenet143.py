"""SpineNet-143 Mask R-CNN at 1280x1280 (official spinenet143_mrcnn.yaml).

Inspect:  python tools/summarize_model.py --config=configs/maskrcnn_spinenet143.py
Expected: 79,169,649 trainable parameters, equal to the official TF graph (yaml comment: box AP
          48.8 / mask AP 42.7). CPU, seconds.
"""

from configs import maskrcnn_spinenet49


def get_config():
  config = maskrcnn_spinenet49.get_config()
  config.model.backbone.model_id = '143'
  config.input.image_size = (1280, 1280)
  return config
