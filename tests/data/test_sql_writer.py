"""The atomic SQLite ClientData writer."""

import os
import sqlite3
import subprocess
import sys

import pytest

from tff_rec.data import sql_writer


def _shard(path, examples):
  """A shard file of `examples` (split, client id, blob) and their users."""
  users = sorted({client for _, client, _ in examples})
  sql_writer.write_shard(str(path), examples, [(u, 0, '', 'x', None, 0) for u in users])
  return str(path)


def test_nothing_appears_until_published(tmp_path):
  target = tmp_path / 'out' / 'clients.sqlite'
  writer = sql_writer.SqlClientDataWriter(str(target))
  writer.add_shard(_shard(tmp_path / 'a.sqlite', [('ranking_train', '7', b'a'), ('ranking_train', '7', b'b')]))
  writer.add_shard(_shard(tmp_path / 'b.sqlite', [('ranking_train', '8', b'c')]))
  writer.commit()
  assert not target.exists()
  sql_writer.publish([writer])
  con = sqlite3.connect(target)
  assert sorted(con.execute('SELECT client_id, split_name, num_examples FROM client_metadata')) == [
      ('7', 'ranking_train', 2), ('8', 'ranking_train', 1)]
  assert os.listdir(tmp_path / 'out') == ['clients.sqlite']


def test_failure_removes_the_temporary(tmp_path):
  target = tmp_path / 'out' / 'clients.sqlite'
  with pytest.raises(RuntimeError):
    with sql_writer.SqlClientDataWriter(str(target)) as writer:
      writer.add_shard(_shard(tmp_path / 'c.sqlite', [('ranking_train', '7', b'a')]))
      raise RuntimeError('boom')
  assert os.listdir(tmp_path / 'out') == []


def test_publish_refuses_uncommitted(tmp_path):
  writer = sql_writer.SqlClientDataWriter(str(tmp_path / 'x.sqlite'))
  with pytest.raises(RuntimeError, match='was not committed'):
    sql_writer.publish([writer])
  writer.abort()


def test_temporaries_of_dead_writers_are_removed(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  stale = tmp_path / f'.clients.sqlite.tmp-{dead.stdout.strip()}'
  live = tmp_path / f'.clients.sqlite.tmp-{os.getppid()}'  # A live process owns it.
  stale.write_bytes(b'half')
  live.write_bytes(b'busy')
  assert sql_writer.remove_stale_temporaries(str(tmp_path / 'clients.sqlite')) == [str(stale)]
  assert live.exists() and not stale.exists()


def test_shards_are_appended_in_order_by_user_or_by_platform(tmp_path):
  users = [('7', 30, 'F', 'artist', 'platform_1', 0), ('8', 40, 'M', 'doctor', 'platform_0', 1)]
  sql_writer.write_shard(str(tmp_path / 'a.sqlite'), [('ranking_train', '8', b'x'), ('ranking_test', '7', b'y')],
                         users)
  sql_writer.write_shard(str(tmp_path / 'b.sqlite'), [('ranking_train', '9', b'z')],
                         [('9', 0, '', 'group_00', 'platform_1', 0)])
  by_user = sql_writer.SqlClientDataWriter(str(tmp_path / 'clients.sqlite'))
  by_platform = sql_writer.SqlClientDataWriter(str(tmp_path / 'platforms.sqlite'))
  for shard in ('a.sqlite', 'b.sqlite'):
    by_user.add_shard(str(tmp_path / shard))
    by_platform.add_shard(str(tmp_path / shard), by_platform=True)
  for writer in (by_user, by_platform):
    writer.commit()
  sql_writer.publish([by_user, by_platform])
  con = sqlite3.connect(tmp_path / 'clients.sqlite')
  assert con.execute('SELECT split_name, client_id, serialized_example_proto FROM examples ORDER BY rowid').fetchall() == [
      ('ranking_train', '8', b'x'), ('ranking_test', '7', b'y'), ('ranking_train', '9', b'z')]
  assert [u[0] for u in con.execute('SELECT * FROM users ORDER BY rowid')] == ['7', '8', '9']
  con = sqlite3.connect(tmp_path / 'platforms.sqlite')
  assert con.execute('SELECT client_id, serialized_example_proto FROM examples ORDER BY rowid').fetchall() == [
      ('platform_0', b'x'), ('platform_1', b'y'), ('platform_1', b'z')]
  assert sorted(con.execute('SELECT client_id, split_name, num_examples FROM client_metadata')) == [
      ('platform_0', 'ranking_train', 1), ('platform_1', 'ranking_test', 1), ('platform_1', 'ranking_train', 1)]


def test_stale_temporary_directories_are_removed(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  stale = tmp_path / f'.shards.tmp-{dead.stdout.strip()}'
  stale.mkdir()
  (stale / '0.sqlite').write_bytes(b'half')
  assert sql_writer.remove_stale_temporaries(str(tmp_path / 'shards')) == [str(stale)]
  assert os.listdir(tmp_path) == []
