"""Streaming, atomic writer of TFF's SQLite ClientData format.

Writes the schema of `tff.simulation.datasets.save_to_sql_client_data`
(tables `examples` and `client_metadata`) but streams examples in, as shard
files (`write_shard`, written by any process) appended in order inside SQLite,
instead of taking one `tf.data.Dataset` per client, and adds tff-rec's own
tables. TFF's saver materialises every client through `tf.data`, which is far
too slow for millions of clients; this is the only reason it is hand-written.

Atomicity: everything goes to a hidden temporary file beside the target;
`commit()` finishes it (metadata counts, indexes, fsync) and `publish()` renames
it into place. An interrupted run never leaves a half-written database under the
target name, and an existing database is replaced only by a complete one.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

# TFF's examples table, exactly as save_to_sql_client_data creates it.
_EXAMPLES = """CREATE TABLE examples (
       split_name TEXT NOT NULL,
       client_id TEXT NOT NULL,
       serialized_example_proto BLOB NOT NULL);"""
# tff-rec's users (TFF ignores the table).
_USERS = """CREATE TABLE users (user_id TEXT PRIMARY KEY, age INTEGER, gender TEXT,
       occupation TEXT, platform TEXT, heldout INTEGER NOT NULL);"""
_SCHEMA = (
    _EXAMPLES,
    # TFF's client_metadata, as save_to_sql_client_data creates it.
    """CREATE TABLE client_metadata (
       client_id TEXT NOT NULL,
       split_name TEXT NOT NULL,
       num_examples INTEGER NOT NULL);""",
    # tff-rec's tables (TFF ignores them).
    'CREATE TABLE tff_rec_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);',
    """CREATE TABLE items (item_id TEXT PRIMARY KEY, title TEXT, year INTEGER,
       genres TEXT);""",
    _USERS,
    # Title vectors (`tff_rec.data.text`): float32 little-endian bytes; empty without a text encoder.
    'CREATE TABLE item_text (item_id TEXT PRIMARY KEY, vector BLOB NOT NULL);',
)


def _temp_path(path: str) -> str:
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory, f'.{name}.tmp-{os.getpid()}')


def remove_stale_temporaries(path: str) -> list[str]:
  """Deletes temporaries (files or directories) of `path` left by writers that died (pid not alive)."""
  directory, name = os.path.split(os.path.abspath(path))
  removed = []
  for temp in glob.glob(os.path.join(directory, f'.{name}.tmp-*')):
    pid = temp.rsplit('-', 1)[-1]
    try:
      os.kill(int(pid), 0)
      continue  # A live writer owns it.
    except (ValueError, ProcessLookupError):
      pass
    except PermissionError:
      continue
    if os.path.isdir(temp):
      shutil.rmtree(temp)
    else:
      os.remove(temp)
    removed.append(temp)
  return removed


def _private_connection(path: str, **kwargs: Any) -> sqlite3.Connection:
  """A connection to a file no one else reads until it is complete: no journal and no syncs (a failure rebuilds
  it)."""
  con = sqlite3.connect(path, **kwargs)
  con.execute('PRAGMA journal_mode=OFF')
  con.execute('PRAGMA synchronous=OFF')
  return con


class SqlClientDataWriter:
  """Writes one SQLite ClientData file atomically. Use as a context manager."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    self.temp_path = _temp_path(self.path)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    remove_stale_temporaries(self.path)
    if os.path.exists(self.temp_path):
      os.remove(self.temp_path)
    # `commit` may run in another thread (pipeline builds two files' indexes at once); one thread at a time.
    self._con = _private_connection(self.temp_path, check_same_thread=False)
    for statement in _SCHEMA:
      self._con.execute(statement)
    self._committed = False

  def add_shard(self, shard_path: str, *, by_platform: bool = False) -> None:
    """Appends every example and user of the shard file `shard_path` (`write_shard`) in the shard's order:
    the examples under their user's id, or with `by_platform` under their user's platform (the cross-silo view,
    `users.platform`). Runs inside SQLite, without a pass of Python over the examples."""
    con = self._con
    client = 'u.platform' if by_platform else 'e.client_id'
    con.execute('ATTACH DATABASE ? AS shard', (shard_path,))
    con.execute(f"""INSERT INTO examples (split_name, client_id, serialized_example_proto)
                    SELECT e.split_name, {client}, e.serialized_example_proto
                    FROM shard.examples e JOIN shard.users u ON u.user_id = e.client_id ORDER BY e.rowid""")
    con.execute('INSERT INTO users SELECT * FROM shard.users ORDER BY rowid')
    con.commit()
    con.execute('DETACH DATABASE shard')

  def add_rows(self, table: str, rows: Iterable[Sequence[Any]]) -> None:
    """Adds rows to `items`, `users` or `item_text`."""
    widths = {'items': 4, 'users': 6, 'item_text': 2}
    if table not in widths:
      raise ValueError(f'unknown table {table!r}')
    width = widths[table]
    self._con.executemany(f'INSERT INTO {table} VALUES ({", ".join("?" * width)})', rows)

  def set_metadata(self, **values: Any) -> None:
    """Stores JSON-encoded values in `tff_rec_metadata`."""
    self._con.executemany(
        'INSERT OR REPLACE INTO tff_rec_metadata VALUES (?, ?)',
        ((k, json.dumps(v, sort_keys=True)) for k, v in values.items()),
    )

  def commit(self) -> None:
    """Completes the temporary file: client metadata, indexes, fsync."""
    con = self._con
    # The index makes SqlClientData's per-client query O(client), not O(table).
    con.execute('CREATE INDEX examples_client ON examples (client_id, split_name)')
    con.execute("""INSERT INTO client_metadata (client_id, split_name, num_examples)
                   SELECT client_id, split_name, COUNT(*) FROM examples
                   GROUP BY client_id, split_name""")
    con.execute('CREATE INDEX client_metadata_split ON client_metadata (split_name, client_id)')
    con.commit()
    con.close()
    with open(self.temp_path, 'rb+') as f:
      os.fsync(f.fileno())
    self._committed = True

  def abort(self) -> None:
    try:
      self._con.close()
    except sqlite3.Error:
      pass
    if os.path.exists(self.temp_path):
      os.remove(self.temp_path)

  def __enter__(self) -> 'SqlClientDataWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None or not self._committed:
      self.abort()


def write_shard(path: str, example_rows: Sequence[tuple[str, str, bytes]], user_rows: Sequence[Sequence[Any]]) -> None:
  """Writes (split name, client id, serialized example) rows and `users` rows to a new shard file at `path`,
  for `SqlClientDataWriter.add_shard`: the examples table without its indexes, which the target builds once."""
  con = _private_connection(path)
  try:
    con.execute(_EXAMPLES)
    con.execute(_USERS)
    con.executemany('INSERT INTO examples VALUES (?, ?, ?)', example_rows)
    con.executemany('INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)', user_rows)
    con.commit()
  finally:
    con.close()


def publish(writers: Sequence[SqlClientDataWriter]) -> None:
  """Renames committed temporaries into place (each rename is atomic)."""
  for writer in writers:
    if not writer._committed:  # pylint: disable=protected-access
      raise RuntimeError(f'{writer.path} was not committed')
  for writer in writers:
    os.replace(writer.temp_path, writer.path)
