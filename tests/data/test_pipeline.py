"""End-to-end preparation: invariants of the written databases, read back with TFF."""

import collections
import hashlib
import json
import os
import sqlite3

import pytest
from tensorflow.core.example import example_pb2

from tff_rec.data import client_data, movielens, pipeline, schema
from tff_rec.data.pipeline import PrepareOptions
from tff_rec.data.synthetic import SyntheticConfig, SyntheticSource


def _prepare_synthetic(out_dir, seed=0):
  return pipeline.prepare_synthetic(SyntheticConfig(num_users=60, num_items=150, seed=seed), str(out_dir),
                                    PrepareOptions(seed=seed), num_platforms=3, progress=False)


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('synthetic')
  _prepare_synthetic(out)
  return str(out)


@pytest.fixture(scope='module')
def movielens_dir(tmp_path_factory, movielens_archive):
  out = tmp_path_factory.mktemp('movielens')
  pipeline.prepare_movielens(movielens_archive, str(out), PrepareOptions(seed=0), num_platforms=5, progress=False)
  return str(out)


def _rows(db, split=None):
  """(client_id, split, parsed Example) for every stored example."""
  con = sqlite3.connect(db)
  query = 'SELECT client_id, split_name, serialized_example_proto FROM examples'
  rows = con.execute(query + (' WHERE split_name = ?' if split else ''), (split,) if split else ())
  for client, split_name, blob in rows:
    yield client, split_name, example_pb2.Example.FromString(blob)


def _feature(example, name):
  f = example.features.feature[name]
  return list(f.bytes_list.value or f.float_list.value or f.int64_list.value)


def _check_invariants(out_dir, expected_users, expected_ratings):
  db = os.path.join(out_dir, schema.CLIENTS_DB)
  # TFF's loader sees one client per user over all splits.
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  all_clients = tff.simulation.datasets.load_and_parse_sql_client_data(db, schema.element_spec())
  assert len(all_clients.client_ids) == expected_users

  rated = collections.defaultdict(set)
  by_user = collections.defaultdict(list)
  ranking_count = 0
  for client, split, ex in _rows(db):
    if schema.RANKING in split:
      ranking_count += 1
      rated[client].add(_feature(ex, 'item_id')[0])
      by_user[client].append((_feature(ex, 'timestamp')[0], int(_feature(ex, 'item_id')[0]), split))
  assert ranking_count == expected_ratings

  # The test item is each user's latest rating, ties to the largest item id.
  for client, ratings in by_user.items():
    assert max(ratings)[2].endswith('_test'), client

  # Every val/test example has 99 distinct negatives that user never rated; the first clients of each split read
  # through TFF's loader give the same (a tf.data pipeline per client costs ~40 ms: all of them took a minute).
  for split in (s for s in schema.ALL_SPLITS if schema.has_negatives(s)):
    stored = collections.defaultdict(list)
    for client, _, ex in _rows(db, split):
      negatives = set(_feature(ex, 'negative_item_ids'))
      assert len(negatives) == schema.NUM_NEGATIVES
      assert not negatives & rated[client]
      stored[client].append(sorted(negatives))
    data = client_data.load(db, split)
    assert sorted(data.client_ids) == sorted(stored)
    for client in sorted(stored)[:20]:
      assert [sorted(e['negative_item_ids'].numpy().tolist()) for e in data.create_tf_dataset_for_client(client)] == (
          stored[client])

  # Held-out users: in no training split; exactly the users table's held-out set.
  con = sqlite3.connect(db)
  heldout = {r[0] for r in con.execute('SELECT user_id FROM users WHERE heldout = 1')}
  train_clients = {r[0] for r in con.execute("SELECT DISTINCT client_id FROM client_metadata WHERE split_name LIKE '%_train'")}
  assert heldout and not heldout & train_clients
  assert heldout == {r[0] for r in con.execute("SELECT DISTINCT client_id FROM client_metadata WHERE split_name LIKE 'heldout_%'")}
  return db


