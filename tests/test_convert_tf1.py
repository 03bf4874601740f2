"""Converting official TF1 checkpoints: strict mapping, value placement, endpoint detection, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from spinenet_jax import model_io
from spinenet_jax.interop import convert
from spinenet_jax.interop import tf_checkpoint
from spinenet_jax.interop.tf1_names import spinenet_tf1_names
from test_tf1_names import official_variables


def write_tf1_checkpoint(prefix, variables):
  """Writes a TF1-format checkpoint (tf.compat.v1 Saver) holding `variables` {name: array}."""
  graph = tf.Graph()
  with graph.as_default():
    tf_vars = [tf.compat.v1.get_variable(name, initializer=value, use_resource=False)
               for name, value in variables.items()]
    saver = tf.compat.v1.train.Saver(tf_vars)
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      return saver.save(sess, prefix)


def official_49s_tensors(endpoints=256, with_head=True, seed=0):
  """Random tensors named and shaped as the official 49S RetinaNet graph (+ optimizer state)."""
  rng = np.random.default_rng(seed)
  shapes = official_variables('49S', prefix='' if with_head else 'spinenet/')
  tensors = {}
  for name, shape in shapes.items():
    if name.startswith('spinenet/conv2d_') and int(name.split('_')[1].split('/')[0]) >= 8:
      shape = shape[:-1] + (endpoints,)              # endpoint convs conv2d_8 .. conv2d_12
    elif name.startswith('spinenet/batch_normalization_') and int(
        name.split('_')[2].split('/')[0]) >= 8:
      shape = (endpoints,)
    elif name.startswith('retinanet/') and '-0/kernel' in name:
      shape = shape[:2] + (endpoints,) + shape[3:]   # the head's first convs read the endpoints
    tensors[name] = rng.normal(size=shape).astype(np.float32)
    if name.endswith('variance'):
      tensors[name] = np.abs(tensors[name]) + 0.5
  tensors['global_step'] = np.int64(1234)
  tensors['spinenet/conv2d/kernel/Momentum'] = np.zeros_like(tensors['spinenet/conv2d/kernel'])
  return tensors


@pytest.fixture(scope='module')
def tf1_checkpoint(tmp_path_factory):
  tensors = official_49s_tensors()
  prefix = write_tf1_checkpoint(str(tmp_path_factory.mktemp('tf1') / 'model.ckpt'), tensors)
  return prefix, tensors


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_convert_places_every_tensor(tf1_checkpoint):
  prefix, tensors = tf1_checkpoint
  read = tf_checkpoint.read_tf_checkpoint(prefix)
  config = convert.model_config('tf1', '49S')
  assert config.backbone.endpoints_num_filters == 128 and config.head.num_filters == 128
  config, variables, report = convert.convert('tf1', read, config, backbone_only=True)
  # The released 49S checkpoints' 256-channel endpoints are read from the checkpoint.
  assert config.endpoints_num_filters == 256
  assert report['endpoints_num_filters_from_checkpoint'] == 256
  assert report['skipped_non_backbone'] == sum(n.startswith('retinanet/') for n in tensors)
  assert report['ignored'] == 2   # global_step and one Momentum slot
  names = spinenet_tf1_names(variables['params'])
  assert len(names) == sum(n.startswith('spinenet/') and 'Momentum' not in n for n in tensors)
  for name, (collection, path) in names.items():
    np.testing.assert_array_equal(_leaf(variables[collection], path), tensors[name])


def test_full_retinanet_conversion_maps_the_head(tf1_checkpoint):
  prefix, tensors = tf1_checkpoint
  config, variables, report = convert.convert('tf1', tf_checkpoint.read_tf_checkpoint(prefix),
                                              convert.model_config('tf1', '49S'))
  assert report['mapped'] == len(tensors) - 2 and report['skipped_non_backbone'] == 0
  assert config.backbone.endpoints_num_filters == 256 and config.anchors.anchor_size == 3.0
  head = variables['params']['head']
  np.testing.assert_array_equal(head['class_conv_2']['conv']['kernel'],
                                tensors['retinanet/class_net/class-2/kernel'])
  np.testing.assert_array_equal(head['box_predict']['conv']['bias'],
                                tensors['retinanet/box_net/box-predict/bias'])
  np.testing.assert_array_equal(
      variables['batch_stats']['head']['class_norm_3_level_6']['bn']['var'],
      tensors['retinanet/class_net/class-3-6/moving_variance'])
  np.testing.assert_array_equal(variables['params']['backbone']['endpoint_7']['conv']['kernel'],
                                tensors['spinenet/conv2d_12/kernel'])


def test_unmapped_variables_are_an_error(tf1_checkpoint):
  _, tensors = tf1_checkpoint
  extra = dict(tensors, **{'retinanet/extra_net/kernel': np.zeros(3, np.float32)})
  with pytest.raises(tf_checkpoint.CheckpointMappingError,
                     match=r'1 in the checkpoint but not mapped to the model:\n  retinanet/extra_net'):
    convert.convert('tf1', extra, convert.model_config('tf1', '49S'))


def test_missing_and_misshaped_variables_are_named():
  tensors = official_49s_tensors(with_head=False)
  del tensors['spinenet/sub_policy3/resample_with_alpha_resample_3_1/conv2d_1/kernel']
  tensors['spinenet/conv2d_2/kernel'] = np.zeros((1, 1, 64, 99), np.float32)
  with pytest.raises(tf_checkpoint.CheckpointMappingError) as err:
    convert.convert('tf1', tensors, convert.model_config('tf1', '49S'), backbone_only=True)
  message = str(err.value)
  assert '1 missing from the checkpoint' in message
  assert 'spinenet/sub_policy3/resample_with_alpha_resample_3_1/conv2d_1/kernel (for ' \
         'params/block_3/resample_1/downsample/conv/kernel' in message
  assert 'spinenet/conv2d_2/kernel: checkpoint (1, 1, 64, 99), model (1, 1, 64, 41)' in message


def test_wrong_model_id_fails_with_shapes():
  tensors = official_49s_tensors(with_head=False)
  with pytest.raises(tf_checkpoint.CheckpointMappingError, match='shape mismatch'):
    convert.convert('tf1', tensors, convert.model_config('tf1', '49'), backbone_only=True)


def test_unreadable_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope')):
    tf_checkpoint.read_tf_checkpoint(str(tmp_path / 'nope'))


def test_cli_converts_dumps_features_and_reloads(tf1_checkpoint, tmp_path):
  prefix, tensors = tf1_checkpoint
  images = np.random.default_rng(1).normal(size=(1, 128, 256, 3)).astype(np.float32)
  np.save(tmp_path / 'in.npy', images)
  out_dir = tmp_path / 'converted'
  cmd = [sys.executable, os.path.join(ROOT, 'tools', 'convert_tf_checkpoint.py'), '--format=tf1',
         '--model_id=49S', f'--checkpoint={prefix}', f'--output={out_dir}',
         '--activation=relu', f'--dump_features={tmp_path / "in.npy"}:{tmp_path / "out.npz"}']
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.splitlines()[0])
  assert report['format'] == 'tf1' and report['mapped'] == len(tensors) - 2

  config, variables, info = model_io.load_model(str(out_dir))
  backbone = config.backbone
  assert backbone.activation == 'relu' and backbone.endpoints_num_filters == 256
  assert backbone.conv_padding == 'fixed' and backbone.norm.epsilon == 1e-4
  assert config.head.num_filters == 128 and config.anchors.anchor_size == 3.0
  assert info['converted_from']['source'] == prefix
  np.testing.assert_array_equal(variables['params']['backbone']['stem']['conv']['kernel'],
                                tensors['spinenet/conv2d/kernel'])
  dumped = np.load(tmp_path / 'out.npz')
  assert sorted(dumped.files) == sorted([f'{k}level{l}' for k in ('', 'class_', 'box_')
                                         for l in range(3, 8)])
  assert dumped['level3'].shape == (1, 16, 32, 256)
  assert dumped['class_level3'].shape == (1, 16, 32, 9 * 91)
  assert dumped['box_level7'].shape == (1, 1, 2, 9 * 4)
  np.testing.assert_allclose(dumped['level5'], convert.dump_features(config, variables, images)['level5'],
                             rtol=1e-5, atol=1e-5)

  again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert again.returncode != 0 and 'already holds a model checkpoint' in again.stderr
  assert 'Traceback' not in again.stderr
