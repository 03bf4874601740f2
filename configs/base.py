"""Defaults shared by every config: the official TPU RetinaNet recipe's model settings.

Model configs (`spinenet49.py`, ...) override this base; print any config with
`python tools/summarize_model.py --config=configs/<file>.py`.

`config.model.type` picks the detector (`spinenet_jax/detectors/`). Shared by every detector:
`model.backbone`, `model.norm`, `model.dtype`, `input`, `data`, `train`, `eval`, `predict`.
RetinaNet's own settings: `model.head`, `model.anchors`, `loss`, `postprocess`.
"""

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.type = 'retinanet'      # the detector: 'retinanet' or 'maskrcnn'
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

  config.input = ml_collections.ConfigDict(dict(
      image_size=(640, 640),           # (height, width) of the network input
      aug_scale_min=0.5,               # large-scale jitter of the RetinaNet yamls (protocols B, C)
      aug_scale_max=2.0,
      aug_rand_hflip=True,
      skip_crowd_during_training=True,
      max_num_instances=100,
      include_masks=False,             # parse instance masks (Mask R-CNN asks for them itself)
      mask_crop_size=112,              # official Mask R-CNN parser: 112x112 crops per object
  ))
  config.data = ml_collections.ConfigDict(dict(
      source='coco2017',               # 'coco2017' (TFDS), 'coco_folder' or 'synthetic'
      tfds_data_dir=placeholder(str),  # TFDS data_dir (local or gs://); None: <workdir>/tfds
      train_split='train',
      eval_split='validation',
      # source='coco_folder': any COCO-format dataset (images folder + instances json).
      folder_name='coco_folder',       # TFDS name of the built folder dataset: new content, new name
      train_images=placeholder(str),
      train_annotations=placeholder(str),
      eval_images=placeholder(str),
      eval_annotations=placeholder(str),
      synthetic_root=placeholder(str), # source='synthetic': None -> <workdir>/synthetic
      synthetic_num_images=placeholder(int),  # None: the default splits (256 train, 64 val)
      shuffle_buffer=1024,
  ))
  # Optimization: the official RetinaNet yamls (batch 256, SGD momentum 0.9, warmup 2000 steps from
  # 0.0067, step decay, L2 4e-5 in config.loss, clip 10). Protocol configs set the schedule.
  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=256,
      total_steps=231500,
      schedule='step',                 # 'step' (official) or 'cosine'
      init_learning_rate=0.28,
      warmup_steps=2000,
      warmup_learning_rate=0.0067,
      learning_rate_steps=(217610, 226870),
      learning_rate_levels=(0.028, 0.0028),
      momentum=0.9,
      gradient_clip_norm=10.0,         # clip norm; 0 turns clipping off
      # 'per_replica' (official, CrossShardOptimizer): each replica group's gradient
      # (config.loss.normalizer_group_size images; each device must hold whole groups) is clipped
      # before the sum; 'global': one clip of the batch gradient (docs/design.md).
      gradient_clip_mode='per_replica',
      log_every_steps=100,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      eval_every_steps=0,              # 0: evaluate only at the end (mode train_and_eval)
      profile=False,                   # a 5-step profiler trace in the workdir (TensorBoard)
      # Progressive resizing (not in the official recipe): the first low_res_steps steps train on
      # low_res_image_size inputs, about (size ratio)^2 cheaper; the rest, and evaluation, at
      # config.input.image_size. 0 turns it off.
      low_res_steps=0,
      low_res_image_size=(128, 128),
  ))
  config.eval = ml_collections.ConfigDict(dict(
      batch_size=8,                    # global; official eval_batch_size 8
      annotation_file=placeholder(str),  # COCO json (e.g. instances_val2017.json); None: the split's
      num_images=placeholder(int),     # evaluate the first N images only
      drop_padded_detections=False,    # official: all 100 slots, padded ones (score -1) included
      save_detections=False,           # also write the COCO-format detections json
      # COCO scoring library: 'hotcoco' (the 12 metrics of pycocotools bit for bit, boxes and
      # masks, 30-70x faster: docs/benchmarks.md) or 'pycocotools' (the official one).
      coco_backend='hotcoco',
  ))
  config.predict = ml_collections.ConfigDict(dict(
      input_dir=placeholder(str),      # folder of .jpg/.png images
      output_dir=placeholder(str),     # None: <workdir>/predictions
      draw_score_threshold=0.3,
      # Images with more pixels (width * height, read from the header) are skipped with a logged
      # reason instead of decoded: PIL's decompression-bomb limit. Raise it for large
      # orthomosaics and scans; 0 or None: no limit.
      max_image_pixels=89478485,
  ))
  # A model checkpoint folder (model.json + variables/, e.g. from tools/convert_tf_checkpoint.py):
  # eval/predict use it (with its own model settings); train starts from its weights.
  config.init_checkpoint = placeholder(str)
  config.seed = 0
  config.smoke = False                 # shrink to a minutes-long CPU run on the synthetic data
  return config
