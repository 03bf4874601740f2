"""Official TF1 Mask R-CNN checkpoints: every variable of the official graph's heads list (plus
the SpineNet-49 backbone) lands on its own leaf of the right shape; head sizes and the class count
are read from the checkpoint; the converted model detects."""

import os

import jax
import numpy as np
import pytest
from conftest import ROOT
from test_convert_tf1 import official_variables

from spinenet_jax.interop import convert, maskrcnn_convert
from spinenet_jax.modeling.maskrcnn import MaskRCNN, init_inputs

HEADS = 'tests/data/official/mrcnn_heads_vars_rpn1conv_4conv1fc_bn.txt'


def official_tensors(seed=0):
  """The SpineNet-49 backbone and the official heads list, each value tagged by its position."""
  shapes = official_variables('49', prefix='spinenet/')
  with open(os.path.join(ROOT, HEADS)) as f:
    for line in f:
      if line.strip() and not line.startswith('TRAINABLE'):
        name, shape = line.split(' ', 1)
        shapes[name.removesuffix(':0')] = tuple(int(v) for v in shape.strip('[]\n').split(','))
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape in shapes.items():
    sign = 1.0 if name.endswith('variance') else rng.choice([-1.0, 1.0], shape)
    tensors[name] = (sign * (len(tensors) + 1 + rng.uniform(0, 0.5, shape)) / 1024).astype(
        np.float32)
  return tensors


def test_heads_list_maps_one_to_one_with_settings_from_the_checkpoint():
  tensors = official_tensors()
  assert maskrcnn_convert.is_maskrcnn(tensors)
  config, settings = maskrcnn_convert.config_from_checkpoint(tensors, '49')
  assert settings['rpn_head'] == {'num_convs': 1, 'num_filters': 256}
  assert settings['frcnn_head'] == {'num_convs': 4, 'num_filters': 256, 'num_fcs': 1,
                                    'fc_dims': 1024}
  assert settings['num_classes'] == 91 and settings['activation'] == 'relu'
  config, variables, report = convert.convert('tf1', tensors, config)
  assert report['mapped'] == len(tensors) and report['num_classes'] == 91
  flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_leaves_with_path(variables)}
  tags = {round(float(np.abs(v).flat[0]) * 1024) for v in flat.values()}
  assert len(tags) == len(tensors)                # each official variable on its own leaf
  expect = {
      "['params']['frcnn']['fc6_bn']['bn']['scale']": 'fast_rcnn_head/batch_normalization_4/gamma',
      "['batch_stats']['mask']['conv5_mask_bn']['bn']['var']":
          'mask_head/batch_normalization_4/moving_variance',
      "['params']['rpn']['rpn_l7_bn']['bn']['bias']": 'rpn_head/rpn-l7-bn/beta',
      "['params']['mask']['conv5_mask']['kernel']": 'mask_head/conv5-mask/kernel',
      "['params']['frcnn']['fc6']['kernel']": 'fast_rcnn_head/fc6/kernel'}
  for ours, theirs in expect.items():
    np.testing.assert_array_equal(flat[ours], tensors[theirs])
  template = convert.abstract_variables(config)
  assert jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(variables)


def test_converted_model_runs_and_a_wrong_class_count_is_refused():
  tensors = official_tensors(1)
  config, _ = maskrcnn_convert.config_from_checkpoint(tensors, '49')
  with pytest.raises(ValueError, match='num_classes=5 .* 91 classes'):
    convert.convert('tf1', tensors, config, num_classes=5)
  config, variables, _ = convert.convert('tf1', tensors, config)
  out = MaskRCNN(config).apply(variables, *init_inputs((128, 128)))
  assert out['class_outputs'].shape == (1, 1, 91) and out['mask_outputs'].shape == (1, 1, 28, 28)


def test_cli_recognizes_a_maskrcnn_checkpoint_and_eval_loads_it(tmp_path):
  import subprocess
  import sys

  from test_convert_tf1 import write_tf1_checkpoint

  from spinenet_jax import model_io
  prefix = str(tmp_path / 'ckpt' / 'model.ckpt')
  write_tf1_checkpoint(prefix, official_tensors(2))
  out = tmp_path / 'converted'
  np.save(tmp_path / 'in.npy', np.zeros((1, 128, 128, 3), np.float32))
  np.save(tmp_path / 'rois.npy', np.array([[[8, 8, 64, 100]]], np.float32))
  cmd = [sys.executable, os.path.join(ROOT, 'tools', 'convert_tf_checkpoint.py'), '--format=tf1',
         '--model_id=49', f'--checkpoint={prefix}', f'--output={out}',
         f'--dump_features={tmp_path / "in.npy"}:{tmp_path / "out.npz"}',
         f'--dump_rois={tmp_path / "rois.npy"}', '--dump_dtype=float64']
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Mask R-CNN settings' in result.stderr
  config, variables, _ = model_io.load_model(str(out))
  assert model_io.model_type(config) == 'maskrcnn' and config.num_classes == 91
  dumped = np.load(tmp_path / 'out.npz')
  assert dumped['mask_logits'].shape == (1, 1, 28, 28, 91)
  assert dumped['frcnn_class'].dtype == np.float64


def test_feature_dumps_in_float32_and_float64(tmp_path):
  """The Mask R-CNN dumps: shapes, proposals in the image, float32 within float32 noise of the
  float64 run."""
  tensors = official_tensors(3)
  config, _ = maskrcnn_convert.config_from_checkpoint(tensors, '49')
  config, variables, _ = convert.convert('tf1', tensors, config)
  rng = np.random.default_rng(4)
  images = rng.normal(size=(1, 128, 256, 3)).astype(np.float32)
  rois = np.array([[[0, 0, 40, 60], [-10, 100, 50, 300], [20, 30, 127, 255]]], np.float32)
  out32 = maskrcnn_convert.dump_features(config, variables, images, rois)
  assert out32['rpn_score_level3'].shape == (1, 16, 32, 3)
  assert out32['rpn_box_level7'].shape == (1, 1, 2, 12)
  assert out32['proposals'].shape == (1, 1000, 4) and out32['proposal_scores'].shape == (1, 1000)
  assert out32['frcnn_class'].shape == (1, 3, 91) and out32['frcnn_box'].shape == (1, 3, 364)
  assert out32['mask_logits'].shape == (1, 3, 28, 28, 91)
  with jax.enable_x64(True):
    out64 = maskrcnn_convert.dump_features(config, variables, images.astype(np.float64), rois)
  assert out64['frcnn_class'].dtype == np.float64
  for key in ('level5', 'rpn_score_level4', 'frcnn_class', 'mask_logits'):
    scale = np.abs(out64[key]).max()
    np.testing.assert_allclose(out32[key], out64[key], atol=1e-3 * scale, err_msg=key)