def _digest_per_split(db):
  con = sqlite3.connect(db)
  digests = {}
  for split in schema.ALL_SPLITS:
    blobs = sorted(r[0] for r in con.execute('SELECT serialized_example_proto FROM examples WHERE split_name = ?', (split,)))
    digests[split] = hashlib.sha256(b''.join(blobs)).hexdigest()
  return digests


def test_synthetic_invariants(synthetic_dir):
  con = sqlite3.connect(os.path.join(synthetic_dir, schema.CLIENTS_DB))
  (ratings,) = con.execute("SELECT SUM(num_examples) FROM client_metadata WHERE split_name LIKE '%ranking_%'").fetchone()
  _check_invariants(synthetic_dir, expected_users=60, expected_ratings=ratings)


def test_platforms_hold_the_same_examples(synthetic_dir):
  clients = os.path.join(synthetic_dir, schema.CLIENTS_DB)
  platforms = os.path.join(synthetic_dir, schema.PLATFORMS_DB)
  assert _digest_per_split(clients) == _digest_per_split(platforms)
  data = client_data.load(platforms, 'ranking_train')
  assert sorted(data.client_ids) == ['platform_0', 'platform_1', 'platform_2']
  assert client_data.read_metadata(platforms)['view'] == 'cross_silo'


def test_same_seed_same_data_other_seed_other_data(synthetic_dir, tmp_path):
  _prepare_synthetic(tmp_path / 'again')
  _prepare_synthetic(tmp_path / 'other', seed=1)
  first = _digest_per_split(os.path.join(synthetic_dir, schema.CLIENTS_DB))
  assert _digest_per_split(str(tmp_path / 'again' / schema.CLIENTS_DB)) == first
  assert _digest_per_split(str(tmp_path / 'other' / schema.CLIENTS_DB)) != first


@pytest.mark.parametrize('workers', [0, 2])
def test_interrupted_run_keeps_the_previous_database(tmp_path, workers, monkeypatch):
  monkeypatch.setattr(pipeline, '_SHARD_RATINGS', 200)  # Shards written (and in flight) before the interrupt.
  _prepare_synthetic(tmp_path)
  db = tmp_path / schema.CLIENTS_DB
  before = hashlib.sha256(db.read_bytes()).hexdigest()
  source = SyntheticSource(SyntheticConfig(num_users=60, num_items=150, seed=5))

  def dies_midway():
    for user in source.users():
      if user.user.user_id == 30:
        raise KeyboardInterrupt
      yield user

  with pytest.raises(KeyboardInterrupt):
    pipeline.prepare(dies_midway(), source.user_ids, source.items, str(tmp_path), PrepareOptions(seed=5),
                     {'dataset': 'synthetic'}, progress=False, workers=workers)
  assert hashlib.sha256(db.read_bytes()).hexdigest() == before
  assert sorted(os.listdir(tmp_path)) == [schema.CLIENTS_DB, schema.PLATFORMS_DB, schema.STATS_JSON]


@pytest.mark.slow
def test_movielens_100k_invariants(movielens_dir):
  db = _check_invariants(movielens_dir, expected_users=943, expected_ratings=100_000)
  train = client_data.load(db, 'ranking_train')
  assert len(train.client_ids) == 943 - 94
  con = sqlite3.connect(db)
  (heldout,) = con.execute('SELECT COUNT(*) FROM users WHERE heldout = 1').fetchone()
  assert heldout == 94
  meta = client_data.read_metadata(db)
  assert meta['ratings_sha256'] == movielens.RATINGS_SHA256 and meta['num_negatives'] == 99


