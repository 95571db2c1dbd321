"""One user's history read straight from a prepared `clients.sqlite`, as the user's device holds it.

The device's history is what the user trained on: its `ranking_train` examples (`heldout_ranking_support` for a
held-out user), in time order. Read with sqlite3 and protobuf only (no TensorFlow graph), as an app would.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Iterator, Sequence

import numpy as np
from tensorflow.core.example import example_pb2

from tff_rec.data import schema

HISTORY_SPLITS = (schema.split_name(schema.RANKING, schema.TRAIN),
                  schema.split_name(schema.RANKING, schema.TRAIN, heldout=True))


@dataclasses.dataclass(frozen=True)
class History:
  """A user's items (as stored), ratings and timestamps, oldest first."""

  user_id: str
  item_ids: list[str]
  ratings: np.ndarray  # float32 [n]
  timestamps: np.ndarray  # int64 [n]


def _connect(db_path: str) -> sqlite3.Connection:
  if not os.path.exists(db_path):
    raise FileNotFoundError(f'{db_path} does not exist; prepare it with `python -m experiments.prepare_data`')
  return sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)


def _history(user_id: str, blobs: Sequence[bytes]) -> History:
  rows = []
  for blob in blobs:
    f = example_pb2.Example.FromString(blob).features.feature
    rows.append((f['timestamp'].int64_list.value[0], f['item_id'].bytes_list.value[0].decode(),
                 f['rating'].float_list.value[0]))
  rows.sort()
  return History(user_id, [r[1] for r in rows], np.array([r[2] for r in rows], np.float32),
                 np.array([r[0] for r in rows], np.int64))


def user_history(db_path: str, user_id: str) -> History:
  """The history of `user_id` (a training or held-out user).

  Raises:
    KeyError: If the database has no such user (names a few that exist).
  """
  con = _connect(db_path)
  try:
    marks = ', '.join('?' * len(HISTORY_SPLITS))
    blobs = [b for (b,) in con.execute(
        f'SELECT serialized_example_proto FROM examples WHERE client_id = ? AND split_name IN ({marks}) '
        'ORDER BY rowid', (user_id, *HISTORY_SPLITS))]
    if not blobs:
      some = [c for (c,) in con.execute('SELECT user_id FROM users ORDER BY rowid LIMIT 5')]
      raise KeyError(f'{db_path} has no user {user_id!r} (users are e.g. {", ".join(some)})')
  finally:
    con.close()
  return _history(user_id, blobs)


def histories(db_path: str, split: str = HISTORY_SPLITS[0], limit: int | None = None) -> Iterator[History]:
  """The histories of the users in `split` (at most `limit`), in client id order."""
  con = _connect(db_path)
  try:
    clients = [c for (c,) in con.execute('SELECT client_id FROM client_metadata WHERE split_name = ? '
                                         'ORDER BY client_id LIMIT ?', (split, -1 if limit is None else limit))]
    for client in clients:
      blobs = [b for (b,) in con.execute('SELECT serialized_example_proto FROM examples WHERE client_id = ? AND '
                                         'split_name = ? ORDER BY rowid', (client, split))]
      yield _history(client, blobs)
  finally:
    con.close()


def titles(db_path: str, item_ids: Sequence[str]) -> dict[str, str]:
  """The `items` table's titles of `item_ids` (those it has)."""
  con = _connect(db_path)
  try:
    marks = ', '.join('?' * len(item_ids))
    return dict(con.execute(f'SELECT item_id, title FROM items WHERE item_id IN ({marks})', tuple(item_ids)))
  finally:
    con.close()
