"""Fine-tuning from a model checkpoint of another class count, or of a backbone only
(`config.init_checkpoint` in training): what fits loads, the rest keeps its fresh initialization."""

import logging

import jax
import numpy as np
import pytest
from flax import traverse_util
from training_helpers import tiny_config

from spinenet_jax import model_io
from spinenet_jax.detectors import base as detectors
from spinenet_jax.training.trainer import Trainer, load_weights, variables_of

CLASS_LAYER = (('params', 'head', 'class_predict', 'conv', 'kernel'),
               ('params', 'head', 'class_predict', 'conv', 'bias'))


def _config(num_classes=4, init_checkpoint=None, **model):
  """The tiny test config with `num_classes`, and `model` overrides 'part.key=value'."""
  config = tiny_config()
  config.model.head.num_classes = num_classes
  for key, value in model.items():
    part, name = key.split('__')
    config.model[part][name] = value
  config.init_checkpoint = init_checkpoint
  return config


def _save_checkpoint(directory, config, backbone_only=False, seed=1):
  """Writes a model checkpoint of `config`'s detector (or of its SpineNet) holding random values,
  so that every loaded leaf differs from a fresh initialization; returns its variables."""
  detector = detectors.build(config)
  shapes = jax.eval_shape(lambda: detector.init(jax.random.key(0), (128, 128)))
  rng = np.random.default_rng(seed)
  variables = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  model_config = detector.model_config
  if backbone_only:
    model_config = model_config.backbone
    variables = {c: v['backbone'] for c, v in variables.items()}
  model_io.save_model(str(directory), model_config, variables)
  return variables


def _flat(variables):
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(variables).items()}


@pytest.fixture(scope='module')
def fresh():
  """(trainer, fresh state) of the 4-class tiny detector, seed 0."""
  trainer = Trainer(_config())
  return trainer, trainer.new_state()


def test_other_class_count_reinitializes_only_the_class_layer(fresh, tmp_path, caplog):
  _, fresh_state = fresh
  # A 5-class checkpoint with a second head conv: the 4-class model has no use for that conv.
  saved = _flat(_save_checkpoint(tmp_path / 'ckpt', _config(5, head__num_convs=2)))
  with caplog.at_level(logging.WARNING):
    state = Trainer(_config(4, str(tmp_path / 'ckpt'))).new_state()
  loaded, init = _flat(variables_of(state)), _flat(variables_of(fresh_state))
  assert set(loaded) == set(init)
  for path in CLASS_LAYER:
    assert saved[path].shape != loaded[path].shape
    np.testing.assert_array_equal(loaded[path], init[path])   # the fresh initialization
  for path in set(loaded) - set(CLASS_LAYER):
    np.testing.assert_array_equal(loaded[path], saved[path], err_msg='/'.join(path))
  log = caplog.text
  assert (f'loaded {len(loaded) - 2} of {len(loaded)} variables' in log
          and '2 re-initialized:' in log)
  assert ('params/head/class_predict/conv/kernel: checkpoint (3, 3, 16, 45), '
          'model (3, 3, 16, 36)' in log)
  assert 'params/head/class_predict/conv/bias: checkpoint (45,), model (36,)' in log
  ignored = [p for p in saved if p not in loaded]
  assert ignored and all('class_conv_1' in p[2] or 'class_norm_1' in p[2] or 'box_conv_1' in p[2]
                         or 'box_norm_1' in p[2] for p in ignored)
  assert f'{len(ignored)} in the checkpoint but not in the model (ignored):' in log
  assert 'params/head/class_conv_1/conv/kernel (3, 3, 16, 16)' in log


def test_backbone_only_checkpoint_loads_into_a_detector(fresh, tmp_path, caplog):
  trainer, fresh_state = fresh
  saved = _flat(_save_checkpoint(tmp_path / 'backbone', _config(), backbone_only=True))
  with caplog.at_level(logging.WARNING):
    state = load_weights(fresh_state, str(tmp_path / 'backbone'), trainer.replicated)
  loaded, init = _flat(variables_of(state)), _flat(variables_of(fresh_state))
  backbone = [p for p in loaded if p[1] == 'backbone']
  head = [p for p in loaded if p[1] == 'head']
  assert backbone and head and len(backbone) + len(head) == len(loaded) == len(init)
  for path in backbone:
    np.testing.assert_array_equal(loaded[path], saved[(path[0],) + path[2:]])
  for path in head:
    np.testing.assert_array_equal(loaded[path], init[path])
  assert f'loaded {len(backbone)} of {len(loaded)} variables' in caplog.text
  assert f'{len(head)} re-initialized:' in caplog.text
  assert 'params/head/class_conv_0/conv/kernel: not in checkpoint' in caplog.text
  assert 'batch_stats/head/box_norm_0_level_3/bn/mean: not in checkpoint' in caplog.text


@pytest.mark.parametrize('backbone_only', [False, True], ids=['detector', 'backbone'])
def test_checkpoint_of_another_model_is_an_error(fresh, tmp_path, backbone_only):
  trainer, fresh_state = fresh
  # Twice the filters: only the stem (64 filters at every scale) and, in a detector checkpoint, the
  # predictors' biases (9 anchors x 4 and x 4 classes) fit; that alone must not count as a fit.
  other = _config(4, backbone__filter_size_scale=0.25, backbone__endpoints_num_filters=32,
                  head__num_filters=32)
  _save_checkpoint(tmp_path / 'other', other, backbone_only=backbone_only)
  with pytest.raises(ValueError, match=(
      rf'init_checkpoint {tmp_path / "other"} does not fit the configured model: only 5 of \d+ '
      r'backbone variables have the same path and shape .*For example:\n  '
      r'params/backbone/\S+: checkpoint \(')) as err:
    load_weights(fresh_state, str(tmp_path / 'other'), trainer.replicated)
  assert str(err.value).count('\n  ') == 5   # a few mismatches, not all of them
