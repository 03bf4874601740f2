"""Data sources for the input pipeline: any COCO-format folder, TFDS coco/2017, synthetic shapes.

All three give tf.data examples in the format `parser.py` expects (that of TFDS coco):
  {'image': uint8 [H, W, 3] RGB, 'image/filename': string, 'image/id': int64,
   'objects': {'id': int64 [N], 'area': float32 [N],
               'bbox': float32 [N, 4] normalized [ymin, xmin, ymax, xmax],
               'label': int64 [N] COCO category ids, 'is_crowd': bool [N],
               'mask': uint8 [N, H, W, 1] values 0/1 (COCO folders built with include_masks)}}.
Labels are the category ids of the json (COCO: 1..90, with gaps), not contiguous indices, because
the official RetinaNet classifies over `max id + 1` classes (91 for COCO). TFDS coco/2017 stores
contiguous indices 0..79, so `load_coco2017` maps them back through `COCO_CATEGORY_IDS`.

`objects/area` is the json's `area` (COCO: the segmentation area, not the box's), which the
evaluation reads for the small / medium / large ranges when it builds ground truth from the
batches. COCO folders store it as float32 (the box area w h when the json has none); TFDS coco/2017
stores it as int64 (the json's area truncated), cast to float32 by `load_coco2017`.

`CocoFolder` is one TFDS builder for any folder of images plus an instances json; its config holds
the split -> (images dir, json) paths. The json is validated and normalized first (`coco_json`:
refused ids, integer image ids, defaulted keys, EXIF orientation, rescaled files), so the stored
`image/id` is the normalized integer id and boxes are in the file's (display) pixels. Real folders
hold bad files, so generation never dies on one image: missing, corrupt or truncated images are
skipped, grayscale / RGBA / palette / CMYK images converted to RGB, boxes clipped to the image (and
dropped when that leaves them empty), each case counted and logged with the file name, with a
summary per split. Missing paths fail before any generation starts.

Instance masks are an option of the folder (`include_masks`, off by default), stored as one
full-image PNG per object (values 0/1, as the official tf.Examples' `image/object/mask`). Off, the
segmentations are not even read: masks would add generation time (rasterizing ~860k COCO train
polygons), disk, and about 1 ms of PNG decoding per mask to every read unless each reader
remembered to skip the feature, all for nothing in detection-only (RetinaNet) training. On, a
segmentation that cannot be decoded drops its object (counted, logged with the file name and
annotation id): a Mask R-CNN target for it would be wrong; one that decodes to no pixel is kept
(counted), as the official tf.Examples keep such objects too.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import types
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from spinenet_jax.data import coco_json, coco_masks, synthetic

log = logging.getLogger(__name__)

# Official COCO ids of the 80 categories, in the order of TFDS coco's contiguous labels 0..79.
COCO_CATEGORY_IDS: tuple[int, ...] = (
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
  31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
  56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
  85, 86, 87, 88, 89, 90)
COCO_NUM_CLASSES = 91  # max id + 1, as the official configs


# The COCO-folder builder


@dataclasses.dataclass(eq=False)
class CocoFolderConfig(tfds.core.BuilderConfig):
  """A named COCO-format folder: {split: (images dir, instances json path)}, masks or not."""
  splits: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  include_masks: bool = False


@dataclasses.dataclass
class SplitStats:
  """What generation of one split met; every count but `images` is also logged per file."""
  images: int = 0                 # examples written
  skipped_images: int = 0         # missing, unreadable, corrupt or truncated (not written)
  converted_images: int = 0       # grayscale, RGBA, palette, CMYK, ... converted to RGB
  clipped_boxes: int = 0          # boxes reaching out of the image, clipped
  dropped_boxes: int = 0          # boxes empty (after clipping) or malformed
  images_without_objects: int = 0
  crowd_only_images: int = 0
  bad_masks: int = 0              # with include_masks: undecodable segmentation (object dropped)
  empty_masks: int = 0            # with include_masks: segmentation with no pixel (object kept)


class CocoFolder(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for a COCO-format folder; see `build_coco_folder`."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = types.MappingProxyType({
      '1.0.0': 'Initial release.',
      '2.0.0': 'Validated json (coco_json): integer image ids, EXIF orientation, rescaled files.'})
  # Nothing is downloaded, so there is no checksums file next to the code to find. (TFDS' own
  # lookup of this path needs the `importlib_resources` package for a builder outside TFDS.)
  code_path = None

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.stats: dict[str, SplitStats] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    objects = {
        'id': np.int64,
        'area': np.float32,
        'bbox': tfds.features.BBoxFeature(),
        'label': np.int64,
        'is_crowd': np.bool_,
    }
    if self.builder_config.include_masks:
      objects['mask'] = tfds.features.Image(shape=(None, None, 1), encoding_format='png')
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
        'image/filename': tfds.features.Text(),
        'image/id': np.int64,
        'objects': tfds.features.Sequence(objects),
    })
    return tfds.core.DatasetInfo(builder=self, features=features,
                                 metadata=tfds.core.MetadataDict(),
                                 description='A COCO-format folder (instances json + images).')

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = dict(self.builder_config.splits)
    if not splits:
      raise ValueError('CocoFolder config has no splits')
    for images_dir, json_path in splits.values():   # every path, before any generation
      coco_json.check_paths(json_path, images_dir)
    datasets, dropped = {}, {}
    for split, (images_dir, json_path) in splits.items():
      datasets[split], report = coco_json.normalize(json_path, images_dir)
      dropped[split] = SplitStats(skipped_images=report.counts[coco_json.DROPPED_FILES],
                                  dropped_boxes=report.counts[coco_json.DROPPED_BOXES])
      coco_json.log_report(report)
    categories = _merge_categories([d['categories'] for d in datasets.values()])
    self.info.metadata['categories'] = [{'id': k, 'name': v} for k, v in categories.items()]
    self.info.metadata['num_classes'] = max(categories, default=0) + 1
    return {split: self._generate_examples(split, splits[split][0], dataset, dropped[split])
            for split, dataset in datasets.items()}

  def _generate_examples(self, split: str, images_dir: str, dataset: dict, stats: SplitStats):
    # `stats` holds what the validation left out (and logged): unreadable files, bad boxes.
    self.stats[split] = stats
    by_image = collections.defaultdict(list)
    for ann in dataset['annotations']:
      by_image[ann['image_id']].append(ann)
    for image in sorted(dataset['images'], key=lambda i: i['id']):
      example = _example(images_dir, image, by_image[image['id']], stats,
                         self.builder_config.include_masks)
      if example is not None:
        stats.images += 1
        yield image['id'], example
    log.info('coco folder split %r: %s', split, dataclasses.asdict(stats))


def build_coco_folder(name: str, splits: Mapping[str, tuple[str, str]], data_dir: str,
                      include_masks: bool = False) -> CocoFolder:
  """A TFDS builder of COCO-format splits {split: (images dir, instances json)} under `data_dir`.

  Call `download_and_prepare()` then `as_dataset(split=...)`. Prepared data lives in
  `<data_dir>/coco_folder/<name>/<version>` (`<name>_masks` with `include_masks`, which adds the
  `objects/mask` feature) and is reused as is: `datasets.load_split` names it by a fingerprint of
  the json and the images, so changed content gets a new name. The jsons are validated and
  normalized by `coco_json.normalize` (DatasetError for what would make training wrong); missing
  paths raise FileNotFoundError when preparing, before any example is generated.
  """
  config = CocoFolderConfig(name=f'{name}_masks' if include_masks else name,
                            version=CocoFolder.VERSION, include_masks=include_masks,
                            splits={k: (os.fspath(v[0]), os.fspath(v[1]))
                                    for k, v in splits.items()})
  return CocoFolder(config=config, data_dir=data_dir)


def folder_categories(builder: tfds.core.DatasetBuilder) -> dict[int, str]:
  """{category id: name} of a prepared COCO-folder builder."""
  return {int(c['id']): c['name'] for c in builder.info.metadata['categories']}


def folder_num_classes(builder: tfds.core.DatasetBuilder) -> int:
  """Classes of the classifier for a prepared COCO-folder builder: max category id + 1."""
  return int(builder.info.metadata['num_classes'])


def _merge_categories(lists: list[list[dict]]) -> dict[int, str]:
  out = {}
  for categories in lists:
    for c in categories:
      if out.setdefault(int(c['id']), c['name']) != c['name']:
        log.warning('category %d named both %r and %r', c['id'], out[int(c['id'])], c['name'])
  return dict(sorted(out.items()))


# One example


def _example(images_dir: str, image: dict, annotations: list[dict], stats: SplitStats,
             include_masks: bool = False) -> dict | None:
  """The TFDS example of one normalized image (`coco_json`: EXIF orientation, rescaling and size
  checks are decided and logged there), or None when its file cannot be decoded."""
  name = image['file_name']
  loaded = _load_image(os.path.join(images_dir, name), image['orientation'], stats)
  if loaded is None:
    return None
  encoded, (height, width) = loaded
  if (height, width) != (image['height'], image['width']):   # the file changed since its header
    stats.skipped_images += 1
    log.warning('%s: skipped, decoded size %dx%d differs from its header %dx%d', name, height,
                width, image['height'], image['width'])
    return None
  objects = [obj for ann in annotations
             if (obj := _object(ann, height, width, name, stats)) is not None
             and (not include_masks or _add_mask(obj, ann, image, name, stats))]
  if not objects:
    stats.images_without_objects += 1
    log.info('%s: no objects', name)
  elif all(obj['is_crowd'] for obj in objects):
    stats.crowd_only_images += 1
    log.info('%s: only crowd objects', name)
  return {'image': encoded, 'image/filename': name, 'image/id': image['id'],
          'objects': _stack(objects, include_masks)}


def _load_image(path: str, orientation: int, stats: SplitStats
                ) -> tuple[bytes, tuple[int, int]] | None:
  """(encoded RGB bytes, (height, width)); None (counted, logged) for unreadable files.

  RGB JPEG and PNG files are stored as they are (no recompression; TF decodes them when read, as
  for TFDS coco); anything else is decoded by PIL, converted to RGB (alpha dropped, palette
  expanded, CMYK converted) and stored as lossless PNG. `orientation` != 1: the EXIF orientation
  is applied (TF's decoders ignore EXIF) and the result stored as PNG.
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # decodes everything: raises on corrupt or truncated data
      if image.mode == 'RGB' and image.format in ('JPEG', 'PNG') and orientation == 1:
        return data, (image.height, image.width)
      if orientation != 1:
        image = ImageOps.exif_transpose(image)
      else:
        stats.converted_images += 1
        log.info('%s: %s %s converted to RGB', os.path.basename(path), image.format, image.mode)
      buffer = io.BytesIO()
      image.convert('RGB').save(buffer, format='PNG')
      return buffer.getvalue(), (image.height, image.width)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    stats.skipped_images += 1
    log.warning('%s: skipped, cannot decode image: %s', os.path.basename(path), e)
    return None


def _object(ann: dict, height: int, width: int, name: str, stats: SplitStats) -> dict | None:
  """The object of one normalized annotation, its box clipped to the image; None when the box is
  empty inside the image."""
  x, y, w, h = ann['bbox']
  x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
  if x1 <= x0 or y1 <= y0:
    stats.dropped_boxes += 1
    log.warning('%s: annotation %s dropped: box %s is empty in the %dx%d image', name,
                ann.get('id'), ann['bbox'], height, width)
    return None
  if (x0, y0, x1, y1) != (x, y, x + w, y + h):
    stats.clipped_boxes += 1
    log.warning('%s: annotation %s box %s clipped to the %dx%d image', name, ann.get('id'),
                ann['bbox'], height, width)
  box = tfds.features.BBox(ymin=y0 / height, xmin=x0 / width, ymax=y1 / height, xmax=x1 / width)
  return {'id': int(ann['id']) if isinstance(ann['id'], int) else -1,
          'area': float(ann['area']), 'bbox': box, 'label': int(ann['category_id']),
          'is_crowd': bool(ann['iscrowd'])}


def _add_mask(obj: dict, ann: dict, image: dict, name: str, stats: SplitStats) -> bool:
  """Adds the PNG of the annotation's mask to `obj`; False (counted, logged) when undecodable.

  The segmentation is in the json's pixels: decoded at the json's size, then resized (nearest) to
  the file's when the file is a rescale of it.
  """
  height, width = image['height'], image['width']
  rescaled = image['scale'] != (1.0, 1.0)
  json_height, json_width = image['json_size'] if rescaled else (height, width)
  try:
    mask = coco_masks.segmentation_mask(ann.get('segmentation'), json_height, json_width)
  except (ValueError, TypeError) as e:
    stats.bad_masks += 1
    log.warning('%s: annotation %s dropped: bad segmentation: %s', name, ann.get('id'), e)
    return False
  if mask.shape != (height, width):
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
  if not mask.any():
    stats.empty_masks += 1
    log.info('%s: annotation %s has an empty mask', name, ann.get('id'))
  obj['mask'] = coco_masks.png_mask(mask)
  return True


def _stack(objects: list[dict], include_masks: bool = False) -> dict:
  """A Sequence feature value; explicit empty arrays when there is no object."""
  if objects:
    return {key: [obj[key] for obj in objects] for key in objects[0]}
  empty = {'id': np.zeros([0], np.int64), 'area': np.zeros([0], np.float32),
           'bbox': np.zeros([0, 4], np.float32), 'label': np.zeros([0], np.int64),
           'is_crowd': np.zeros([0], np.bool_)}
  if include_masks:
    empty['mask'] = []
  return empty


# Ready-made sources


def load_coco2017(split: str, data_dir: str) -> tf.data.Dataset:
  """TFDS coco/2017 `split` from `data_dir`, with `objects/label` mapped to COCO category ids
  and `objects/area` (int64 there) cast to float32."""
  path = os.path.join(data_dir, 'coco', '2017')
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f'coco/2017 is not prepared in data_dir {data_dir} (no folder {path}). Prepare it where '
        f'the network is available, e.g. `tfds build coco/2017 --data_dir={data_dir}`, then copy '
        'that data_dir here.')
  dataset = tfds.load('coco/2017', split=split, data_dir=data_dir, download=False)
  return dataset.map(coco_ids_from_tfds_labels, num_parallel_calls=tf.data.AUTOTUNE)


