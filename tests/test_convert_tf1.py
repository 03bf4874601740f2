"""Converting official TF1 checkpoints: strict mapping, value placement, endpoint and class count
detection, CLI."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from conftest import DATA, ROOT
from spinenet_jax import model_io
from spinenet_jax.interop import convert
from spinenet_jax.interop import tf_checkpoint
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


def official_49s_tensors(endpoints=256, with_head=True, seed=0, class_outputs=None):
  """Tensors named and shaped as the official 49S RetinaNet graph (+ optimizer state); with
  `class_outputs`, the class head's final conv has that many output channels (official: 9 x 91).

  Every value tells which official variable it came from: the j-th variable (1-based, file order)
  holds +-(j + U[0, 0.5)) / 1024 with random signs (moving variances positive), see `tag_of`.
  """
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
    if name.startswith('retinanet/class_net/class-predict/') and class_outputs:
      shape = shape[:-1] + (class_outputs,)          # a head fine-tuned on other classes
    sign = 1.0 if name.endswith('variance') else rng.choice([-1.0, 1.0], shape)
    tag = len(tensors) + 1
    tensors[name] = (sign * (tag + rng.uniform(0, 0.5, shape)) / 1024).astype(np.float32)
  tensors['global_step'] = np.int64(1234)
  tensors['spinenet/conv2d/kernel/Momentum'] = np.zeros_like(tensors['spinenet/conv2d/kernel'])
  return tensors


def tag_of(value):
  """The tag j of a value of official_49s_tensors."""
  return int(abs(float(value)) * 1024)


@pytest.fixture(scope='module')
def tf1_checkpoint(tmp_path_factory):
  tensors = official_49s_tensors()
  prefix = write_tf1_checkpoint(str(tmp_path_factory.mktemp('tf1') / 'model.ckpt'), tensors)
  return prefix, tensors


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def official_resampling_640():
  """{block i: (block_fn, (parent 0 has a 3x3/s2 conv, parent 1 has one))} from the official
  resampling table (tests/data/official/spinenet_block_resampling_640.txt)."""
  table = {}
  with open(os.path.join(DATA, 'official', 'spinenet_block_resampling_640.txt')) as f:
    for line in f:
      m = re.match(r'block(\d+) .* L\d (bottleneck|residual) .*: in\d+\(\S+\):(\S+); '
                   r'in\d+\(\S+\):([^;\s]+)', line)
      if m:
        table[int(m.group(1))] = (m.group(2), tuple('conv3x3s2' in op for op in m.group(3, 4)))
  assert sorted(table) == list(range(15))
  return table


_BN_LEAVES = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
              'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var')}


def official_49s_location(name, resampling):
  """(collection, path) where the official TF1 49S RetinaNet variable `name` belongs, written from
  the spec's naming rules (official-tpu-detection.md section 7, block_repeats R = 1), independently
  of spinenet_jax.interop.tf1_names / head_names:

    spinenet/conv2d: stem; conv2d_1: projection of stem group 1's block, conv2d_2..4: its 1x1, 3x3,
      1x1; conv2d_5..7: stem group 2's block (no projection); conv2d_8..12: endpoints 3..7.
    spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{p}/: conv2d 1x1 reduce, conv2d_1 the
      3x3/s2 conv only where parent p downsamples, last conv2d_k the 1x1 to target channels.
    spinenet/sub_policy{i}/scale_permuted_block_{i+2}/: the block's convs (3 or 2 if residual).
    retinanet/{t}_net/{t}-{i}/{kernel,bias} (shared conv i), {t}-{i}-{level}/... (per-level BN i),
      {t}-predict/{kernel,bias}.
  conv2d_k pairs with batch_normalization_k in each scope.
  """
  *scope, layer, var = name.split('/')
  if scope[0] == 'retinanet':
    tower = scope[1][:-len('_net')]
    m = re.fullmatch(rf'{tower}-(\d+|predict)(?:-(\d))?', layer)
    if m.group(1) == 'predict':
      return 'params', ('head', f'{tower}_predict', 'conv', var)
    if m.group(2) is None:
      return 'params', ('head', f'{tower}_conv_{m.group(1)}', 'conv', var)
    collection, leaf = _BN_LEAVES[var]
    return collection, ('head', f'{tower}_norm_{m.group(1)}_level_{m.group(2)}', 'bn', leaf)
  base, k = re.fullmatch(r'(conv2d|batch_normalization)(?:_(\d+))?', layer).groups()
  k = int(k or 0)
  collection, leaf = ('params', ('conv', 'kernel')) if base == 'conv2d' else (
      _BN_LEAVES[var][0], ('norm', 'bn', _BN_LEAVES[var][1]))
  if scope == ['spinenet']:
    unit = ([('stem',), ('stem_group_0', 'block_0', 'projection')] +
            [('stem_group_0', 'block_0', f'conv_{j}') for j in range(3)] +
            [('stem_group_1', 'block_0', f'conv_{j}') for j in range(3)] +
            [(f'endpoint_{level}',) for level in range(3, 8)])[k]
  else:
    i = int(re.fullmatch(r'sub_policy(\d+)', scope[1]).group(1))
    block_fn, downsamples = resampling[i]
    m = re.fullmatch(rf'resample_with_alpha_resample_{i}_([01])', scope[2])
    if m:
      p = int(m.group(1))
      units = ['reduce'] + ['downsample'] * downsamples[p] + ['expand']
      unit = (f'block_{i}', f'resample_{p}', units[k])
    else:
      assert scope[2] == f'scale_permuted_block_{i + 2}'
      assert k < {'bottleneck': 3, 'residual': 2}[block_fn]
      unit = (f'block_{i}', 'group', 'block_0', f'conv_{k}')
  return collection, ('backbone',) + unit + leaf


def assert_placed_as_official(variables, tensors, names, backbone_only=False):
  """Every official variable's values sit where its official name says (none elsewhere)."""
  resampling = official_resampling_640()
  tag_to_name = {tag_of(tensors[n].flat[0]): n for n in names}
  expected = {n: official_49s_location(n, resampling) for n in names}
  if backbone_only:
    expected = {n: (c, p[1:]) for n, (c, p) in expected.items()}
  # The rules place every official variable at its own leaf, and fill every leaf of the model.
  assert len(set(expected.values())) == len(expected)
  assert sum(len(jax.tree_util.tree_leaves(v)) for v in variables.values()) == len(expected)
  wrong = []
  for name, (collection, path) in expected.items():
    leaf = np.asarray(_leaf(variables[collection], path))
    if not np.array_equal(leaf, tensors[name]):
      wrong.append(f'{collection}/{"/".join(path)} should hold {name}, holds '
                   f'{tag_to_name.get(tag_of(leaf.flat[0]), "other values")}')
  assert not wrong, '\n'.join(wrong)


