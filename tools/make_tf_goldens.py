"""Writes golden files from TF Model Garden (an independent SpineNet implementation) for the tests.

This runs once, by hand, in a separate environment (tf-models-official pins its own TensorFlow):

  python3 -m venv /tmp/tfmg && /tmp/tfmg/bin/pip install tf-models-official==2.20.0
  CUDA_VISIBLE_DEVICES= /tmp/tfmg/bin/python tools/make_tf_goldens.py --output=tests/data/model_garden

It writes:
  keys_spinenet{49S,49,96,143,190}.txt   every backbone checkpoint key with its shape, as Model
                                         Garden saves them (tf.train.Checkpoint(backbone=...)).
  keys_head{49S,...}.txt                 the same for the RetinaNet head of the official yamls.
  golden_<name>/ckpt*                    a small float64 SpineNet + RetinaNet head with random weights
                                         and calibrated, then perturbed, batch-norm statistics, saved
                                         as tf.train.Checkpoint(backbone=..., head=...);
  golden_<name>/io.npz                   its input, endpoints and raw RetinaNet head outputs (a small
                                         Model Garden RetinaNetHead on top) in inference and training
                                         mode, computed in float64;
  golden_<name>/settings.json            the constructor settings.
The tests convert each checkpoint with this project's converter and compare the outputs.
"""

import argparse
import json
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.modeling.backbones import spinenet
from official.vision.modeling.heads import dense_prediction_heads

# Small SpineNets: every resampling kind, both block types, repeats 1 and 2, relu and swish,
# alpha 0.5 and 1.0, and non-square inputs (Model Garden needs multiples of 128).
GOLDENS = {
    'swish_r1': dict(filter_size_scale=0.125, resample_alpha=0.5, block_repeats=1,
                     endpoints_num_filters=24, activation='swish', input_shape=(2, 128, 256, 3)),
    'relu_r2': dict(filter_size_scale=0.0625, resample_alpha=1.0, block_repeats=2,
                    endpoints_num_filters=16, activation='relu', input_shape=(2, 256, 128, 3)),
}
# A RetinaNet head on each golden backbone (small, so the files stay small).
HEADS = {'swish_r1': dict(num_convs=2, num_filters=16, num_classes=5),
         'relu_r2': dict(num_convs=1, num_filters=8, num_classes=3)}
MODEL_IDS = ('49S', '49', '96', '143', '190')


def build(settings, momentum=0.99, epsilon=1e-3):
  s = dict(settings)
  shape = s.pop('input_shape')
  return spinenet.SpineNet(
      input_specs=tf_keras.layers.InputSpec(shape=[None, shape[1], shape[2], 3]), min_level=3,
      max_level=7, block_specs=spinenet.build_block_specs(), norm_momentum=momentum,
      norm_epsilon=epsilon, use_sync_bn=False, init_stochastic_depth_rate=None, **s)


# Head (num_convs, num_filters) of the official RetinaNet yamls.
OFFICIAL_HEADS = {'49S': (4, 128), '49': (4, 256), '96': (4, 256), '143': (4, 256), '190': (7, 512)}


def write_keys(output):
  """Backbone and RetinaNet head checkpoint keys of the full-size models (float32)."""
  tf_keras.backend.set_floatx('float32')
  for model_id in MODEL_IDS:
    s = spinenet.SCALING_MAP[model_id]
    model = build(dict(filter_size_scale=s['filter_size_scale'], resample_alpha=s['resample_alpha'],
                       block_repeats=s['block_repeats'],
                       endpoints_num_filters=s['endpoints_num_filters'], activation='swish',
                       input_shape=(1, 256, 256, 3)))
    num_convs, num_filters = OFFICIAL_HEADS[model_id]
    head = build_head(dict(activation='swish'), dict(num_convs=num_convs, num_filters=num_filters,
                                                     num_classes=91))
    head(model(tf.zeros((1, 256, 256, 3))))
    with tempfile.TemporaryDirectory() as tmp:
      path = tf.train.Checkpoint(backbone=model, head=head).write(os.path.join(tmp, 'ckpt'))
      keys = tf.train.list_variables(path)
    for part in ('backbone', 'head'):
      name = f'keys_spinenet{model_id}.txt' if part == 'backbone' else f'keys_head{model_id}.txt'
      with open(os.path.join(output, name), 'w') as f:
        for key, shape in keys:
          if key.startswith(part + '/'):
            f.write(f'{key} {list(shape)}\n')
    print(model_id, len(keys))


