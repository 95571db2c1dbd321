"""Populations drawn from a prepared dataset: the chosen users with every example they had, nested by size."""

import os
import sqlite3

import pytest

from tff_rec.data import client_data, schema, stats, subsets
from tff_rec.data.records import DataError


def _rows(db, sql):
  con = sqlite3.connect(db)
  try:
    return con.execute(sql).fetchall()
  finally:
    con.close()


def test_a_subset_keeps_its_users_examples_in_order_and_the_whole_catalogue(tiny_dataset, tmp_path):
  source = os.path.join(tiny_dataset, schema.CLIENTS_DB)
  result = subsets.write_subset(tiny_dataset, str(tmp_path / 'u15'), 15, seed=0)
  target = str(tmp_path / 'u15' / schema.CLIENTS_DB)
  users = [u for (u,) in _rows(target, 'SELECT user_id FROM users')]
  assert len(users) == 15 and result['users'] == 15
  assert users == [u for (u,) in _rows(source, 'SELECT user_id FROM users') if u in set(users)]
  query = ('SELECT split_name, client_id, serialized_example_proto FROM examples WHERE client_id IN ({}) '
           'ORDER BY rowid').format(','.join('?' * len(users)))
  con = sqlite3.connect(source)
  expected = con.execute(query, users).fetchall()
  con.close()
  assert _rows(target, 'SELECT split_name, client_id, serialized_example_proto FROM examples ORDER BY rowid') == \
      expected
  assert _rows(target, 'SELECT COUNT(*) FROM items') == _rows(source, 'SELECT COUNT(*) FROM items')
  assert client_data.read_metadata(target)['subset'] == {'source': os.path.abspath(tiny_dataset), 'users': 15,
                                                         'seed': 0}
  assert stats.compute(target) == result and os.path.exists(tmp_path / 'u15' / schema.STATS_JSON)
  # TFF reads it as ClientData, with only the chosen users.
  training = {u for u, heldout in _rows(target, 'SELECT user_id, heldout FROM users') if not heldout}
  assert training and set(client_data.load(target, 'ranking_train').client_ids) == training
  # Nested: the 8-user population is within the 15-user one; the same call again reuses the directory.
  subsets.write_subset(tiny_dataset, str(tmp_path / 'u8'), 8, seed=0)
  smaller = {u for (u,) in _rows(str(tmp_path / 'u8' / schema.CLIENTS_DB), 'SELECT user_id FROM users')}
  assert smaller < set(users)
  assert subsets.write_subset(tiny_dataset, str(tmp_path / 'u15'), 15, seed=0) == result


def test_bad_subsets_are_named(tiny_dataset, tmp_path):
  with pytest.raises(DataError, match='a population of 41 users cannot be drawn from a dataset of 40'):
    subsets.write_subset(tiny_dataset, str(tmp_path / 'big'), 41, seed=0)
  with pytest.raises(DataError, match='must be a prepared dataset directory'):
    subsets.write_subset(str(tmp_path / 'nothing'), str(tmp_path / 'x'), 5, seed=0)
  subsets.write_subset(tiny_dataset, str(tmp_path / 'u5'), 5, seed=0)
  with pytest.raises(DataError, match='holds another population'):
    subsets.write_subset(tiny_dataset, str(tmp_path / 'u5'), 5, seed=1)
