"""Tests for tff_rec.data.interactions: any interaction log read, cleaned and filtered as documented."""

import csv
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tff_rec.data import client_data, interactions, pipeline, schema
from tff_rec.data.interactions import InteractionsSpec
from tff_rec.data.records import DataError
from tff_rec.models import two_tower


def _write(path, header, rows, delimiter=','):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _filler(*extra):
  """111 more items, each rated by one of 37 filler users (3 each), so that every user has 99 negatives."""
  return [(f'z{k // 3:02d}', f'filler{k}', *extra) for k in range(111)]


def _catalogue_rows(users):
  """Each of `users` rates items i0-i2, plus the filler."""
  return [(u, f'i{k}', 4, 100 + k) for u in users for k in range(3)] + _filler(3, 7)


def _pairs(log):
  data = log.data
  return [(data.users[int(u)].key, data.items[int(i)].key, float(r), int(t))
          for u, i, r, t in zip(data.user_ids, data.item_ids, data.ratings, data.timestamps)]


def test_columns_are_mapped_ids_kept_as_written_and_the_latest_duplicate_wins(tmp_path):
  rows = _catalogue_rows(['alice', 'bob'])
  rows += [('alice', 'i0', 1, 50), ('alice', 'i1', 2, 500)]  # An older and a newer re-rating.
  path = _write(tmp_path / 'log.csv', ['who', 'what', 'stars', 'ts'], rows)
  spec = InteractionsSpec(path, interactions.parse_columns('user=who,item=what,rating=stars,timestamp=ts',
                                                           interactions.ROLES))
  log = interactions.read(spec, seed=0)
  assert log.feedback == interactions.EXPLICIT and log.temporal
  pairs = [p for p in _pairs(log) if p[0] == 'alice']
  assert pairs == [('alice', 'i0', 4.0, 100), ('alice', 'i1', 2.0, 500), ('alice', 'i2', 4.0, 102)]
  assert log.report == {'rows': 119, 'dropped_nonpositive_counts': 0, 'merged_duplicates': 2, 'removed_by_k_core': 0,
                        'interactions': 117, 'users': 39, 'items': 114}
  assert log.data.user_ids.tolist() == sorted(log.data.user_ids.tolist())
  assert sorted(u.key for u in log.data.users.values())[:3] == ['alice', 'bob', 'z00']


def test_k_core_repeats_item_then_user_filtering_until_nothing_changes(tmp_path):
  # 'c' rates i9, which only it rates; with min_item 2 i9 goes, then 'c' has 2 < 3 items and goes, then i8
  # (rated by 'c' and 'd') has one user and goes, and 'd' falls to 2 items and goes too.
  rows = [('a', 'i0', 5, 1), ('a', 'i1', 5, 2), ('a', 'i2', 5, 3), ('b', 'i0', 5, 1), ('b', 'i1', 5, 2),
          ('b', 'i2', 5, 3), ('c', 'i0', 5, 1), ('c', 'i8', 5, 2), ('c', 'i9', 5, 3), ('d', 'i1', 5, 1),
          ('d', 'i2', 5, 2), ('d', 'i8', 5, 3)]
  rows += [(f'{p}{k // 3:02d}', f'filler{k}', 3, k) for k in range(111) for p in 'yz']  # Each filler item twice.
  path = _write(tmp_path / 'log.csv', ['user', 'item', 'rating', 'timestamp'], rows)
  log = interactions.read(InteractionsSpec(path, min_user_interactions=3, min_item_interactions=2), seed=0)
  assert sorted(u.key for u in log.data.users.values())[:3] == ['a', 'b', 'y00']
  assert len(log.data.users) == 2 + 74
  assert log.report['removed_by_k_core'] == 6
  assert 'i8' not in {i.key for i in log.data.items.values()}


def test_implicit_counts_drop_nonpositive_rows_and_label_every_pair_one(tmp_path):
  rows = [(u, f'i{k}', k % 3, 10 * k) for u in ('a', 'b') for k in range(5)]  # Counts 0, 1, 2, 0, 1.
  rows += _filler(1, 0)
  path = _write(tmp_path / 'plays.tsv', ['user', 'item', 'count', 'timestamp'], rows, delimiter='\t')
  log = interactions.read(InteractionsSpec(path), seed=0)
  assert log.feedback == interactions.IMPLICIT
  assert [p for p in _pairs(log) if p[0] == 'a'] == [('a', 'i1', 1.0, 10), ('a', 'i2', 1.0, 20), ('a', 'i4', 1.0, 40)]
  assert log.report['dropped_nonpositive_counts'] == 4


def test_without_a_timestamp_the_order_is_seeded_random(tmp_path):
  rows = [('a', f'i{k}', 3) for k in range(8)] + _filler(3)
  path = _write(tmp_path / 'log.csv', ['user', 'item', 'rating'], rows)
  orders = {seed: [t for u, _, _, t in _pairs(interactions.read(InteractionsSpec(path), seed)) if u == 'a']
            for seed in (0, 0, 1)}
  assert sorted(orders[0]) == list(range(8))  # Ranks within the user.
  assert orders[0] == [t for u, _, _, t in _pairs(interactions.read(InteractionsSpec(path), 0)) if u == 'a']
  assert orders[0] != orders[1]
  assert not interactions.read(InteractionsSpec(path), 0).temporal


