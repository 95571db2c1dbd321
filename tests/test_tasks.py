"""The task: data and model checked against each other when built."""

import sqlite3

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import tasks
from tff_rec.data import schema


def test_mismatched_preprocessing_fails_at_construction(tiny_dataset):
  class WrongTask(tasks.RecommendationTask):
    def client_dataset(self, examples):
      return tf.data.Dataset.from_tensor_slices(examples[0]).batch(2)  # Indices only, no labels.

  with pytest.raises(TypeError, match='does not match the model input spec'):
    WrongTask(tasks.DataConfig(data_dir=tiny_dataset))


def test_missing_data_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='python -m experiments.prepare_data'):
    tasks.RecommendationTask(tasks.DataConfig(data_dir=str(tmp_path)))


def test_eval_clients_of_heldout_users_are_only_heldout_users(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8))
  clients = task.eval_clients(schema.TEST, heldout=True)
  con = sqlite3.connect(f'{tiny_dataset}/{schema.CLIENTS_DB}')
  assert set(clients.client_ids) == {r[0] for r in con.execute('SELECT user_id FROM users WHERE heldout = 1')}
  assert not set(clients.client_ids) & set(task.train_data.client_ids)
  for (items, labels), relevant in zip(clients.queries, clients.relevant):
    assert items.shape == (1, 100) and labels[0].tolist() == [1.0] + [0.0] * 99  # One LOO query.
    assert relevant.tolist() == [items[0, 0]]


def test_test_support_is_train_then_val(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2))
  val, test = task.eval_clients(schema.VAL), task.eval_clients(schema.TEST)
  assert val.client_ids == test.client_ids
  for c, (val_seen, test_seen, val_query) in enumerate(zip(val.seen, test.seen, val.queries)):
    # Test-time support = the training items, then the validation item (the next in time).
    np.testing.assert_array_equal(test_seen, np.r_[val_seen, val_query[0][:, 0]])
    items, labels = test.support[c]
    np.testing.assert_array_equal(items[labels == 1], test_seen)  # Unshuffled: positives in order.
    assert len(items) == 3 * len(test_seen)


def test_train_examples_are_seeded_per_client_and_round(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8))
  ids = task.train_data.client_ids[:3]
  first, again = task.train_examples(ids, 1, seed=0), task.train_examples(ids, 1, seed=0)
  for (a, b), (c, d) in zip(first, again):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
  other_round = task.train_examples(ids, 2, seed=0)
  assert any(not np.array_equal(a, c) for (a, _), (c, _) in zip(first, other_round))


@pytest.mark.parametrize('objective', ['implicit', 'rating'])
def test_support_examples_do_not_depend_on_the_chunk_of_users_built_at_once(tiny_dataset, monkeypatch, objective):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  objective=objective)
  whole = task.eval_clients(schema.TEST, recent_items=2, recent_repeats=1).support
  monkeypatch.setattr(tasks, 'SUPPORT_CHUNK', 3)  # Users sorted by history length, 3 at a time.
  chunked = task.eval_clients(schema.TEST, recent_items=2, recent_repeats=1).support
  assert len(whole) == len(chunked) > 3
  for (items, labels), (chunk_items, chunk_labels) in zip(whole, chunked):
    np.testing.assert_array_equal(items, chunk_items)
    np.testing.assert_array_equal(labels, chunk_labels)


def test_eval_clients_sample_is_seeded_and_each_user_is_evaluated_as_in_the_whole(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8))
  whole = task.eval_clients(schema.TEST, seed=3)
  sample = task.eval_clients(schema.TEST, seed=3, max_users=5)
  assert len(sample.client_ids) == 5 and set(sample.client_ids) < set(whole.client_ids)
  assert sample.client_ids == sorted(sample.client_ids)
  assert task.eval_clients(schema.TEST, seed=3, max_users=5).client_ids == sample.client_ids  # Seeded.
  assert task.eval_clients(schema.TEST, seed=4, max_users=5).client_ids != sample.client_ids
  position = {c: i for i, c in enumerate(whole.client_ids)}
  for c, (items, _), seen in zip(sample.client_ids, sample.queries, sample.seen):
    np.testing.assert_array_equal(items, whole.queries[position[c]][0])  # The same user, the same query.
    np.testing.assert_array_equal(seen, whole.seen[position[c]])
  assert task.eval_clients(schema.TEST, max_users=10_000).client_ids == whole.client_ids
  with pytest.raises(ValueError, match='max_users must be >= 0'):
    task.eval_clients(schema.TEST, max_users=-1)
