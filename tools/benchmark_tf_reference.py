"""TF Model Garden's SpineNet RetinaNet timed the way tools/benchmark.py times this project.

Runs under an interpreter with tf-models-official (it pins its own TensorFlow), normally started by
`tools/benchmark.py --reference_python=...`. Builds the `retinanet_spinenet_coco` experiment's model
(SpineNet-49, swish, 91 classes) and prints one JSON object with median seconds of:
  forward_s           backbone + head, raw outputs (tf.function, inference mode)
  forward_backward_s  gradient of the sum of squared raw outputs (a stand-in loss: the official loss
                      needs labels; its cost is small next to the network's)
  postprocess_s       the model's detection generator on those raw outputs
"""

import argparse
import json
import statistics
import time

import numpy as np
import tensorflow as tf
import tf_keras
from official.core import exp_factory
from official.vision.modeling import factory


def _time(fn, steps):
  fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--image_size', type=int, default=640)
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  config = exp_factory.get_exp_config('retinanet_spinenet_coco')
  model_config = config.task.model
  model_config.input_size = [args.image_size, args.image_size, 3]
  size = args.image_size
  model = factory.build_retinanet(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      model_config=model_config)
  images = tf.constant(np.random.default_rng(0).normal(size=(args.batch_size, size, size, 3)),
                       tf.float32)
  image_shape = tf.constant([[size, size]] * args.batch_size, tf.float32)

  @tf.function
  def forward():
    scores, boxes, _ = model.head(model.backbone(images, training=False))
    return scores, boxes

  @tf.function
  def forward_backward():
    with tf.GradientTape() as tape:
      scores, boxes, _ = model.head(model.backbone(images, training=True), training=True)
      loss = tf.add_n([tf.reduce_sum(v**2) for v in list(scores.values()) + list(boxes.values())])
    return tape.gradient(loss, model.trainable_variables)

  scores, boxes = forward()
  anchor_boxes = model._build_anchor_boxes(size, size) if hasattr(model, '_build_anchor_boxes') else None
  if anchor_boxes is None:
    from official.vision.ops import anchor
    anchor_boxes = anchor.Anchor(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_scales=model_config.anchor.num_scales, aspect_ratios=model_config.anchor.aspect_ratios,
        anchor_size=model_config.anchor.anchor_size, image_size=(size, size)).multilevel_boxes
    anchor_boxes = {k: tf.tile(v[None], [args.batch_size, 1, 1, 1]) for k, v in anchor_boxes.items()}

  @tf.function
  def postprocess():
    return model.detection_generator(boxes, scores, anchor_boxes, image_shape)

  print(json.dumps({
      'implementation': 'tf-models-official retinanet_spinenet_coco', 'tf': tf.__version__,
      'batch_size': args.batch_size, 'image_size': size,
      'forward_s': _time(lambda: [t.numpy() for t in tf.nest.flatten(forward())], args.steps),
      'forward_backward_s': _time(lambda: [t.numpy() for t in forward_backward()], args.steps),
      'postprocess_s': _time(lambda: [t.numpy() for t in tf.nest.flatten(postprocess())
                                      if hasattr(t, 'numpy')], args.steps)}))


if __name__ == '__main__':
  main()