def test_parquet_with_integer_ids_and_item_metadata_categories(tmp_path):
  users = [1, 1, 1, 2, 2, 2] + [3 + k // 3 for k in range(111)]
  items = [10, 11, 12, 10, 11, 13] + list(range(100, 211))
  pq.write_table(pa.table({'u': users, 'i': items, 'r': [5.0] * len(users), 't': list(range(len(users)))}),
                 tmp_path / 'log.parquet')
  tags = {10: 'drama|rare', 11: 'drama', 12: 'comedy|drama', 13: ''}
  meta = _write(tmp_path / 'items.csv', ['id', 'name', 'tags', 'yr'],
                [(i, f'Film {i} (1999)', tags.get(i, f'common{i % 17}'), '' if i == 10 else 2001)
                 for i in sorted(set(items))])
  spec = InteractionsSpec(str(tmp_path / 'log.parquet'), {'user': 'u', 'item': 'i', 'rating': 'r', 'timestamp': 't'},
                          item_metadata=meta, item_columns={'item': 'id', 'title': 'name', 'categories': 'tags',
                                                            'year': 'yr'})
  log = interactions.read(spec, seed=0)
  # 20 categories for 18 slots: the most frequent (common0-16: 6-7 items each; drama: 3) keep one; comedy and rare
  # (one item each) share 'other'.
  assert log.categories[0] == 'other' and len(log.categories) == schema.NUM_GENRES
  assert 'drama' in log.categories and 'rare' not in log.categories and 'comedy' not in log.categories
  by_key = {i.key: i for i in log.data.items.values()}
  assert by_key['10'].genres == (0, log.categories.index('drama'))  # 'rare' -> other.
  assert by_key['10'].year == 1999 and by_key['11'].year == 2001  # No year: the title's.
  assert by_key['13'].genres == () and by_key['13'].title == 'Film 13 (1999)'


@pytest.mark.parametrize('header, rows, columns, problem', [
    (['user', 'item'], [('a', 'i1', 'x')], '', r'log.csv:2: expected 2 fields \(user, item\), got 3'),
    (['user', 'item', 'rating'], [('a', 'i1', '4'), ('a', 'i2', 'good')], '',
     r"log.csv:3: rating 'good' is not a finite number"),
    (['user', 'item', 'rating'], [('a', 'i1', '4'), ('a', 'i2', 'nan')], '', 'log.csv:3: rating is missing or not'),
    (['user', 'item'], [('a', 'i1'), ('', 'i2')], '', 'log.csv:3: no user id'),
    (['uid', 'item'], [('a', 'i1')], '', r'no user column \(columns: uid, item\); map one with --columns=user=NAME'),
    (['user', 'item'], [('a', 'i1')], 'rating=stars', r"--columns maps rating to column 'stars', which the file does "
     'not have'),
    (['user', 'item', 'ts'], [('a', 'i1', 'yesterday')], 'timestamp=ts',
     "log.csv:2: ts 'yesterday' is not integer seconds or an ISO 8601 date"),
])
def test_bad_input_names_the_file_line_and_problem(tmp_path, header, rows, columns, problem):
  path = _write(tmp_path / 'log.csv', header, rows)
  with pytest.raises(DataError, match=problem):
    interactions.read(InteractionsSpec(path, interactions.parse_columns(columns, interactions.ROLES)), seed=0)


def test_bad_flags_and_small_catalogues_are_clear_errors(tmp_path):
  with pytest.raises(DataError, match="--columns: unknown role 'stars'"):
    interactions.parse_columns('stars=rating', interactions.ROLES)
  with pytest.raises(DataError, match="--columns: 'user' is not role=column"):
    interactions.parse_columns('user', interactions.ROLES)
  path = _write(tmp_path / 'log.csv', ['user', 'item'], [('a', f'i{k}') for k in range(50)])
  with pytest.raises(DataError, match="user 'a' has 50 of the 50 items; the ranking protocol needs 99 unrated"):
    interactions.read(InteractionsSpec(path), seed=0)
  with pytest.raises(DataError, match='no interactions left after --min_user_interactions=60'):
    interactions.read(InteractionsSpec(path, min_user_interactions=60), seed=0)


def test_prepared_implicit_log_has_no_rating_splits_and_its_own_categories(tmp_path):
  rows = [(f'u{u}', f'i{(u * 5 + k) % 150}', 1, 1000 * u + k) for u in range(30) for k in range(6)]
  path = _write(tmp_path / 'plays.csv', ['user', 'item', 'count', 'timestamp'], rows)
  meta = _write(tmp_path / 'items.csv', ['item', 'categories'], [(f'i{i}', ('jazz', 'rock|pop')[i % 2])
                                                                 for i in range(150)])
  out = tmp_path / 'plays'
  result = pipeline.prepare_interactions(InteractionsSpec(path, item_metadata=meta), str(out),
                                         pipeline.PrepareOptions(seed=0), num_platforms=2, progress=False)
  assert result['feedback'] == 'implicit' and result['ratings'] == 180
  assert not [s for s in result['splits'] if 'rating' in s]
  db = str(out / schema.CLIENTS_DB)
  metadata = client_data.read_metadata(db)
  assert metadata['genres'] == ['other', 'jazz', 'pop', 'rock'] and metadata['feedback'] == 'implicit'
  con = sqlite3.connect(db)
  assert sorted(c for (c,) in con.execute('SELECT DISTINCT client_id FROM examples'))[:2] == ['u0', 'u1']
  con.close()
  vocabulary = ['i0', 'i1']
  features = two_tower.item_features(db, vocabulary)
  assert features.genres[1, :4].tolist() == [0, 1, 0, 0] and features.genres[2, :4].tolist() == [0, 0, 1, 1]
