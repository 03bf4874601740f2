"""SpineNet-49S RetinaNet at 640x640, protocol B: scale jitter [0.5, 2.0], 350 epochs, relu, no
stochastic depth (the header-comment recipe of the official yaml).
Command:  python main.py --config=configs/spinenet49s_b.py --workdir=gs://BUCKET/spinenet49s_b \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet49s_b.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: paper 39.9 AP; MODEL_ZOO 39.5 (retinanet/spinenet-49S.tar.gz). 11.3M
          (the released checkpoints: 11.9M, 256-channel endpoints) parameters.
"""

from configs import protocols, spinenet49s


def get_config():
  config = spinenet49s.get_config()
  return protocols.protocol_b(config)