def build_head(settings, head, momentum=0.99, epsilon=1e-3):
  return dense_prediction_heads.RetinaNetHead(
      min_level=3, max_level=7, num_anchors_per_location=9, activation=settings['activation'],
      use_sync_bn=False, norm_momentum=momentum, norm_epsilon=epsilon, **head)


def calibrate_and_perturb(model, images, rng):
  """BN moving statistics from a calibration batch (momentum 0), then perturbed, with random γ/β."""
  model(images, training=True)
  perturb_norms(model, rng)


def perturb_norms(model, rng):
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.7, 1.3, n))
      layer.beta.assign(rng.normal(0, 0.2, n))
      var = layer.moving_variance.numpy()
      layer.moving_mean.assign(layer.moving_mean.numpy() + 0.1 * np.sqrt(var) * rng.normal(size=n))
      layer.moving_variance.assign(var * rng.uniform(0.8, 1.25, n))


def write_golden(output, name, settings, seed):
  tf_keras.backend.set_floatx('float64')
  tf_keras.utils.set_random_seed(seed)
  rng = np.random.default_rng(seed)
  # float32-representable values, stored as float32, used in float64.
  images = rng.normal(size=settings['input_shape']).astype(np.float32).astype(np.float64)
  calibration = build(settings, momentum=0.0)
  calibrate_and_perturb(calibration, tf.constant(images), rng)
  model = build(settings)            # Model Garden's COCO setting: momentum 0.99, epsilon 1e-3
  model.set_weights(calibration.get_weights())
  head_calibration = build_head(settings, HEADS[name], momentum=0.0)
  features = model(tf.constant(images), training=False)
  head_calibration(features)
  # The official init (prediction kernels N(0, 1e-5), constant class bias) would make the outputs
  # nearly constant; random weights of ordinary scale make the comparison meaningful.
  for variable in head_calibration.trainable_variables:
    if 'kernel' in variable.name:
      fan_in = np.prod(variable.shape[:-1])
      variable.assign(rng.normal(size=variable.shape) / np.sqrt(fan_in))
    elif 'bias' in variable.name:
      variable.assign(rng.normal(0, 0.1, size=variable.shape))
  head_calibration(features, training=True)
  perturb_norms(head_calibration, rng)
  head = build_head(settings, HEADS[name])
  head(model(tf.constant(images), training=False))
  head.set_weights(head_calibration.get_weights())
  folder = os.path.join(output, f'golden_{name}')
  os.makedirs(folder, exist_ok=True)
  tf.train.Checkpoint(backbone=model, head=head, global_step=tf.Variable(7, dtype=tf.int64)).write(
      os.path.join(folder, 'ckpt'))
  arrays = {'images': images.astype(np.float32)}
  for mode, training in (('infer', False), ('train', True)):
    features = model(tf.constant(images), training=training)
    scores, boxes, _ = head(features, training=training)
    arrays.update({f'{mode}_level{k}': v.numpy() for k, v in features.items()})
    arrays.update({f'{mode}_class_level{k}': v.numpy() for k, v in scores.items()})
    arrays.update({f'{mode}_box_level{k}': v.numpy() for k, v in boxes.items()})
  np.savez_compressed(os.path.join(folder, 'io.npz'), **arrays)
  with open(os.path.join(folder, 'settings.json'), 'w') as f:
    json.dump(dict(settings, head=HEADS[name], norm_momentum=0.99, norm_epsilon=1e-3,
                   conv_padding='same', dtype='float64', source='tf-models-official==2.20.0'),
              f, indent=1)
  print(name, {k: v.shape for k, v in arrays.items() if k.startswith('infer')})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True)
  parser.add_argument('--skip_keys', action='store_true')
  args = parser.parse_args()
  os.makedirs(args.output, exist_ok=True)
  if not args.skip_keys:
    write_keys(args.output)
  for i, (name, settings) in enumerate(GOLDENS.items()):
    write_golden(args.output, name, settings, seed=i)


if __name__ == '__main__':
  main()
