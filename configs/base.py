"""Defaults shared by every config: the official TPU RetinaNet recipe's model settings.

Model configs (`spinenet49.py`, ...) override this base; print any config with
`python tools/summarize_model.py --config=configs/<file>.py`.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  # SpineNet backbone. Unset (None) scaling fields come from the model_id's scaling map.
  config.model.backbone = ml_collections.ConfigDict(dict(
      model_id='49',
      min_level=3,
      max_level=7,
      endpoints_num_filters=placeholder(int),      # 256 with 49S reproduces the released 49S checkpoints
      filter_size_scale=placeholder(float),
      resample_alpha=placeholder(float),
      block_repeats=placeholder(int),
      block_specs=None,                # None: the official permutation; else a list of 4-tuples
      activation='swish',              # RetinaNet yamls: swish; protocol B: relu
      conv_padding='fixed',            # 'fixed' (official TPU code) or 'same' (TF Model Garden)
      resample_pooling='official',     # 'official' (one 3x3 or 5x5 pool) or 'model_garden' (3x3/s2 repeated)
      use_native_resize_op=False,
      init_drop_connect_rate=placeholder(float),     # stochastic depth; official yamls: 0.2 (143: 0.16)
      dropblock_keep_prob=placeholder(float),        # DropBlock is never on in official SpineNet
      dropblock_size=placeholder(int),
  ))
  config.model.norm = ml_collections.ConfigDict(dict(
      type='batch',
      momentum=0.997,                  # official RetinaNet; Mask R-CNN yamls use 0.99
      epsilon=1e-4,                    # official RetinaNet; Mask R-CNN yamls use 1e-3
  ))
  config.model.dtype = 'float32'       # compute dtype: 'float32' or 'bfloat16' (params stay f32)

  config.input = ml_collections.ConfigDict()
  config.input.image_size = (640, 640)  # (height, width) of the network input
  return config
