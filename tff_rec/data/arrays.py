"""A split's examples as numpy arrays per client, read straight from the SQLite file.

The training loops need each sampled client's item indices and ratings, not
`tf.train.Example`s: parsing once into arrays (and only for the clients asked
for) keeps data access proportional to the cohort, not the population. Rows
come back in the order TFF's `SqlClientData` yields them (insertion order).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tff_rec.data import schema

# SQLite's default limit on bound parameters is 999 (older builds) or 32766.
_MAX_PARAMS = 900


@dataclasses.dataclass(frozen=True)
class ClientArrays:
  """One client's examples of one split."""

  items: np.ndarray  # int64 [n]: vocabulary indices, 0 = unknown item.
  ratings: np.ndarray  # float32 [n]
  negatives: np.ndarray | None = None  # int64 [n, 99]: ranking val/test splits only.
  users: np.ndarray | None = None  # int64 [n]: user indices, when read with a user lookup.

  def __len__(self) -> int:
    return len(self.items)


def concatenate(parts: Sequence[ClientArrays]) -> ClientArrays:
  """One client's examples of several splits, in order (without negatives)."""
  return ClientArrays(np.concatenate([p.items for p in parts]), np.concatenate([p.ratings for p in parts]))


class SplitArrays:
  """Per-client arrays of one split, parsed on first use and cached.

  Args:
    db_path: A prepared `clients.sqlite` or `platforms.sqlite`.
    split: A name from `schema.ALL_SPLITS`.
    lookup: Item id -> index, from `preprocessing.id_lookup`.
    cache: Keep parsed clients in memory (off for million-client populations).
    user_lookup: User id -> index; if given, `ClientArrays.users` is filled
      (a platform client holds many users).
  """

  def __init__(self, db_path: str, split: str, lookup: tf.keras.layers.StringLookup, *, cache: bool = True,
               user_lookup: tf.keras.layers.StringLookup | None = None):
    schema.element_spec(split)  # Validates the name.
    self.db_path, self.split, self.lookup, self._cache_on = db_path, split, lookup, cache
    self.user_lookup = user_lookup
    self._cache: dict[str, ClientArrays] = {}
    self._with_negatives = schema.has_negatives(split)
    self._features = {'user_id': tf.io.FixedLenFeature([], tf.string),
                      'item_id': tf.io.FixedLenFeature([], tf.string),
                      'rating': tf.io.FixedLenFeature([], tf.float32)}
    if self._with_negatives:
      self._features['negative_item_ids'] = tf.io.FixedLenFeature([schema.NUM_NEGATIVES], tf.string)
    with self._connect() as con:
      self.client_ids = [r[0] for r in con.execute(
          'SELECT client_id FROM client_metadata WHERE split_name = ? ORDER BY client_id', (split,))]
    self.id_array = np.sort(np.asarray(self.client_ids))  # For per-round sampling over large populations.

  def _connect(self) -> sqlite3.Connection:
    return sqlite3.connect(f'file:{self.db_path}?mode=ro', uri=True)

  def get(self, client_ids: Sequence[str]) -> list[ClientArrays]:
    """The arrays of `client_ids`, in that order; a client with no examples gets empty arrays."""
    missing = sorted({c for c in client_ids if c not in self._cache})
    fetched = self._read(missing) if missing else {}
    if self._cache_on:
      self._cache.update(fetched)
    return [self._cache[c] if c in self._cache else fetched[c] for c in client_ids]

  def preload(self) -> None:
    """Parses every client of the split in one pass (small datasets)."""
    self.get(self.client_ids)

  def _read(self, client_ids: list[str]) -> dict[str, ClientArrays]:
    owners, protos = [], []
    with self._connect() as con:
      for start in range(0, len(client_ids), _MAX_PARAMS):
        chunk = client_ids[start:start + _MAX_PARAMS]
        rows = con.execute(
            f'SELECT client_id, serialized_example_proto FROM examples WHERE split_name = ? AND client_id IN '
            f'({",".join("?" * len(chunk))}) ORDER BY rowid', (self.split, *chunk)).fetchall()
        owners.extend(r[0] for r in rows)
        protos.extend(r[1] for r in rows)
    empty = ClientArrays(np.zeros([0], np.int64), np.zeros([0], np.float32),
                         np.zeros([0, schema.NUM_NEGATIVES], np.int64) if self._with_negatives else None,
                         np.zeros([0], np.int64) if self.user_lookup is not None else None)
    out = {c: empty for c in client_ids}
    if not protos:
      return out
    parsed = tf.io.parse_example(tf.constant(protos), self._features)
    items = self.lookup(parsed['item_id']).numpy()
    ratings = parsed['rating'].numpy()
    negatives = self.lookup(parsed['negative_item_ids']).numpy() if self._with_negatives else None
    users = self.user_lookup(parsed['user_id']).numpy() if self.user_lookup is not None else None
    owners = np.asarray(owners)
    order = np.argsort(owners, kind='stable')  # Group by client, keeping each client's row order.
    sorted_owners = owners[order]
    starts = np.flatnonzero(np.r_[True, sorted_owners[1:] != sorted_owners[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(order)]):
      rows = order[begin:end]
      out[str(sorted_owners[begin])] = ClientArrays(
          items[rows], ratings[rows], negatives[rows] if negatives is not None else None,
          users[rows] if users is not None else None)
    return out