def test_movielens_1m_is_prepared_like_100k(tmp_path):
  """The same pipeline from GroupLens' ml-1m.zip layout (a small archive, unverified): splits, views, stats."""
  from tests.data.test_movielens import ml1m_zip  # pylint: disable=g-import-not-at-top
  archive = ml1m_zip(tmp_path / 'ml-1m.zip', users=20, movies=120)  # LOO-99 needs 99 unrated items.
  out = tmp_path / 'movielens_1m'
  result = pipeline.prepare_movielens(archive, str(out), PrepareOptions(seed=0), num_platforms=1, progress=False,
                                      dataset=movielens.ML1M, verify=False)
  stats = json.loads((out / 'stats.json').read_text())
  assert stats['users'] == 20 and stats['ratings'] == 120
  con = sqlite3.connect(str(out / 'clients.sqlite'))
  metadata = dict(con.execute('SELECT * FROM tff_rec_metadata'))
  con.close()
  assert json.loads(metadata['dataset']) == 'movielens_1m' and 'archive_md5' not in metadata  # Unverified.
  assert result['users'] == 20
  assert sorted(os.listdir(out)) == ['clients.sqlite', 'platforms.sqlite', 'stats.json']
  train = client_data.load(str(out / 'clients.sqlite'), 'ranking_train')
  assert len(train.client_ids) == stats['users'] - stats['heldout_users']


def test_a_release_without_demographics_gets_a_cross_silo_view_by_pseudo_group(tmp_path):
  from tests.data.test_movielens import release_zip  # pylint: disable=g-import-not-at-top
  archive = release_zip(tmp_path / 'ml-20m.zip', movielens.ML20M, users=30)
  out = tmp_path / 'movielens_20m'
  pipeline.prepare_movielens(archive, str(out), PrepareOptions(seed=0), num_platforms=3, progress=False,
                             dataset=movielens.ML20M, verify=False)
  stats = json.loads((out / 'stats.json').read_text())
  assert stats['users'] == 30 and stats['ratings'] == 180 and len(stats['platforms']) == 3


def _all_rows(db):
  """Every row of every table, in storage order."""
  con = sqlite3.connect(db)
  tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
  return {t: con.execute(f'SELECT * FROM {t} ORDER BY rowid').fetchall() for t in tables}


def test_worker_processes_write_the_same_databases(synthetic_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, '_SHARD_RATINGS', 200)  # Several shards, in flight at once.
  pipeline.prepare_synthetic(SyntheticConfig(num_users=60, num_items=150, seed=0), str(tmp_path),
                             PrepareOptions(seed=0), num_platforms=3, progress=False, workers=2)
  for db in (schema.CLIENTS_DB, schema.PLATFORMS_DB):
    expected = _all_rows(os.path.join(synthetic_dir, db))
    got = _all_rows(str(tmp_path / db))
    assert got.keys() == expected.keys()
    for table in expected:
      assert got[table] == expected[table], (db, table)
  assert sorted(os.listdir(tmp_path)) == [schema.CLIENTS_DB, schema.PLATFORMS_DB, schema.STATS_JSON]


def test_a_failing_worker_stops_the_prepare_and_leaves_nothing(tmp_path, monkeypatch):
  _prepare_synthetic(tmp_path)
  before = hashlib.sha256((tmp_path / schema.CLIENTS_DB).read_bytes()).hexdigest()
  monkeypatch.setattr(pipeline, '_SHARD_RATINGS', 200)
  source = SyntheticSource(SyntheticConfig(num_users=60, num_items=150, seed=5))
  items = dict(source.items)
  del items[min(items)]  # A rated item missing from the catalogue: the encoder fails in a worker.
  with pytest.raises(KeyError):
    pipeline.prepare(source.users(), source.user_ids, items, str(tmp_path), PrepareOptions(seed=5),
                     {'dataset': 'synthetic'}, progress=False, workers=2)
  assert hashlib.sha256((tmp_path / schema.CLIENTS_DB).read_bytes()).hexdigest() == before
  assert sorted(os.listdir(tmp_path)) == [schema.CLIENTS_DB, schema.PLATFORMS_DB, schema.STATS_JSON]
