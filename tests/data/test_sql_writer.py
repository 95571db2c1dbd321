"""The atomic SQLite ClientData writer."""

import os
import sqlite3
import subprocess
import sys

import pytest

from tff_rec.data import sql_writer


def test_nothing_appears_until_published(tmp_path):
  target = tmp_path / 'clients.sqlite'
  writer = sql_writer.SqlClientDataWriter(str(target))
  writer.add_example_rows([('ranking_train', '7', b'a'), ('ranking_train', '7', b'b')])
  writer.add_example_rows([('ranking_train', '8', b'c')])
  writer.commit()
  assert not target.exists()
  sql_writer.publish([writer])
  con = sqlite3.connect(target)
  assert sorted(con.execute('SELECT client_id, split_name, num_examples FROM client_metadata')) == [
      ('7', 'ranking_train', 2), ('8', 'ranking_train', 1)]
  assert os.listdir(tmp_path) == ['clients.sqlite']


def test_failure_removes_the_temporary(tmp_path):
  target = tmp_path / 'clients.sqlite'
  with pytest.raises(RuntimeError):
    with sql_writer.SqlClientDataWriter(str(target)) as writer:
      writer.add_example_rows([('ranking_train', '7', b'a')])
      raise RuntimeError('boom')
  assert os.listdir(tmp_path) == []


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
