"""The paper's training protocols as changes to a model config (`configs/spinenet<id>.py`).

Facts from the official repo (tensorflow/tpu models/official/detection/configs/spinenet/): the
committed RetinaNet yamls are protocol C; their header comments hold protocol B; no file is
protocol A (DropBlock is never on in the official SpineNet), so A follows the paper's text.
Steps are the yamls' own numbers where they exist, else epochs * 118,287 / 256 (COCO train2017,
batch 256), with the decays at the last 30 and 10 epochs as MODEL_ZOO describes.

Mask R-CNN (`configs/maskrcnn_spinenet<id>.py`): the committed official yamls are protocol B for
49S-143 and a protocol-C recipe for 190, and none clips gradients; the protocols take
`clip=False` for them (`maskrcnn_a` / `maskrcnn_b` / `maskrcnn_c`).
"""

COCO_TRAIN_IMAGES = 118287
BATCH = 256


def steps(epochs: float) -> int:
  return round(epochs * COCO_TRAIN_IMAGES / BATCH)


def _schedule(config, total: int, decay_steps: tuple[int, int], lr: float = 0.28,
              clip: bool = True):
  t = config.train
  t.global_batch_size = BATCH
  t.total_steps = total
  t.init_learning_rate = lr
  t.warmup_steps = 2000
  t.warmup_learning_rate = 0.0067
  t.learning_rate_steps = decay_steps
  t.learning_rate_levels = (round(lr / 10, 12), round(lr / 100, 12))   # the yamls' 0.028, 0.0028
  if clip:
    t.gradient_clip_norm = 10.0
    t.gradient_clip_mode = 'per_replica'   # official: each replica's gradient, before the sum
  else:
    t.gradient_clip_norm = 0.0             # the official Mask R-CNN yamls do not clip
  return config


def protocol_a(config, clip: bool = True):
  """Scale jitter [0.8, 1.2], 250 epochs, DropBlock (keep 0.9, block 7), relu, no stochastic
  depth. Not in the official repo: the paper's text; DropBlock as in the DropBlock paper."""
  b = config.model.backbone
  b.activation = 'relu'
  b.init_drop_connect_rate = None
  b.dropblock_keep_prob = 0.9
  b.dropblock_size = 7
  config.input.aug_scale_min, config.input.aug_scale_max = 0.8, 1.2
  return _schedule(config, steps(250), (steps(220), steps(240)), clip=clip)


def protocol_b(config, clip: bool = True):
  """Scale jitter [0.5, 2.0], 350 epochs (162,050 steps, decays at 148,160 / 157,420), relu, no
  stochastic depth: the recipe in the header comments of the official RetinaNet yamls."""
  b = config.model.backbone
  b.activation = 'relu'
  b.init_drop_connect_rate = None
  config.input.aug_scale_min, config.input.aug_scale_max = 0.5, 2.0
  return _schedule(config, 162050, (148160, 157420), clip=clip)


def protocol_c(config, scale=(0.5, 2.0), total=231500, decay_steps=(217610, 226870), lr=0.28,
               clip: bool = True):
  """Scale jitter [0.5, 2.0], 500 epochs (231,500 steps, decays at 217,610 / 226,870), swish,
  stochastic depth (the model config's rate): the committed official RetinaNet yamls. 143 and 190
  deviate as their yamls do (arguments)."""
  config.model.backbone.activation = 'swish'
  config.input.aug_scale_min, config.input.aug_scale_max = scale
  return _schedule(config, total, decay_steps, lr, clip=clip)


def maskrcnn_a(config):
  """Protocol A for a Mask R-CNN model config, without clipping (as the Mask R-CNN yamls)."""
  return protocol_a(config, clip=False)


def maskrcnn_b(config):
  """Protocol B for a Mask R-CNN model config: for 49S-143 the committed yaml itself."""
  return protocol_b(config, clip=False)


def maskrcnn_c(config, scale=(0.5, 2.0), drop_connect: float = 0.2):
  """Protocol C for a Mask R-CNN model config of 49S-143 (no official yaml): swish, stochastic
  depth `drop_connect` (RetinaNet's rate), 500 epochs, without clipping. 190's C is its yaml."""
  config.model.backbone.init_drop_connect_rate = drop_connect
  return protocol_c(config, scale=scale, clip=False)
