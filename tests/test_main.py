"""main.py end to end (subprocesses): resume after SIGKILL and SIGTERM with identical results,
two processes over jax.distributed agreeing with one (RetinaNet and Mask R-CNN), evaluation and
prediction outputs."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from training_helpers import assert_trees_close

from spinenet_jax import model_io

TIMEOUT = 900
RETINANET = 'tests/tiny_config.py'
MASKRCNN = 'tests/tiny_maskrcnn_config.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  """The tiny configs' synthetic splits (with and without masks), built once (processes then
  only read them)."""
  root = tmp_path_factory.mktemp('data')
  import tiny_config
  import tiny_maskrcnn_config

  from spinenet_jax.data import datasets as data_lib
  for module in (tiny_config, tiny_maskrcnn_config):
    config = module.get_config()
    _data_flags_into(config, root)
    for which in ('train', 'eval'):
      data_lib.load_split(config, which, str(root))
  return root


def _data_flags_into(config, root):
  config.data.synthetic_root = str(root / 'synthetic')
  config.data.tfds_data_dir = str(root / 'tfds')


def _env(devices=1, **extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  env.update(extra)
  return env


def _command(workdir, data_root, *flags, config=RETINANET):
  return [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}',
          f'--workdir={workdir}', f'--config.data.synthetic_root={data_root / "synthetic"}',
          f'--config.data.tfds_data_dir={data_root / "tfds"}', *flags]


def _run(workdir, data_root, *flags, devices=1, config=RETINANET, **env):
  proc = subprocess.run(_command(workdir, data_root, *flags, config=config), cwd=ROOT,
                        env=_env(devices, **env),
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc


def _params(workdir):
  _, variables, info = model_io.load_model(os.path.join(workdir, 'model'))
  return variables, info


def _assert_same(a, b):
  import jax
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


STEPS = ['--mode=train', '--config.train.total_steps=10']


@pytest.fixture(scope='module', params=[RETINANET, MASKRCNN], ids=['retinanet', 'maskrcnn'])
def uninterrupted(request, tmp_path_factory, data_root):
  """(config, parameters of an uninterrupted 10-step run of it)."""
  workdir = tmp_path_factory.mktemp('straight')
  _run(workdir, data_root, *STEPS, config=request.param)
  return request.param, _params(workdir)


def _start_and_stop(workdir, data_root, sig, config):
  """Starts a run and sends `sig` once its first checkpoint is complete."""
  proc = subprocess.Popen(_command(workdir, data_root, *STEPS, config=config), cwd=ROOT,
                          env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  first = workdir / 'checkpoints' / '2'
  deadline = time.time() + TIMEOUT
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be interrupted'
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=TIMEOUT)
  return proc.returncode, err


def test_resume_after_sigkill_gives_identical_parameters(tmp_path, data_root, uninterrupted):
  config, (expected, _) = uninterrupted
  code, _ = _start_and_stop(tmp_path, data_root, signal.SIGKILL, config)
  assert code == -signal.SIGKILL
  assert not (tmp_path / 'model').exists()
  resumed = _run(tmp_path, data_root, *STEPS, config=config)
  assert 'Restored checkpoint of step' in resumed.stderr
  variables, info = _params(tmp_path)
  assert info['step'] == 10
  _assert_same(variables, expected)


def test_sigterm_saves_and_resumes_identically(tmp_path, data_root, uninterrupted):
  config, (expected, _) = uninterrupted
  code, err = _start_and_stop(tmp_path, data_root, signal.SIGTERM, config)
  assert code == 0, err[-3000:]
  assert 'Stopped at step' in err
  stopped_at = int(err.split('Stopped at step ')[1].split()[0])
  assert (tmp_path / 'checkpoints' / str(stopped_at)).is_dir() and stopped_at < 10
  _run(tmp_path, data_root, *STEPS, config=config)
  _assert_same(_params(tmp_path)[0], expected)


def test_progressive_resizing_switches_size_and_resumes_exactly(tmp_path, data_root):
  flags = ['--mode=train', '--config.input.image_size=(256, 256)',
           '--config.train.low_res_steps=2', '--config.train.low_res_image_size=(128, 128)',
           '--config.train.checkpoint_every_steps=1', '--config.train.log_every_steps=1']
  straight = _run(tmp_path / 'straight', data_root, *flags, '--config.train.total_steps=4')
  assert 'Step 0: training at 128x128' in straight.stderr
  assert 'Step 2: training at 256x256' in straight.stderr
  _run(tmp_path / 'split', data_root, *flags, '--config.train.total_steps=3')
  resumed = _run(tmp_path / 'split', data_root, *flags, '--config.train.total_steps=4')
  assert 'Step 3: training at 256x256' in resumed.stderr
  assert '128x128' not in resumed.stderr
  _assert_same(_params(tmp_path / 'split')[0], _params(tmp_path / 'straight')[0])


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('config', [RETINANET, MASKRCNN], ids=['retinanet', 'maskrcnn'])
def test_two_processes_agree_with_one(tmp_path, data_root, config):
  # Mask R-CNN: one step. From the second on, the all-reduce's other summation order (1 ulp in
  # the updated weights) can move a proposal across the top-k or an IoU threshold, and a tiny
  # head's weights then differ by a RoI's whole gradient (~1% here), as in any implementation.
  steps = 3 if config == RETINANET else 1
  flags = ['--mode=train', f'--config.train.total_steps={steps}',
           '--config.train.log_every_steps=1']
  single = tmp_path / 'single'
  one = _run(single, data_root, *flags, devices=4, config=config)
  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [subprocess.Popen(
      _command(multi, data_root, *flags, config=config), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=_env(2, SPINENET_COORDINATOR=f'localhost:{port}', SPINENET_NUM_PROCESSES='2',
               SPINENET_PROCESS_ID=str(i))) for i in range(2)]
  errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-5000:]
  assert 'process 0 of 2' in errs[0] and 'process 1 of 2' in errs[1]
  assert '4 global devices' in errs[0]
  # Same global batches: the per-step losses agree to float32 rounding (a wrong split of the
  # batch between processes would change them at the 1e-2 level) ...
  losses_one, losses_two = _logged_losses(one.stderr), _logged_losses(errs[0])
  expected = list(range(1, steps + 1))
  assert sorted(losses_one) == expected and sorted(losses_two) == expected
  for step in expected:
    np.testing.assert_allclose(losses_two[step], losses_one[step], rtol=1e-5)
  # ... and so do the final weights.
  assert_trees_close(_params(multi)[0], _params(single)[0])


def _logged_losses(log: str) -> dict[int, float]:
  return {int(step): float(loss) for step, loss in
          re.findall(r'\[(\d+)\] train/.*?train/model_loss=([-\d.e]+)', log)}


def test_train_and_eval_then_eval_and_predict(tmp_path, data_root):
  _run(tmp_path, data_root, '--config.train.total_steps=2', '--config.eval.save_detections=True')
  metrics = json.load(open(tmp_path / 'eval' / 'metrics_2.json'))
  assert metrics['num_images'] == 8 and set(metrics) >= {'AP', 'AP50', 'ARmax100', 'APs'}
  detections = json.load(open(tmp_path / 'eval' / 'detections_2.json'))
  assert len(detections) == 8 * 100          # all slots, padded ones too (official)
  _run(tmp_path, data_root, '--mode=eval')
  again = json.load(open(tmp_path / 'eval' / 'metrics_2.json'))
  assert again == metrics
  images = data_root / 'synthetic' / 'val' / 'images'
  (tmp_path / 'in').mkdir()
  for name in sorted(os.listdir(images))[:3]:
    (tmp_path / 'in' / name).write_bytes((images / name).read_bytes())
  (tmp_path / 'in' / 'broken.png').write_bytes(b'not an image')
  proc = _run(tmp_path, data_root, '--mode=predict', f'--config.predict.input_dir={tmp_path / "in"}',
              '--config.init_checkpoint=' + str(tmp_path / 'model'))
  out = tmp_path / 'predictions'
  assert len(json.load(open(out / 'images.json'))) == 3
  assert len([f for f in os.listdir(out) if f.endswith('.png')]) == 3
  assert 'broken.png' in proc.stderr
