"""A tiny training config for tests: configs/demo.py at 128x128 with an eighth of SpineNet-49S's
filters and a small synthetic dataset (seconds per step on a CPU).

  python main.py --config=tests/tiny_config.py --workdir=DIR
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.model.backbone.filter_size_scale = 0.125
  config.model.backbone.endpoints_num_filters = 16
  config.model.head.num_filters = 16
  config.model.head.num_convs = 1
  config.input.image_size = (128, 128)
  config.input.max_num_instances = 8
  config.data.synthetic_num_images = 24
  config.data.shuffle_buffer = 32
  t = config.train
  t.global_batch_size = 8
  t.total_steps = 6
  t.warmup_steps = 2
  t.learning_rate_steps = (4, 5)
  t.low_res_steps = 0
  t.log_every_steps = 2
  t.checkpoint_every_steps = 2
  config.eval.batch_size = 8
  config.eval.num_images = 8
  return config
