"""The sequence two-tower served: the evaluation's scores, history order and truncation, bad input."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import tasks
from tff_rec.data import schema
from tff_rec.evaluation import client_eval
from tff_rec.federated import sequence_math
from tff_rec.models import sequence
from tff_rec.serving import export
from tff_rec.serving.sequence_export import UNKNOWN_SCORE, SequenceRecommender

SETTINGS = dict(max_history=5, num_blocks=1, dropout=0.0)


@pytest.fixture(scope='module')
def served(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset), embedding_dim=6, init_stddev=0.5,
                                  model=tasks.SEQUENCE, sequence_settings=SETTINGS)
  weights = sequence.initial_weights(task.sequence_config)
  module = SequenceRecommender(task.sequence_config, task.vocabulary, weights, task.item_features, top_k=4)
  return task, weights, module


def _names(task, indices):
  return [task.vocabulary[i - 1] for i in indices]


def _request(task, histories):
  width = max(len(h) for h in histories)
  ids = np.array([_names(task, h) + [''] * (width - len(h)) for h in histories], dtype=object)
  return tf.constant(ids), tf.ones(ids.shape, tf.float32)


def test_served_scores_are_the_evaluations(served):
  task, weights, module = served
  clients = task.eval_clients(schema.TEST, group_metrics=())
  sums = sequence_math.evaluation_sums([tf.constant(w) for w in weights],
                                       sequence_math.eval_arrays(clients, task.sequence_config, len(task.vocabulary)),
                                       task.sequence_config, task.item_features)
  ids, ratings = _request(task, clients.seen)
  candidates = tf.constant(np.array([_names(task, q[0][0]) for q in clients.queries], dtype=object))
  scores = module.score(ids, ratings, candidates)['scores']
  totals = client_eval.ranking_sums(scores)
  assert totals['count'] == len(clients.seen)
  for key in ('hits_at_10', 'ndcg_at_10', 'hits_at_5'):
    assert float(totals[key]) == pytest.approx(float(sums[key]), abs=1e-4), key


def test_history_is_read_in_order_truncated_to_its_recent_items_and_cleaned(served):
  task, _, module = served
  long = [3, 8, 1, 9, 4, 7, 2]
  ids, ratings = _request(task, [long, long[-5:], long[::-1]])
  queries = module.user_embedding(ids, ratings).numpy()
  np.testing.assert_allclose(queries[0], queries[1], atol=1e-6)  # The 5 most recent items.
  assert not np.allclose(queries[0], queries[2], atol=1e-3)  # Order matters.
  names = _names(task, long[-5:])
  noisy = tf.constant([['nope', names[0], '', names[1], 'gone', *names[2:]]])
  np.testing.assert_allclose(module.user_embedding(noisy, tf.ones(noisy.shape)).numpy()[0], queries[1], atol=1e-6)
  empty = module.user_embedding(tf.constant([['', 'nope']]), tf.ones([1, 2])).numpy()[0]
  final_bias = module.query_tower.get_layer('causal_transformer').ordered[-1].numpy()
  np.testing.assert_allclose(empty, final_bias, atol=1e-6)  # No item: the final layer norm's bias.
  out = module.recommend(ids, ratings)
  for row, history in zip(out['item_ids'].numpy(), [long, long[-5:], long[::-1]]):
    assert not set(r.decode() for r in row) & set(_names(task, history))  # History items are not recommended.
  scores = module.score(ids[:1], ratings[:1], tf.constant([[names[0], 'unknown']]))['scores'].numpy()
  assert scores[0, 1] == UNKNOWN_SCORE
  with pytest.raises(tf.errors.InvalidArgumentError, match='must have the same shape'):
    module.recommend(ids, tf.ones([3, 1]))


def test_the_saved_model_serves_what_the_module_does(served, tmp_path):
  task, _, module = served
  export.save(module, str(tmp_path / 'model'), {'model': tasks.SEQUENCE})
  loaded = tf.saved_model.load(str(tmp_path / 'model'))
  assert set(loaded.signatures) == set(export.SIGNATURES)
  ids, ratings = _request(task, [[5, 2, 11], [7]])
  got = loaded.signatures['serving_default'](history_item_ids=ids, history_ratings=ratings)
  want = module.recommend(ids, ratings)
  np.testing.assert_array_equal(got['item_ids'].numpy(), want['item_ids'].numpy())
  np.testing.assert_allclose(got['scores'].numpy(), want['scores'].numpy(), rtol=1e-6)
  assert os.path.exists(tmp_path / 'model' / export.METADATA)


def test_the_xla_compiled_query_tower_serves_what_the_plain_one_does(served, tmp_path):
  task, weights, module = served
  compiled = SequenceRecommender(task.sequence_config, task.vocabulary, weights, task.item_features, top_k=4,
                                 jit_compile=True)
  export.save(compiled, str(tmp_path / 'jit'), {'model': tasks.SEQUENCE})
  loaded = tf.saved_model.load(str(tmp_path / 'jit'))
  for histories in ([[5, 2, 11]], [[5, 2, 11], [7], [1, 2, 3, 4, 5, 6, 7]]):  # Batches of 1 and 3 (padded to 4).
    ids, ratings = _request(task, histories)
    want = module.recommend(ids, ratings)
    for got in (compiled.recommend(ids, ratings), loaded.signatures['recommend'](history_item_ids=ids,
                                                                               history_ratings=ratings)):
      np.testing.assert_array_equal(got['item_ids'].numpy(), want['item_ids'].numpy())
      np.testing.assert_allclose(got['scores'].numpy(), want['scores'].numpy(), rtol=1e-5, atol=1e-6)


def test_a_trained_run_exports_and_serves_its_test_metrics(tiny_dataset, tmp_path):
  """train_federated --model=sequence_two_tower --export_dir: the served model's test HR@10 / NDCG@10 are the
  run's (`final_metrics.json`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tests.experiments.test_train_federated import _run  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['train_federated', '--experiment_name=unset'])
  final = _run(tiny_dataset, tmp_path, 'sequence', model='sequence_two_tower', algorithm='fed_avg', max_history=5,
               num_blocks=1, clients_per_round=10, export_dir=str(tmp_path / 'export'), top_k=3)
  loaded = tf.saved_model.load(str(tmp_path / 'export'))
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset), model=tasks.SEQUENCE,
                                  sequence_settings=dict(max_history=5, num_blocks=1))
  clients = task.eval_clients(schema.TEST)
  ids, ratings = _request(task, clients.seen)
  candidates = tf.constant(np.array([_names(task, q[0][0]) for q in clients.queries], dtype=object))
  served = client_eval.finalize(client_eval.ranking_sums(loaded.score(ids, ratings, candidates)['scores']),
                                client_eval.RANKING)
  assert served['hr@10'] == pytest.approx(final['hr@10'], abs=1e-9)
  assert served['ndcg@10'] == pytest.approx(final['ndcg@10'], abs=1e-5)
  assert loaded.recommend(ids[:1], ratings[:1])['item_ids'].shape == (1, 3)