def coco_ids_from_tfds_labels(example: dict) -> dict:
  """Replaces TFDS coco's contiguous `objects/label` 0..79 by the COCO category ids 1..90 (and
  casts `objects/area` to float32, as COCO folders store it)."""
  objects = dict(example['objects'])
  table = tf.constant(COCO_CATEGORY_IDS, tf.int64)
  objects['label'] = tf.gather(table, tf.cast(objects['label'], tf.int64))
  if 'area' in objects:
    objects['area'] = tf.cast(objects['area'], tf.float32)
  return {**example, 'objects': objects}


def load_synthetic(split: str, root: str, data_dir: str, *, num_images: int | None = None,
                   seed: int | None = None, include_masks: bool = False) -> tf.data.Dataset:
  """The synthetic shapes split (generated under `root` if needed), built with `CocoFolder`.

  Without `num_images` / `seed` the default splits of `synthetic.DEFAULT_SPLITS` are used. With
  `include_masks` the examples carry `objects/mask` (exact: the synthetic masks are the pixels).
  """
  if num_images is None and seed is None:
    synthetic.generate_default(root)
    name = 'synthetic'
  else:
    default_n, default_seed = synthetic.DEFAULT_SPLITS.get(split, (16, 0))
    num_images = default_n if num_images is None else num_images
    seed = default_seed if seed is None else seed
    synthetic.generate(root, split, num_images, seed)
    name = f'synthetic_{split}_{num_images}_{seed}'
  builder = build_coco_folder(name, _synthetic_splits(root, name, split), data_dir,
                              include_masks=include_masks)
  builder.download_and_prepare()
  return builder.as_dataset(split=split)


def _synthetic_splits(root: str, name: str, split: str) -> dict[str, tuple[str, str]]:
  splits = list(synthetic.DEFAULT_SPLITS) if name == 'synthetic' else [split]
  return {s: (os.path.join(root, s, 'images'), os.path.join(root, 'annotations',
                                                             f'instances_{s}.json'))
          for s in splits}
