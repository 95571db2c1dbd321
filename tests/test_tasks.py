"""The task: data and model checked against each other when built."""

import sqlite3

import pytest

from tff_rec import tasks
from tff_rec.data import schema


def test_mismatched_preprocessing_fails_at_construction(tiny_dataset):
  class WrongTask(tasks.RecommendationTask):
    def client_dataset(self, dataset, *, seed, shuffle=True):
      return dataset.map(lambda ex: ex['item_id']).batch(2)  # Strings, not (indices, labels).

  with pytest.raises(TypeError, match='does not match the model input spec'):
    WrongTask(tasks.DataConfig(data_dir=tiny_dataset))


def test_missing_data_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='python -m experiments.prepare_data'):
    tasks.RecommendationTask(tasks.DataConfig(data_dir=str(tmp_path)))


def test_eval_data_of_heldout_users_is_only_heldout_users(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8))
  ids, data = task.eval_data(schema.TEST, heldout=True)
  con = sqlite3.connect(f'{tiny_dataset}/{schema.CLIENTS_DB}')
  assert set(ids) == {r[0] for r in con.execute('SELECT user_id FROM users WHERE heldout = 1')}
  assert not set(ids) & set(task.train_data.client_ids)
  for client in data:
    (items, labels), = list(client['queries'])  # One LOO query: 100 candidates, the first is the positive.
    assert items.shape == (100,) and labels[:, 0].numpy().tolist() == [1.0] + [0.0] * 99
