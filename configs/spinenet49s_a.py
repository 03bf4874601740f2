"""SpineNet-49S RetinaNet at 640x640, protocol A: scale jitter [0.8, 1.2], 250 epochs, DropBlock,
relu (no official config: built from the paper's text).
Command:  python main.py --config=configs/spinenet49s_a.py --workdir=gs://BUCKET/spinenet49s_a \
              --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Smoke:    python main.py --config=configs/spinenet49s_a.py --config.smoke=True --workdir=/tmp/smoke
Meant for: global batch 256 on a Cloud TPU v3-32 / v4-32 slice or 8+ GPUs (the official runs used
TPUs; the slice is not recorded). Runtime: not measured by this project yet (see
docs/benchmarks.md for step throughput).
Expected: COCO val2017 box AP: no reported result for protocol A. 11.3M (the released checkpoints:
          11.9M, 256-channel endpoints) parameters.
"""

from configs import protocols, spinenet49s


def get_config():
  config = spinenet49s.get_config()
  return protocols.protocol_a(config)
