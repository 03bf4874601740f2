"""Batched input pipelines: per-process shards, deterministic augmentation, device prefetch.

Training: each process reads its own shard, shuffles with a fixed seed, repeats, and parses each
example with the stateless seed (seed, example counter), so a given config and seed produce the
same batches on every run. Batches have static shapes (drop_remainder) for `jax.jit`.

Evaluation: every example exactly once. The last batch is completed with dummy examples whose
`source_id` is -1, so shapes stay static and evaluators can drop the dummies. Evaluation batches
also carry the ground truth COCO evaluation builds when there is no instances json (`gt_is_crowd`,
`gt_areas`, `gt_original_boxes`: see `parser.py`).

`prefetch_to_mesh` turns each process's host batch into global `jax.Array`s sharded over the mesh's
data axis and keeps a few batches in flight, so the train step never waits on the transfer.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spinenet_jax.data import parser

DUMMY_SOURCE_ID = -1


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def train_dataset(source: tf.data.Dataset, batch_size: int, config: parser.ParserConfig,
                  seed: int = 0, process_index: int = 0, process_count: int = 1,
                  shuffle_buffer: int = 1024, start_batch: int = 0) -> tf.data.Dataset:
  """Endless batches of `batch_size` (this process's share of the global batch).

  Every process walks the same global stream: epoch `e` is the source shuffled with seed
  (seed, e); element `j` of the stream is parsed with the stateless seed (seed, j) and belongs to
  global batch j // G (G = batch_size * process_count), of which process p keeps positions
  [p * batch_size, (p + 1) * batch_size). So the global batches do not depend on the number of
  processes or devices, and `start_batch` resumes the stream exactly where a checkpoint left it
  (skipping at most one epoch of records, without parsing them).
  """
  if batch_size <= 0 or process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'bad sharding: batch_size={batch_size}, process_index={process_index}, '
                     f'process_count={process_count}.')
  total = num_examples(source)
  global_batch = batch_size * process_count
  start = start_batch * global_batch
  first_epoch = start // total

  def epoch(e):
    # A distinct shuffle seed per (seed, epoch) pair (for seeds below 1e6).
    return source.shuffle(shuffle_buffer, seed=seed * 1_000_003 + e + 1,
                          reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  ds = ds.enumerate(start=first_epoch * total).skip(start - first_epoch * total)
  if process_count > 1:
    ds = ds.filter(lambda j, _: (j % global_batch) // batch_size == process_index)

  def parse(index, example):
    return parser.parse_train(example, tf.stack([tf.cast(seed, tf.int64), index]), config)

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def num_examples(source: tf.data.Dataset) -> int:
  """Examples in one pass of a finite source (counted once if tf.data does not know)."""
  n = int(source.cardinality())
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError('the source must be finite (one epoch); it is infinite.')
  if n == tf.data.UNKNOWN_CARDINALITY:
    n = int(source.reduce(np.int64(0), lambda count, _: count + 1))
  if n == 0:
    raise ValueError('the source is empty.')
  return n


def eval_dataset(source: tf.data.Dataset, batch_size: int, config: parser.ParserConfig,
                 process_index: int = 0, process_count: int = 1,
                 num_batches: int | None = None) -> tf.data.Dataset:
  """One pass over this process's shard, completed with dummy examples (source_id -1).

  Without `num_batches` only the last batch is completed; with it every process yields exactly
  `num_batches` batches (see `eval_num_batches`), as collective programs need on many hosts.
  """
  ds = source.shard(process_count, process_index).map(
      lambda example: parser.parse_eval(example, config), num_parallel_calls=tf.data.AUTOTUNE)
  dummy = ds.take(1).map(lambda e: dict(e, source_id=tf.constant(DUMMY_SOURCE_ID, tf.int64)))
  if num_batches is not None:
    ds = ds.concatenate(dummy.repeat()).take(num_batches * batch_size)
  elif batch_size > 1:
    ds = ds.concatenate(dummy.repeat(batch_size - 1))
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(
      _options())


def eval_num_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches per process that cover the largest of `process_count` round-robin shards."""
  per_process = -(-num_examples // process_count)
  return max(1, -(-per_process // batch_size))


def check_batch_size(global_batch: int, num_devices: int, num_processes: int = 1,
                     name: str = 'config.train.global_batch_size') -> int:
  """This process's share of `global_batch`; ValueError unless it splits evenly over the devices.

  A batch sharded over the mesh's data axis needs the same number of examples on every device,
  and `to_global` assembles it from equal per-process shares. `name` is the config key reported.
  """
  if num_devices <= 0 or num_processes <= 0 or num_devices % num_processes:
    raise ValueError(f'{num_devices} devices cannot be split evenly over {num_processes} '
                     'processes.')
  if global_batch <= 0 or global_batch % num_devices:
    multiple = f'a positive multiple of {num_devices}'
    raise ValueError(f'{name}={global_batch} must be {multiple}: the batch is split evenly over '
                     f'{num_devices} devices ({num_processes} processes). Set {name} to '
                     f'{multiple}, e.g. {max(1, round(global_batch / num_devices)) * num_devices}.')
  return global_batch // num_processes


def to_global(batch: dict, mesh: Mesh, axis: str = 'data') -> dict:
  """This process's numpy batch -> global jax.Arrays sharded along `axis` (multi-host aware)."""
  sharding = NamedSharding(mesh, PartitionSpec(axis))
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def prefetch_to_mesh(batches: Iterable[dict], mesh: Mesh, size: int = 2,
                     axis: str = 'data') -> Iterator[dict]:
  """Yields global batches while up to `size` more are already transferred."""
  queue = collections.deque()
  iterator = iter(batches)
  for batch in itertools.islice(iterator, size):
    queue.append(to_global(batch, mesh, axis))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(iterator, 1):
      queue.append(to_global(batch, mesh, axis))
