"""SpineNet-96 Mask R-CNN at 1024x1024 (official spinenet96_mrcnn.yaml).

Inspect:  python tools/summarize_model.py --config=configs/maskrcnn_spinenet96.py
Expected: 55,185,009 trainable parameters, equal to the official TF graph (yaml comment: box AP
          47.2 / mask AP 41.5). CPU, seconds.
"""

from configs import maskrcnn_spinenet49


def get_config():
  config = maskrcnn_spinenet49.get_config()
  config.model.backbone.model_id = '96'
  config.input.image_size = (1024, 1024)
  return config
