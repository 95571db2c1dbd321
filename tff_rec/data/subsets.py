"""A population of N users drawn from a prepared dataset: the same splits and examples, fewer users.

What `experiments.population_sweep` trains on when given a real dataset
instead of synthetic populations: each user keeps every example it has (its
splits are those of the full preparation), the catalogue stays whole, and the
users are the first N of a permutation seeded by `seed`, so a larger
population holds every smaller one. Only the per-user view (`clients.sqlite`)
is written; it is copied inside SQLite (no parsing), and renamed into place
once complete.
"""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np

from tff_rec import atomic
from tff_rec.data import client_data, schema, stats
from tff_rec.data.records import DataError

_SUBSET_PURPOSE = 7  # Keeps the draw apart from the preparation's own streams.
SUBSET_KEY = 'subset'  # tff_rec_metadata: {'source', 'users', 'seed'}.


def user_ids(db_path: str) -> list[str]:
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    return [r[0] for r in con.execute('SELECT user_id FROM users ORDER BY user_id')]
  finally:
    con.close()


def chosen_users(all_users: list[str], num_users: int, seed: int) -> list[str]:
  """The first `num_users` of a permutation of `all_users` seeded by `seed` (nested across sizes)."""
  if not 1 <= num_users <= len(all_users):
    raise DataError(f'a population of {num_users} users cannot be drawn from a dataset of {len(all_users)}')
  order = np.random.default_rng([seed, _SUBSET_PURPOSE]).permutation(len(all_users))
  return [all_users[i] for i in order[:num_users]]


def write_subset(source_dir: str, out_dir: str, num_users: int, seed: int) -> dict:
  """Writes `out_dir/clients.sqlite` (+ stats.json) holding `num_users` users of `source_dir`; returns its stats.

  Reuses `out_dir` if it already holds that subset (same source, size and seed).

  Raises:
    DataError: If the source is not prepared, is too small, or `out_dir` holds another subset.
  """
  source = os.path.join(source_dir, schema.CLIENTS_DB)
  if not os.path.exists(source):
    raise DataError(f'{source} does not exist: --population_source must be a prepared dataset directory')
  wanted = {'source': os.path.abspath(source_dir), 'users': num_users, 'seed': seed}
  target = os.path.join(out_dir, schema.CLIENTS_DB)
  if os.path.exists(target):
    found = client_data.read_metadata(target).get(SUBSET_KEY)
    if found != wanted:
      raise DataError(f'{out_dir} holds another population ({found}); move it away or choose another directory')
    return stats.compute(target)
  chosen = chosen_users(user_ids(source), num_users, seed)
  os.makedirs(out_dir, exist_ok=True)
  with atomic.replacing(target) as temporary:
    con = sqlite3.connect(temporary)
    try:
      con.execute('ATTACH DATABASE ? AS source', (source,))
      tables = con.execute("SELECT name, sql FROM source.sqlite_master WHERE type = 'table'").fetchall()
      indices = con.execute("SELECT sql FROM source.sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
      indices = [r[0] for r in indices]
      for _, sql in tables:
        con.execute(sql)
      con.execute('CREATE TEMP TABLE chosen (id TEXT PRIMARY KEY)')
      con.executemany('INSERT INTO chosen VALUES (?)', ((u,) for u in chosen))
      for name, _ in tables:
        column = {'examples': 'client_id', 'client_metadata': 'client_id', 'users': 'user_id'}.get(name)
        where = f' WHERE {column} IN (SELECT id FROM chosen)' if column else ''
        con.execute(f'INSERT INTO main.{name} SELECT * FROM source.{name}{where} ORDER BY rowid')
      for sql in indices:
        con.execute(sql)
      con.execute('INSERT OR REPLACE INTO tff_rec_metadata VALUES (?, ?)', (SUBSET_KEY, json.dumps(wanted)))
      con.commit()
    finally:
      con.close()
  result = stats.compute(target)
  with atomic.replacing(os.path.join(out_dir, schema.STATS_JSON)) as path:
    with open(path, 'w') as f:
      f.write(stats.to_json(result))
  return result
