"""SpineNet-49 RetinaNet at 640x640, protocol C: scale jitter [0.5, 2.0], 500 epochs, stochastic
depth, swish (the committed official yaml).
Command:  python main.py --config=configs/spinenet49_c.py --workdir=gs://BUCKET/spinenet49_c \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet49_c.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: paper and MODEL_ZOO 44.3 AP (retinanet/spinenet-49-best.tar.gz).
          28.5M parameters.
"""

from configs import protocols, spinenet49


def get_config():
  config = spinenet49.get_config()
  return protocols.protocol_c(config)