def test_convert_places_every_tensor(tf1_checkpoint):
  prefix, tensors = tf1_checkpoint
  official = official_variables('49S', prefix='')
  assert len({tag_of(tensors[n].flat[0]) for n in official}) == len(official) == len(tensors) - 2
  read = tf_checkpoint.read_tf_checkpoint(prefix)
  config = convert.model_config('tf1', '49S')
  assert config.backbone.endpoints_num_filters == 128 and config.head.num_filters == 128
  backbone, variables, report = convert.convert('tf1', read, config, backbone_only=True)
  # The released 49S checkpoints' 256-channel endpoints are read from the checkpoint.
  assert backbone.endpoints_num_filters == 256
  assert report['endpoints_num_filters_from_checkpoint'] == 256
  assert report['skipped_non_backbone'] == sum(n.startswith('retinanet/') for n in tensors)
  assert report['ignored'] == 2   # global_step and one Momentum slot
  assert_placed_as_official(variables, read, [n for n in official if n.startswith('spinenet/')],
                            backbone_only=True)


def test_full_retinanet_conversion_maps_the_head(tf1_checkpoint):
  prefix, tensors = tf1_checkpoint
  config, variables, report = convert.convert('tf1', tf_checkpoint.read_tf_checkpoint(prefix),
                                              convert.model_config('tf1', '49S'))
  assert report['mapped'] == len(tensors) - 2 and report['skipped_non_backbone'] == 0
  assert config.head.num_classes == 91 and report['num_classes'] == 91
  assert config.backbone.endpoints_num_filters == 256 and config.anchors.anchor_size == 3.0
  assert_placed_as_official(variables, tensors, list(official_variables('49S', prefix='')))
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


