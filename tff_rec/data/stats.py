"""Statistics of a prepared SQLite ClientData file, read back from the file."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from tff_rec.data import schema


def _counts(con: sqlite3.Connection, split: str) -> np.ndarray:
  rows = con.execute('SELECT num_examples FROM client_metadata WHERE split_name = ?', (split,))
  return np.fromiter((r[0] for r in rows), np.int64)


def compute(db_path: str) -> dict[str, Any]:
  """Users, items, ratings and per-split client/example counts of `db_path`."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    splits = {}
    for split in schema.ALL_SPLITS:
      counts = _counts(con, split)
      if len(counts):
        splits[split] = {
            'clients': int(len(counts)),
            'examples': int(counts.sum()),
            'examples_per_client': {'min': int(counts.min()), 'median': float(np.median(counts)),
                                    'max': int(counts.max())},
        }
    ranking = [s for s in splits if f'{schema.RANKING}_' in s]
    platforms = {p: {'users': n} for p, n in con.execute(
        'SELECT platform, COUNT(*) FROM users WHERE platform IS NOT NULL GROUP BY platform ORDER BY platform')}
    return {
        'users': con.execute('SELECT COUNT(*) FROM users').fetchone()[0],
        'heldout_users': con.execute('SELECT COUNT(*) FROM users WHERE heldout = 1').fetchone()[0],
        'items': con.execute('SELECT COUNT(*) FROM items').fetchone()[0],
        # Every rating is in exactly one ranking split.
        'ratings': sum(splits[s]['examples'] for s in ranking),
        'splits': splits,
        'platforms': platforms,
    }
  finally:
    con.close()


def format_table(stats: dict[str, Any]) -> str:
  """A human-readable report of `compute`'s result."""
  lines = [
      f"users {stats['users']:,} (held out {stats['heldout_users']:,}), items {stats['items']:,}, "
      f"ratings {stats['ratings']:,}",
      f"{'split':<26}{'clients':>10}{'examples':>12}   examples/client min / median / max",
  ]
  for split, s in stats['splits'].items():
    e = s['examples_per_client']
    lines.append(f"{split:<26}{s['clients']:>10,}{s['examples']:>12,}   "
                 f"{e['min']:,} / {e['median']:g} / {e['max']:,}")
  if stats['platforms']:
    lines.append('cross-silo platforms (users): ' + ', '.join(
        f"{p}={v['users']:,}" for p, v in stats['platforms'].items()))
  return '\n'.join(lines)


def to_json(stats: dict[str, Any]) -> str:
  return json.dumps(stats, indent=2, sort_keys=True) + '\n'
