"""RetinaNet / Mask R-CNN train and eval parsers (official `dataloader/retinanet_parser.py`,
`maskrcnn_parser.py`), as tf.data maps.

Input: a decoded example with TFDS-coco-like features
  {'image': uint8 [H, W, 3], 'image/id': int64,
   'objects': {'bbox': float32 [N, 4] normalized [ymin, xmin, ymax, xmax],
               'label': int [N] category ids (COCO ids: 1..90), 'is_crowd': bool [N],
               'area': float or int [N] (optional, read by the eval parser only),
               'mask': uint8 [N, H, W(, 1)] 0/1, read only with `include_masks`}}.
Output: fixed-shape tensors ready to batch. Anchor labels are not made here: padded ground truth is
small, and labelling runs on the device inside the train step (see docs/design.md).

Train: crowd boxes dropped, normalize, flip (p 0.5) before resizing, jittered resize-and-crop,
boxes scaled/cropped/clipped, empty boxes dropped, ground truth padded to `max_num_instances` with
-1. Eval: no flip or jitter, crowd kept (COCO evaluation needs it), boxes in output-canvas pixels.

Eval also carries what the official eval parser hands the evaluator as `groundtruths` (used when
there is no instances json, e.g. TFDS coco/2017), padded with -1 and row-aligned with gt_boxes:
`gt_is_crowd` [max_num_instances] int32; `gt_areas` float32, the dataset's `objects/area` in
original-image pixels (COCO: the segmentation area, which pycocotools' small/medium/large ranges
read), or the box area in original pixels when the example has none (official decoder's default);
`gt_original_boxes` [max_num_instances, 4] float32, the boxes in original-image pixels before
resizing and clipping (official: `denormalize_boxes(groundtruth_boxes)`).

Masks (`include_masks`, official Mask R-CNN parser at HEAD): flipped with the image; after the box
filtering, each kept instance's mask is sampled by `crop_and_resize` (bilinear, soft values) at
`mask_crop_size`^2 inside its final box mapped back onto the original image, from the
original-resolution mask. `gt_masks` [max_num_instances, S, S] float32, -1 padded, row i belongs to
gt_boxes[i]. The official eval parser returns no masks (COCO mask AP reads the instances json); here
eval crops them the same way, unjittered and with crowds, for validation losses and drawings.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from spinenet_jax.data import preprocess as pp


@dataclasses.dataclass(frozen=True)
class ParserConfig:
  output_size: tuple[int, int] = (640, 640)
  max_level: int = 7                 # images are zero-padded to a multiple of 2^max_level
  aug_scale_min: float = 0.5         # protocol B/C; A: 0.8-1.2
  aug_scale_max: float = 2.0
  aug_rand_hflip: bool = True
  skip_crowd_during_training: bool = True
  max_num_instances: int = 100
  include_masks: bool = False        # Mask R-CNN: add `gt_masks` (needs `objects/mask`)
  mask_crop_size: int = 112          # official default

  @property
  def padded_size(self) -> tuple[int, int]:
    return pp.padded_size(self.output_size, 2**self.max_level)


def _objects(example, config: ParserConfig):
  """(boxes, classes, is_crowd, masks [N, H, W] uint8 or None)."""
  objects = example['objects']
  boxes = tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4])
  classes = tf.reshape(tf.cast(objects['label'], tf.int32), [-1])
  is_crowd = tf.reshape(tf.cast(objects.get('is_crowd', tf.zeros_like(classes, tf.bool)), tf.bool),
                        [-1])
  masks = None
  if config.include_masks:
    if 'mask' not in objects:
      raise KeyError('ParserConfig.include_masks needs examples with objects/mask (build the COCO '
                     'folder with include_masks=True)')
    # TFDS gives [0, 0, 0, 1] for an image without objects: the reshape makes it [0, H, W].
    height, width = tf.unstack(tf.shape(example['image'])[0:2])
    masks = tf.reshape(objects['mask'], [-1, height, width])
  return boxes, classes, is_crowd, masks


def _finish(image, image_info, boxes, classes, config: ParserConfig, masks=None, extra=None):
  boxes = pp.resize_and_crop_boxes(boxes, image_info[2], image_info[1], image_info[3])
  n = config.max_num_instances
  keep = pp.non_empty_box_indices(boxes)[:n]   # the rest would be cut by the padding anyway
  boxes = tf.gather(boxes, keep)
  out = {
      'images': tf.ensure_shape(image, [*config.padded_size, 3]),
      'image_info': image_info,
      'gt_boxes': pp.pad_to_fixed_size(boxes, n, -1),
      'gt_classes': pp.pad_to_fixed_size(tf.gather(classes, keep), n, -1),
  }
  if masks is not None:
    crops = pp.crop_masks_to_boxes(tf.gather(masks, keep), boxes, image_info,
                                   config.mask_crop_size)
    out['gt_masks'] = pp.pad_to_fixed_size(crops, n, -1)
  for key, value in (extra or {}).items():
    out[key] = pp.pad_to_fixed_size(tf.gather(value, keep), n, -1)
  return out


def parse_train(example: dict, seed, config: ParserConfig = ParserConfig()) -> dict:
  """One training example; `seed` ([2] int) makes its augmentation reproducible."""
  boxes, classes, is_crowd, masks = _objects(example, config)
  if config.skip_crowd_during_training:
    keep = tf.where(~is_crowd)[:, 0]
    boxes, classes = tf.gather(boxes, keep), tf.gather(classes, keep)
    masks = None if masks is None else tf.gather(masks, keep)
  image = example['image']
  image_shape = tf.shape(image)[0:2]
  flip_seed, resize_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if config.aug_rand_hflip:  # official order: normalize, then flip; the same pixels either way
    image, boxes, masks = pp.random_horizontal_flip(image, boxes, masks, seed=flip_seed)
  image = pp.normalize_image(image)
  boxes = pp.denormalize_boxes(boxes, image_shape)
  image, image_info = pp.random_resize_and_crop_image(
      image, config.output_size, config.padded_size, config.aug_scale_min, config.aug_scale_max,
      resize_seed)
  out = _finish(image, image_info, boxes, classes, config, masks)
  out['source_id'] = tf.cast(example['image/id'], tf.int64)
  return out


def _areas(objects: dict, boxes: tf.Tensor) -> tf.Tensor:
  """[N] float32 object areas: `objects/area`, else the areas of the pixel `boxes` (official)."""
  if 'area' in objects:
    return tf.reshape(tf.cast(objects['area'], tf.float32), [-1])
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def parse_eval(example: dict, config: ParserConfig = ParserConfig()) -> dict:
  """One evaluation example: no augmentation, crowd flags, areas and original boxes kept."""
  boxes, classes, is_crowd, masks = _objects(example, config)
  image = example['image']
  image_shape = tf.shape(image)[0:2]
  boxes = pp.denormalize_boxes(boxes, image_shape)
  image, image_info = pp.resize_and_crop_image(pp.normalize_image(image), config.output_size,
                                               config.padded_size)
  extra = {'gt_is_crowd': tf.cast(is_crowd, tf.int32),
           'gt_areas': _areas(example['objects'], boxes),
           'gt_original_boxes': boxes}
  out = _finish(image, image_info, boxes, classes, config, masks, extra=extra)
  out['source_id'] = tf.cast(example['image/id'], tf.int64)
  return out
