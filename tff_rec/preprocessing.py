"""Client-side preprocessing: a client's stored ratings -> model examples and batches.

Plain numpy on each client's own arrays (`tff_rec.data.arrays`). Randomness
(negative sampling, shuffling) comes from a generator seeded per (seed,
purpose, round, client), so the same seed gives the same batches on every
engine: the TFF datasets (`as_dataset`) and the shard process's packed shards
(`tff_rec.federated.shard_math`) are built from the same arrays.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import tensorflow as tf

from tff_rec.data.arrays import ClientArrays
from tff_rec.models.mf import IMPLICIT, RATING

Examples = tuple[np.ndarray, np.ndarray]  # (item indices int64 [n], labels float32 [n])


class GroupedExamples(list):
  """A round's examples (one `Examples` per user) and `groups`: the users (indices) of each client that holds
  several, such as a cross-silo platform's; the shard process makes each group one TFF client."""

  def __init__(self, examples: list[Examples], groups: list[list[int]]):
    super().__init__(examples)
    self.groups = groups


def _ids(db_path: str, query: str) -> list[str]:
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    return [r[0] for r in con.execute(query)]
  finally:
    con.close()


def item_vocabulary(db_path: str) -> list[str]:
  """Item ids of the catalogue, in increasing numeric order (index i+1 = vocabulary[i])."""
  return _ids(db_path, 'SELECT item_id FROM items ORDER BY CAST(item_id AS INTEGER)')


def user_vocabulary(db_path: str) -> list[str]:
  """User ids of the database (training and held-out), sorted: index i+1 = vocabulary[i]."""
  return _ids(db_path, 'SELECT user_id FROM users ORDER BY user_id')


def id_lookup(vocabulary: list[str]) -> tf.keras.layers.StringLookup:
  """Maps id strings to indices 1..N; unknown ids (and padding) to 0."""
  return tf.keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1, mask_token=None)


def training_examples(client: ClientArrays, *, objective: str, num_negatives: int, num_items: int, seed: int,
                      shuffle: bool = True, with_users: bool = False) -> Examples:
  """A client's training examples, in the order its batches take them.

  Args:
    client: The client's ratings.
    objective: `rating`: label = the rating. `implicit`: each rating is a
      positive (label 1) followed by `num_negatives` items drawn uniformly from
      the catalogue (label 0), as in NCF (He et al., WWW 2017).
    num_negatives: Negatives per positive (implicit only).
    num_items: Catalogue size; negatives are indices 1..num_items.
    seed: Seed of the negatives and the shuffle.
    shuffle: Shuffle examples (training) or keep their order (evaluation).
    with_users: Return (user index, item index) pairs [n, 2] as the items,
      for models with a user table (`mf.build_mf_user_table`).
  """
  rng = np.random.default_rng(seed)
  if objective == RATING:
    items, labels, users = client.items, client.ratings, client.users
  elif objective == IMPLICIT:
    n = len(client)
    negatives = rng.integers(1, num_items + 1, size=(n, num_negatives), dtype=np.int64)
    items = np.concatenate([client.items[:, None], negatives], axis=1).reshape(-1)
    labels = np.tile(np.array([1.0] + [0.0] * num_negatives, np.float32), n)
    users = None if client.users is None else np.repeat(client.users, 1 + num_negatives)
  else:
    raise ValueError(f'unknown objective {objective!r}')
  if with_users:
    if users is None:
      raise ValueError('with_users needs ClientArrays read with a user lookup')
    items = np.stack([users, items], axis=1)
  if shuffle:
    order = rng.permutation(len(items))
    items, labels = items[order], labels[order]
  return items.astype(np.int64), labels.astype(np.float32)


def as_dataset(examples: Examples, batch_size: int) -> tf.data.Dataset:
  """(item indices [B], labels [B, 1]) batches, the model's input spec."""
  items, labels = examples
  return tf.data.Dataset.from_tensor_slices((items, labels[:, None])).batch(batch_size)


def ranking_queries(client: ClientArrays) -> Examples:
  """LOO-99 queries: candidates [n, 100] = (held-out item, its 99 negatives), labels [n, 100]."""
  items = np.concatenate([client.items[:, None], client.negatives], axis=1)
  labels = np.zeros(items.shape, np.float32)
  labels[:, 0] = 1.0
  return items, labels


def rating_queries(client: ClientArrays) -> Examples:
  """Held-out ratings: items [n], ratings [n]."""
  return client.items, client.ratings


def query_dataset(queries: Examples, kind_is_ranking: bool, batch_size: int) -> tf.data.Dataset:
  """Ranking: one element per LOO query ([100], [100, 1]); rating: batches of ([B], [B, 1])."""
  items, labels = queries
  if kind_is_ranking:
    return tf.data.Dataset.from_tensor_slices((items, labels[..., None]))
  return tf.data.Dataset.from_tensor_slices((items, labels[:, None])).batch(batch_size)


def pad_rows(rows: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-client rows [n_c, ...] -> padded [clients, max n, ...] and mask [clients, max n]."""
  longest = max(1, max((len(r) for r in rows), default=1))
  tail = rows[0].shape[1:] if rows else ()
  out = np.zeros((len(rows), longest, *tail), dtype)
  mask = np.zeros((len(rows), longest), np.float32)
  for c, r in enumerate(rows):
    out[c, :len(r)], mask[c, :len(r)] = r, 1.0
  return out, mask


TRAIN_PURPOSE = 0


def client_seed(seed: int, round_num: int, client_id: str, purpose: int = TRAIN_PURPOSE) -> int:
  """A per-(seed, purpose, round, client) seed for `training_examples`."""
  return int(np.random.default_rng([seed, purpose, round_num, *client_id.encode()]).integers(0, 2**31 - 1))
