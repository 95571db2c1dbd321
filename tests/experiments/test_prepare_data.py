"""The prepare_data binary: clear errors for bad input, and a full small run."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(tmp_path, *flags):
  result = subprocess.run([sys.executable, '-m', 'experiments.prepare_data', f'--data_dir={tmp_path}', '--noprogress',
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize('flags, message', [
    (['--dataset=movielens_30m'], 'flag --dataset=movielens_30m: value should be one of '
     '<movielens_100k|movielens_1m|movielens_10m|movielens_20m|movielens_25m|interactions|synthetic>'),
    (['--dataset=interactions'], '--dataset=interactions needs --interactions_file'),
    (['--dataset=interactions', '--interactions_file=nowhere.csv'], 'prepare_data: error: nowhere.csv: no such file '
     '(--interactions_file)'),
    (['--dataset=interactions', '--interactions_file=x.csv', '--columns=stars=r'], "prepare_data: error: --columns: "
     "unknown role 'stars' (roles: user, item, rating, count, timestamp)"),
    (['--dataset=movielens_1m', '--grouplens_timeout=0'], 'prepare_data: error: movielens_1m: no --raw_archive and '
     'GroupLens not tried (--grouplens_timeout=0); download https://files.grouplens.org/datasets/movielens/ml-1m.zip '
     'and pass --raw_archive=PATH'),
    ([], 'Flag --dataset must have a value other than None'),
    (['--dataset=synthetic', '--num_users=10'], '--dataset=synthetic needs --num_users and --num_items'),
    (['--dataset=synthetic', '--num_users=10', '--num_items=50'], '--num_items must be >= 105'),
    (['--dataset=synthetic', '--num_users=0', '--num_items=500'], '--num_users must be >= 1'),
    (['--dataset=synthetic', '--num_users=10', '--num_items=500', '--ratings_per_user=450'],
     '--ratings_per_user must be in [5, 400]'),
    (['--dataset=synthetic', '--num_users=10', '--num_items=500', '--num_platforms=30'],
     '--num_platforms: num_platforms=30 exceeds the 21 occupations'),
    (['--dataset=synthetic', '--num_users=10', '--num_items=500', '--num_platforms=-1'],
     'flag --num_platforms=-1: -1 is not a non-negative integer'),
    (['--dataset=synthetic', '--num_users=10', '--num_items=500', '--processes=-1'],
     'flag --processes=-1: -1 is not a non-negative integer'),
])
def test_bad_input_is_a_clear_error(tmp_path, flags, message):
  code, _, stderr = _run(tmp_path, *flags)
  assert code != 0
  assert message in stderr
  assert 'Traceback' not in stderr
  assert not [f for f in os.listdir(tmp_path) if f != 'raw']  # Nothing written.


def test_small_synthetic_run(tmp_path):
  code, stdout, stderr = _run(tmp_path, '--dataset=synthetic', '--num_users=40', '--num_items=200', '--seed=3')
  assert code == 0, stderr
  out_dir = tmp_path / 'synthetic_u40_i200_s3'
  stats = json.loads((out_dir / 'stats.json').read_text())
  assert stats['users'] == 40 and stats['heldout_users'] == 4 and stats['items'] == 200
  assert 'ranking_train' in stdout and 'peak memory' in stdout
  assert f'{min(4, os.cpu_count())} worker processes' in stdout  # --processes: one per CPU (at most 4) by default.
  assert 'TFF load_and_parse_sql_client_data: 36 clients in ranking_train' in stdout
  assert sorted(os.listdir(out_dir)) == ['clients.sqlite', 'platforms.sqlite', 'stats.json']


def test_corrupt_archive_is_a_clear_error(tmp_path, movielens_archive):
  corrupt = tmp_path / 'ml-100k.zip'
  corrupt.write_bytes(b'not a zip')
  code, _, stderr = _run(tmp_path, '--dataset=movielens_100k', f'--raw_archive={corrupt}')
  assert code == 2
  assert f'prepare_data: error: {corrupt}: not a readable zip archive' in stderr
  assert 'Traceback' not in stderr


def test_an_archive_that_is_not_movielens_1m_is_named(tmp_path):
  from tests.data.test_movielens import ml1m_zip  # pylint: disable=g-import-not-at-top
  archive = ml1m_zip(tmp_path / 'ml-1m.zip')
  code, _, stderr = _run(tmp_path, '--dataset=movielens_1m', f'--raw_archive={archive}')
  assert code == 2 and 'Traceback' not in stderr
  assert f'prepare_data: error: {archive}: md5 ' in stderr
  assert "is not ml-1m.zip's (c4d9eecfca2ab87c1945afe126590906" in stderr
  assert not (tmp_path / 'movielens_1m').exists()
