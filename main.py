"""Train and evaluate SpineNet detectors (config.model.type: RetinaNet).

  python main.py --config=configs/spinenet49_b.py --workdir=/tmp/spinenet49_b
  python main.py --config=configs/demo.py --workdir=/tmp/demo            # CPU, synthetic data
  python main.py --config=configs/spinenet49_b.py --config.smoke=True --workdir=/tmp/smoke

The same command resumes from the newest checkpoint in --workdir. See configs/ for the recipes.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from spinenet_jax import distributed
from spinenet_jax.data import coco_json
from spinenet_jax.training import loop, modes

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and results go here.')
flags.DEFINE_enum('mode', 'train_and_eval', modes.MODES, 'What to run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  modes.quiet_library_logs()
  distributed.initialize()
  logging.info('mode=%s workdir=%s', FLAGS.mode, FLAGS.workdir)
  try:
    modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except loop.NonFiniteLossError as e:
    logging.error('%s', e)
    sys.exit(1)
  except coco_json.DatasetError as e:   # the message says what to fix; a traceback would not
    logging.error('%s', e)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
