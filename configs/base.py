"""Defaults shared by every config: the official TPU RetinaNet recipe's model settings.

Model configs (`spinenet49.py`, ...) override this base; print any config with
`python tools/summarize_model.py --config=configs/<file>.py`.
"""

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder


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
  config.model.head = ml_collections.ConfigDict(dict(
      num_convs=4,                     # official; 190: 7
      num_filters=256,                 # official; 49S: 128, 190: 512
      num_classes=91,                  # COCO ids 1..90 plus background column 0, as official
      separable_conv=False,
      norm_type=placeholder(str),      # None: as the backbone; or 'batch', 'group', 'evonorm_s0'
  ))
  config.model.anchors = ml_collections.ConfigDict(dict(
      num_scales=3,
      aspect_ratios=(1.0, 2.0, 0.5),
      anchor_size=3.0,                 # 49S/49/96 yamls; 143/190 keep the default 4.0
  ))

  config.loss = ml_collections.ConfigDict(dict(
      focal_alpha=0.25,
      focal_gamma=1.5,
      huber_delta=0.1,
      box_loss_weight=50.0,
      box_loss='huber',                # 'huber' (official) or 'giou'
      giou_weight=1.0,
      # Images per loss normalizer. The official code normalizes each replica's (TPU core's) loss by
      # that replica's positives; a fixed group of images keeps those semantics identical on any
      # number of devices. 8 = the official 256-image batch on 32 cores (the repo does not record
      # the slice; this is our assumption). None normalizes once over the global batch.
      normalizer_group_size=FieldReference(8, field_type=int),
      l2_weight_decay=4e-5,
  ))
  config.postprocess = ml_collections.ConfigDict(dict(
      max_total_size=100,
      nms_iou_threshold=0.5,
      score_threshold=0.05,
      pre_nms_num_boxes=5000,
      nms_mode='per_class',            # official v1; or 'class_agnostic'
  ))

  config.input = ml_collections.ConfigDict()
  config.input.image_size = (640, 640)  # (height, width) of the network input
  return config
