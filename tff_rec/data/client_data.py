"""Loading prepared data as `tff.simulation.datasets.ClientData`."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).
from tff_rec.data import schema


def load(db_path: str, split: str) -> tff.simulation.datasets.ClientData:
  """Loads one split with TFF's own SQLite ClientData loader.

  Args:
    db_path: A `clients.sqlite` or `platforms.sqlite` written by prepare_data.
    split: A name from `schema.ALL_SPLITS`.

  Raises:
    FileNotFoundError: If `db_path` does not exist (names the prepare command).
    ValueError: If `split` is unknown.
  """
  if not os.path.exists(db_path):
    raise FileNotFoundError(
        f'{db_path} does not exist; create it with `python -m experiments.prepare_data`')
  return tff.simulation.datasets.load_and_parse_sql_client_data(
      db_path, schema.element_spec(split), split_name=split)


def read_metadata(db_path: str) -> dict[str, Any]:
  """The `tff_rec_metadata` table as a dict of decoded JSON values."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    return {k: json.loads(v) for k, v in con.execute('SELECT key, value FROM tff_rec_metadata')}
  finally:
    con.close()
