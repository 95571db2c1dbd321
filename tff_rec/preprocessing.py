"""Client-side `tf.data` preprocessing: stored examples -> model batches.

Plain TensorFlow, run on each client's own data. Randomness (shuffling,
negative sampling) is stateless and keyed by an explicit seed, so the same
seed gives the same batches.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import tensorflow as tf

from tff_rec.models.mf import IMPLICIT, RATING

SHUFFLE_BUFFER = 1024


def item_vocabulary(db_path: str) -> list[str]:
  """Item ids of the catalogue, in increasing numeric order (index i+1 = vocabulary[i])."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    return [r[0] for r in con.execute('SELECT item_id FROM items ORDER BY CAST(item_id AS INTEGER)')]
  finally:
    con.close()


def item_lookup(vocabulary: list[str]) -> tf.keras.layers.StringLookup:
  """Maps item id strings to indices 1..N; unknown ids (and padding) to 0."""
  return tf.keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1, mask_token=None)


def training_dataset(
    dataset: tf.data.Dataset,
    lookup: tf.keras.layers.StringLookup,
    *,
    objective: str,
    num_negatives: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
) -> tf.data.Dataset:
  """Turns stored examples into (item indices [B], labels [B, 1]) batches.

  Args:
    dataset: A client's stored examples (`schema.element_spec`).
    lookup: From `item_lookup`.
    objective: `rating`: label = the rating. `implicit`: each rating is a
      positive (label 1) followed by `num_negatives` items drawn uniformly from
      the catalogue (label 0), as in NCF (He et al., WWW 2017).
    num_negatives: Negatives per positive (implicit only).
    batch_size: Examples per batch.
    seed: Seed of the negatives and the shuffle.
    shuffle: Shuffle examples (training) or keep their order (evaluation).
  """
  num_items = lookup.vocabulary_size() - 1
  if objective == RATING:
    examples = dataset.map(lambda ex: (lookup(ex['item_id']), tf.reshape(ex['rating'], [1])))
  elif objective == IMPLICIT:
    labels = tf.concat([tf.ones([1, 1]), tf.zeros([num_negatives, 1])], axis=0)

    def expand(index, ex):
      negatives = tf.random.stateless_uniform([num_negatives], seed=tf.stack([tf.cast(seed, tf.int64), index]),
                                              minval=1, maxval=num_items + 1, dtype=tf.int64)
      return tf.concat([[lookup(ex['item_id'])], negatives], axis=0), labels
    examples = dataset.enumerate().map(expand).unbatch()
  else:
    raise ValueError(f'unknown objective {objective!r}')
  if shuffle:
    examples = examples.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
  return examples.batch(batch_size)


def ranking_query_dataset(dataset: tf.data.Dataset, lookup: tf.keras.layers.StringLookup) -> tf.data.Dataset:
  """LOO-99 queries: candidates [100] = (held-out item, its 99 negatives), labels [100, 1]."""
  def query(ex):
    items = tf.concat([[lookup(ex['item_id'])], lookup(ex['negative_item_ids'])], axis=0)
    labels = tf.concat([tf.ones([1, 1]), tf.zeros([tf.shape(ex['negative_item_ids'])[0], 1])], axis=0)
    return items, labels
  return dataset.map(query)


def rating_query_dataset(dataset: tf.data.Dataset, lookup: tf.keras.layers.StringLookup,
                         batch_size: int) -> tf.data.Dataset:
  """Held-out ratings as (items [B], ratings [B, 1])."""
  return dataset.map(lambda ex: (lookup(ex['item_id']), tf.reshape(ex['rating'], [1]))).batch(batch_size)


TRAIN_PURPOSE, EVAL_PURPOSE = 0, 1


def client_seed(seed: int, round_num: int, client_id: str, purpose: int = TRAIN_PURPOSE) -> int:
  """A per-(seed, purpose, round, client) seed for `training_dataset`."""
  return int(np.random.default_rng([seed, purpose, round_num, *client_id.encode()]).integers(0, 2**31 - 1))
