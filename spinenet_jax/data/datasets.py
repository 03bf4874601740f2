"""The datasets a config asks for: sources, parser settings, per-process batches.

`config.data.source` picks the source: 'coco2017' (TFDS, prepared in `tfds_data_dir`),
'coco_folder' (any COCO-format images folder + instances json, built into TFDS format on first
use), or 'synthetic' (the embedded dataset, generated locally). The evaluation ground truth is the
split's instances json where there is one (`config.eval.annotation_file` overrides it), validated
and normalized by `coco_json`; without one (TFDS coco/2017) it is taken from the evaluation
batches, as the official code does.

A COCO folder is checked before anything is built or trained (`coco_json.normalize`: refused
category and image ids stop the run with a message saying what to fix; repairs are counted in one
logged summary), and each split is prepared under a name that carries a fingerprint of its json and
image files (`<folder_name>_<split>_<fingerprint>`): edited annotations or images are prepared
anew, never silently replaced by a stale copy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import tensorflow as tf

from spinenet_jax.data import coco_json, input_pipeline, parser, sources, synthetic

log = logging.getLogger(__name__)

SOURCES = ('coco2017', 'coco_folder', 'synthetic')


@dataclasses.dataclass
class Split:
  dataset: tf.data.Dataset           # decoded examples, one pass
  num_examples: int
  annotation_file: str | None        # COCO instances json for evaluation, if any
  groundtruth: dict | None = None    # that json normalized (coco_json): the evaluation's truth
  categories: dict[int, str] | None = None   # {id: name} where the source has a json


def parser_config(config, image_size: tuple[int, int] | None = None,
                  **options) -> parser.ParserConfig:
  """The parser settings of `config`, at `image_size` if given (else config.input.image_size).

  `options` are further `ParserConfig` fields a detector needs (`Detector.parser_options`, e.g.
  include_masks); `config.input.include_masks` asks for masks too.
  """
  c = config.input
  fields = dict(
      output_size=tuple(image_size or c.image_size), max_level=config.model.backbone.max_level,
      aug_scale_min=c.aug_scale_min, aug_scale_max=c.aug_scale_max,
      aug_rand_hflip=c.aug_rand_hflip, skip_crowd_during_training=c.skip_crowd_during_training,
      max_num_instances=c.max_num_instances)
  if c.get('include_masks'):
    fields.update(include_masks=True, mask_crop_size=c.mask_crop_size)
  fields.update(options)
  return parser.ParserConfig(**fields)


def _tfds_dir(config, workdir: str) -> str:
  return config.data.tfds_data_dir or os.path.join(workdir, 'tfds')


def load_split(config, which: str, workdir: str, num_classes: int | None = None,
               num_classes_key: str = 'config.model.head.num_classes',
               include_masks: bool = False) -> Split:
  """The 'train' or 'eval' split of `config.data`.

  `num_classes` (the detector's classifier size, reported as `num_classes_key`): COCO-folder
  category ids must fit it. `include_masks` (or `config.input.include_masks`): the examples carry
  `objects/mask` (Mask R-CNN). Raises coco_json.DatasetError (what to fix) for a json that would
  train or evaluate wrongly, FileNotFoundError / ValueError naming missing paths or keys.
  """
  d = config.data
  split = d.train_split if which == 'train' else d.eval_split
  annotations, groundtruth, dataset_json = None, None, None
  include_masks = bool(include_masks or config.input.get('include_masks'))
  if d.source == 'coco2017':
    if not d.tfds_data_dir:
      raise ValueError("config.data.tfds_data_dir must name the TFDS data_dir holding coco/2017.")
    if include_masks and which == 'train':
      raise ValueError(
          "TFDS coco/2017 holds no instance masks, which Mask R-CNN trains on: use "
          "config.data.source='coco_folder' with COCO's own train2017/ and "
          "annotations/instances_train2017.json (see docs/training.md).")
    ds = sources.load_coco2017(split, d.tfds_data_dir)
  elif d.source == 'coco_folder':
    ds, annotations, dataset_json = _coco_folder(config, which, split, workdir, num_classes,
                                                 num_classes_key, include_masks)
    groundtruth = dataset_json if which == 'eval' else None
  elif d.source == 'synthetic':
    root = d.synthetic_root or os.path.join(workdir, 'synthetic')
    ds = sources.load_synthetic(split, root, _tfds_dir(config, workdir),
                                num_images=d.synthetic_num_images, include_masks=include_masks)
    annotations = os.path.join(root, 'annotations', f'instances_{split}.json')
  else:
    raise ValueError(f'config.data.source must be one of {SOURCES}, got {d.source!r}.')
  if which == 'eval' and config.eval.annotation_file:
    annotations, groundtruth = config.eval.annotation_file, None
  if which == 'eval' and annotations and groundtruth is None:
    images_dir = d.eval_images if d.source == 'coco_folder' else None
    groundtruth, _ = coco_json.normalize(annotations, images_dir)
    if dataset_json is not None:      # an override of a COCO folder's json: the folder's ids
      groundtruth = _align_image_ids(groundtruth, dataset_json, annotations)
  if groundtruth is not None:
    groundtruth['json_path'] = annotations
  if which == 'eval' and config.eval.num_images:
    ds = ds.take(config.eval.num_images)
  categories = {c['id']: c['name'] for c in (dataset_json or groundtruth or {}).get(
      'categories', [])} or None
  return Split(ds, input_pipeline.num_examples(ds), annotations,
               groundtruth if which == 'eval' else None, categories)


def _align_image_ids(groundtruth: dict, dataset_json: dict, path: str) -> dict:
  """`groundtruth` (another json of a COCO folder's images) with the folder's image ids, matched
  by file name; DatasetError, before any inference, when a folder image has no ground truth."""
  ids = {i['file_name']: i['id'] for i in dataset_json['images']}
  missing = sorted(set(ids) - {i['file_name'] for i in groundtruth['images']})
  if missing:
    raise coco_json.DatasetError(
        f'config.eval.annotation_file={path} lacks {len(missing)} of the evaluation images '
        f'({coco_json.listed(missing)}): evaluate with a json that lists every image of '
        'config.data.eval_annotations.')
  spare = iter(range(max(ids.values(), default=0) + 1, 2**62))
  new_ids = {i['id']: ids.get(i['file_name']) or next(spare) for i in groundtruth['images']}
  images = [dict(i, id=new_ids[i['id']]) for i in groundtruth['images']]
  annotations = [dict(a, image_id=new_ids[a['image_id']]) for a in groundtruth['annotations']]
  return dict(groundtruth, images=images, annotations=annotations)


def check_categories(train: Split, eval_split: Split | None) -> None:
  """DatasetError when the train and eval jsons give the same names to different ids (a swap:
  the model would be scored against the wrong classes); a warning for other differences."""
  if eval_split is None or not train.categories or not eval_split.categories:
    return
  a, b = train.categories, eval_split.categories
  by_name = {name: i for i, name in a.items()}
  swapped = sorted(f'{name!r} ({by_name[name]} in train, {i} in eval)' for i, name in b.items()
                   if name in by_name and by_name[name] != i)
  if swapped:
    raise coco_json.DatasetError(
        f'The train and eval jsons number categories differently: {", ".join(swapped[:5])}. '
        'Use the same category ids in both.')
  differ = sorted(i for i in set(a) & set(b) if a[i] != b[i])
  if differ or set(a) != set(b):
    log.warning('Train and eval categories differ: ids %s named differently, ids only in train '
                '%s, only in eval %s.', differ, sorted(set(a) - set(b)), sorted(set(b) - set(a)))


def _coco_folder(config, which: str, split: str, workdir: str, num_classes: int | None,
                 num_classes_key: str, include_masks: bool = False
                 ) -> tuple[tf.data.Dataset, str, dict | None]:
  """(examples, json path, the json normalized) of a COCO-folder split, checked and prepared
  (under a fingerprinted name) if needed."""
  d = config.data
  images = d.train_images if which == 'train' else d.eval_images
  annotations = d.train_annotations if which == 'train' else d.eval_annotations
  if not images or not annotations:
    key = 'train' if which == 'train' else 'eval'
    raise ValueError(f'config.data.{key}_images and config.data.{key}_annotations must be set '
                     "for config.data.source='coco_folder'.")
  # Headers are read for evaluation (its ground truth is in the files' pixels); training needs
  # only the json checks here, the builder reads the files when it prepares them.
  # What max_num_instances cuts matters for training; evaluation scores against the whole json.
  normalized, report = coco_json.normalize(
      annotations, images if which == 'eval' else None, num_classes=num_classes,
      num_classes_key=num_classes_key,
      max_num_instances=config.input.max_num_instances if which == 'train' else None,
      require_objects=which == 'train')
  coco_json.log_report(report, num_classes)
  tfds_dir = _tfds_dir(config, workdir)
  stamp = coco_json.fingerprint(annotations, images, [i['file_name'] for i in normalized['images']],
                                sources.CocoFolder.VERSION)   # masks: a '_masks' name suffix
  name = f'{d.folder_name}_{split}_{stamp[:12]}'
  _note_stale(tfds_dir, f'{d.folder_name}_{split}_', name)
  builder = sources.build_coco_folder(name, {split: (images, annotations)}, tfds_dir,
                                      include_masks=include_masks)
  builder.download_and_prepare()
  return builder.as_dataset(split=split), annotations, normalized


def _note_stale(tfds_dir: str, prefix: str, name: str) -> None:
  """Logs the newest earlier preparation of the split that its json or images no longer match."""
  root = os.path.join(tfds_dir, 'coco_folder')
  if os.path.isdir(os.path.join(root, name)) or not os.path.isdir(root):
    return
  older = [os.path.join(root, d) for d in os.listdir(root) if d.startswith(prefix)]
  prepared = [d for d in older if any(os.path.isfile(os.path.join(d, v, 'dataset_info.json'))
                                      for v in os.listdir(d))]
  if prepared:
    log.warning('The annotations or images changed since %s was prepared: preparing %s from '
                'the current files (delete the old folder to free its space).',
                max(prepared, key=os.path.getmtime), name)


def _per_process(global_batch: int, name: str) -> int:
  return input_pipeline.check_batch_size(global_batch, jax.device_count(), jax.process_count(),
                                         name)


def train_batches(config, split: Split, start_batch: int,
                  image_size: tuple[int, int] | None = None, **options) -> tf.data.Dataset:
  """This process's share of the training batches from batch `start_batch` on; `options` as in
  `parser_config`."""
  per_process = _per_process(config.train.global_batch_size, 'config.train.global_batch_size')
  return input_pipeline.train_dataset(
      split.dataset, per_process, parser_config(config, image_size, **options), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      shuffle_buffer=config.data.shuffle_buffer, start_batch=start_batch)


def eval_batches(config, split: Split) -> tf.data.Dataset:
  """This process's share of the evaluation batches (one pass, padded to whole batches)."""
  per_process = _per_process(config.eval.batch_size, 'config.eval.batch_size')
  num_batches = input_pipeline.eval_num_batches(split.num_examples, per_process,
                                                jax.process_count())
  # No masks at evaluation: mask AP reads the ground truth from the json (as official), and TFDS
  # coco/2017 has none to read.
  return input_pipeline.eval_dataset(split.dataset, per_process,
                                     parser_config(config, include_masks=False),
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), num_batches=num_batches)


def category_names(config, workdir: str) -> dict[int, str]:
  """{category id: name} for drawing predictions."""
  if config.data.source == 'synthetic':
    return synthetic.category_names()
  if config.data.source == 'coco_folder' and config.data.eval_annotations:
    with open(config.data.eval_annotations) as f:
      return {int(c['id']): c['name'] for c in json.load(f).get('categories', [])}
  return {}