@pytest.fixture(scope='module')
def two_class_checkpoint(tmp_path_factory):
  """A 49S RetinaNet fine-tuned on 2 classes (background + 1): class head 9 anchors x 2 = 18."""
  tensors = official_49s_tensors(class_outputs=18, seed=1)
  prefix = write_tf1_checkpoint(str(tmp_path_factory.mktemp('tf1_2') / 'model.ckpt'), tensors)
  return prefix, tensors


def test_class_count_is_read_from_the_class_head(two_class_checkpoint):
  prefix, tensors = two_class_checkpoint
  config = convert.model_config('tf1', '49S')
  assert config.head.num_classes == 91
  config, variables, report = convert.convert('tf1', tf_checkpoint.read_tf_checkpoint(prefix),
                                              config)
  assert config.head.num_classes == 2 and report['num_classes'] == 2
  assert report['mapped'] == len(tensors) - 2
  predict = variables['params']['head']['class_predict']['conv']
  assert predict['kernel'].shape == (3, 3, 128, 18)
  np.testing.assert_array_equal(predict['kernel'],
                                tensors['retinanet/class_net/class-predict/kernel'])
  np.testing.assert_array_equal(predict['bias'], tensors['retinanet/class_net/class-predict/bias'])
  assert_placed_as_official(variables, tensors, list(official_variables('49S', prefix='')))
  # An agreeing explicit count is accepted.
  again, _, _ = convert.convert('tf1', tensors, convert.model_config('tf1', '49S'), num_classes=2)
  assert again.head.num_classes == 2


def test_class_count_disagreeing_with_the_checkpoint_is_an_error(two_class_checkpoint):
  _, tensors = two_class_checkpoint
  with pytest.raises(ValueError, match=r'num_classes=91 \(--num_classes\) disagrees with the '
                     r'checkpoint: class head retinanet/class_net/class-predict/kernel has shape '
                     r'\(3, 3, 128, 18\), i.e. 2 classes'):
    convert.convert('tf1', tensors, convert.model_config('tf1', '49S'), num_classes=91)
  with pytest.raises(ValueError, match='no effect on a backbone-only conversion'):
    convert.convert('tf1', tensors, convert.model_config('tf1', '49S'), backbone_only=True,
                    num_classes=2)


def test_class_channels_not_divisible_by_the_anchors_are_an_error():
  tensors = official_49s_tensors(class_outputs=20)
  with pytest.raises(ValueError, match=r'class head retinanet/class_net/class-predict/kernel '
                     r'has shape \(3, 3, 128, 20\): its 20 output channels are not anchors x '
                     r'classes for 9 anchors per location'):
    convert.convert('tf1', tensors, convert.model_config('tf1', '49S'))


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
  assert report['num_classes'] == 91

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


def test_cli_num_classes_must_agree_with_the_checkpoint(tf1_checkpoint, tmp_path):
  prefix, _ = tf1_checkpoint
  cmd = [sys.executable, os.path.join(ROOT, 'tools', 'convert_tf_checkpoint.py'), '--format=tf1',
         '--model_id=49S', f'--checkpoint={prefix}', f'--output={tmp_path / "out"}',
         '--num_classes=2']
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert ('num_classes=2 (--num_classes) disagrees with the checkpoint: class head '
          'retinanet/class_net/class-predict/kernel has shape (3, 3, 128, 819), i.e. 91 classes'
          in result.stderr)
  assert not os.path.exists(tmp_path / 'out')
