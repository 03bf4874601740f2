"""The documented custom-dataset command (docs/training.md) end to end through main.py, on a
COCO-format folder with separate train and val jsons: train, train_and_eval, eval, predict."""

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT

BASE = os.path.join(ROOT, 'tests', 'data', 'field_cases', 'base')
TIMEOUT = 900


def docs_command() -> list[str]:
  """The custom-dataset command of docs/training.md, as written there."""
  with open(os.path.join(ROOT, 'docs', 'training.md')) as f:
    text = f.read()
  match = re.search(r'^(python main\.py [^\n]*--config\.data\.source=coco_folder(?:[^\n]*\\\n)*'
                    r'[^\n]*)$', text, re.M)
  assert match, 'docs/training.md lost its custom-dataset command'
  return shlex.split(match.group(1).replace('\\\n', ' ').replace('<max category id + 1>', 'NC'))


def _run(command: list[str], *flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, *command[1:], *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc


def test_documented_command_trains_evaluates_and_predicts(tmp_path):
  values = {'DIR': str(tmp_path / 'w'), 'IMAGES': os.path.join(BASE, 'train'),
            'train.json': os.path.join(BASE, 'annotations', 'train.json'),
            'VAL_IMAGES': os.path.join(BASE, 'val'),
            'val.json': os.path.join(BASE, 'annotations', 'val.json'), 'NC': '4'}
  command = []
  for arg in docs_command():
    key, _, value = arg.partition('=')
    command.append(f'{key}={values.get(value, value)}' if value else arg)
  assert command[1] == 'main.py' and '--config.data.train_annotations=' + values['train.json'] \
      in command
  smoke = ['--config.smoke=True']          # the same command, shrunk to minutes (docs say so)
  workdir = tmp_path / 'w'

  _run(command, *smoke, '--mode=train')
  assert '6' in os.listdir(workdir / 'checkpoints')
  assert not os.path.exists(workdir / 'eval')
  proc = _run(command, *smoke, '--mode=train_and_eval', '--config.eval.save_detections=True')
  assert 'Dataset check of' in proc.stderr and "1 'red', 2 'green', 3 'blue'" in proc.stderr
  metrics = json.loads((workdir / 'eval' / 'metrics_6.json').read_text())
  assert metrics['num_images'] == 4 and set(metrics) >= {'AP', 'AP50', 'ARmax100'}
  detections = json.loads((workdir / 'eval' / 'detections_6.json').read_text())
  assert {d['image_id'] for d in detections} == {1, 2, 3, 4}

  _run(command, *smoke, '--mode=eval')
  assert json.loads((workdir / 'eval' / 'metrics_6.json').read_text()) == metrics

  _run(command, *smoke, '--mode=predict', f'--config.predict.input_dir={values["VAL_IMAGES"]}')
  predicted = json.loads((workdir / 'predictions' / 'images.json').read_text())
  assert sorted(i['file_name'] for i in predicted) == sorted(os.listdir(values['VAL_IMAGES']))


def test_refused_dataset_stops_main_with_the_fix_and_no_traceback(tmp_path):
  bad = os.path.join(ROOT, 'tests', 'data', 'field_cases', 'category_ids_beyond_num_classes')
  flags = ['--config.data.source=coco_folder', f'--config.data.train_images={bad}/train',
           f'--config.data.train_annotations={bad}/annotations/train.json',
           f'--config.data.eval_images={bad}/train',
           f'--config.data.eval_annotations={bad}/annotations/train.json',
           '--config.model.head.num_classes=4', '--mode=train']
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, 'main.py', '--config=tests/tiny_config.py',
                         f'--workdir={tmp_path}', *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 2
  assert 'Set config.model.head.num_classes=8' in proc.stderr
  assert 'Traceback' not in proc.stderr
