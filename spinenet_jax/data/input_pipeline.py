"""Batched input pipelines: per-process shards, deterministic augmentation, device prefetch.

Training: each process reads its own shard, shuffles with a fixed seed, repeats, and parses each
example with the stateless seed (seed, example counter), so a given config and seed produce the
same batches on every run. Batches have static shapes (drop_remainder) for `jax.jit`.

Evaluation: every example exactly once. The last batch is completed with dummy examples whose
`source_id` is -1, so shapes stay static and evaluators can drop the dummies.

`prefetch_to_mesh` turns each process's host batch into global `jax.Array`s sharded over the mesh's
data axis and keeps a few batches in flight, so the train step never waits on the transfer.
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator

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
                  shuffle_buffer: int = 1024) -> tf.data.Dataset:
  """Endless batches of `batch_size` (this process's share of the global batch)."""
  ds = source.shard(process_count, process_index)
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate()

  def parse(index, example):
    return parser.parse_train(example, tf.stack([tf.cast(seed, tf.int64), index]), config)

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(source: tf.data.Dataset, batch_size: int, config: parser.ParserConfig,
                 process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """One pass over this process's shard; the last batch is padded with dummy examples."""
  ds = source.shard(process_count, process_index).map(
      lambda example: parser.parse_eval(example, config), num_parallel_calls=tf.data.AUTOTUNE)
  dummy = ds.take(1).map(lambda e: dict(e, source_id=tf.constant(DUMMY_SOURCE_ID, tf.int64)))
  ds = ds.concatenate(dummy.repeat(batch_size - 1)) if batch_size > 1 else ds
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(
      _options())


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
