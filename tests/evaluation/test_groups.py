"""Metrics by group of users: the groups, each query's membership, the sums and their metrics."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import tasks
from tff_rec.data import schema
from tff_rec.evaluation import client_eval, groups
from tff_rec.federated import shard_math

USERS = groups.UserAttributes(age={'a': 17, 'b': 30, 'c': 56, 'd': 0},
                              gender={'a': 'F', 'b': 'M', 'c': 'F', 'd': ''},
                              occupation={'a': 'student', 'b': 'writer', 'c': 'student', 'd': 'student'},
                              platform={'a': 'p0', 'b': 'p1', 'c': 'p1', 'd': 'p0'})


def test_groups_are_named_by_attribute_and_value_and_each_query_marked():
  raters = np.array([0, 3, 10, 29, 30, 150])  # Item index -> raters in training.
  grouping = groups.Grouping(groups.ATTRIBUTES, USERS, raters, activity=np.array([2, 5, 5, 9, 20]))
  assert grouping.names == (
      'by_activity/2-5', 'by_activity/6-9', 'by_activity/10+',  # Quartiles (lower) 5, 5, 9: the tie merges two.
      'by_item_popularity/0-9', 'by_item_popularity/10-29', 'by_item_popularity/30-99',
      'by_item_popularity/100+',
      'by_gender/F', 'by_gender/M',
      'by_age/1-17', 'by_age/25-34', 'by_age/56+',  # Only the buckets someone is in.
      'by_occupation/student', 'by_occupation/writer',
      'by_platform/p0', 'by_platform/p1')
  rows = grouping.user_rows('a', 5, np.array([1, 5]))  # Two queries: items with 3 and 150 raters.
  marked = [[grouping.names[g] for g in np.flatnonzero(row)] for row in rows]
  assert marked == [['by_activity/2-5', 'by_item_popularity/0-9', 'by_gender/F', 'by_age/1-17',
                     'by_occupation/student', 'by_platform/p0'],
                    ['by_activity/2-5', 'by_item_popularity/100+', 'by_gender/F', 'by_age/1-17',
                     'by_occupation/student', 'by_platform/p0']]
  # No declared gender or age: in no such group; 10 and 30 raters open their buckets; 20 ratings: the top quartile.
  rows = grouping.user_rows('d', 20, np.array([2, 4]))
  assert [[grouping.names[g] for g in np.flatnonzero(row)] for row in rows] == [
      ['by_activity/10+', 'by_item_popularity/10-29', 'by_occupation/student', 'by_platform/p0'],
      ['by_activity/10+', 'by_item_popularity/30-99', 'by_occupation/student', 'by_platform/p0']]


def test_only_attributes_the_data_has_are_available_and_others_are_refused_by_name():
  anonymous = groups.UserAttributes(age={'1': 0}, gender={'1': ''}, occupation={'1': 'group_03'}, platform={'1': ''})
  assert anonymous.available() == ('activity', 'item_popularity')
  assert USERS.available() == groups.ATTRIBUTES
  assert groups.parse('all', anonymous.available()) == ('activity', 'item_popularity')
  assert groups.parse('none', USERS.available()) == ()
  assert groups.parse('platform, gender', USERS.available()) == ('gender', 'platform')
  with pytest.raises(ValueError, match=r"\['gender'\] not in this data; this data has \['activity', "
                                       r"'item_popularity'\]"):
    groups.parse('gender', anonymous.available())
  with pytest.raises(ValueError, match=r"unknown \['colour'\] \(known: \['activity'"):
    groups.parse('activity,colour', USERS.available())


def test_the_table_orders_attributes_as_defined_and_buckets_by_their_bounds():
  metrics = {'val/by_gender/F/users': 1.0, 'by_occupation/writer/users': 2.0, 'by_activity/148+/users': 3.0,
             'by_gender/F/users': 4.0, 'by_activity/18-31/users': 5.0, 'by_activity/18-31/hr@10': 0.5, 'hr@10': 0.1}
  assert groups.table(metrics) == [('by_activity/18-31', {'users': 5.0, 'hr@10': 0.5}),
                                   ('by_activity/148+', {'users': 3.0}), ('by_gender/F', {'users': 4.0}),
                                   ('by_occupation/writer', {'users': 2.0})]
  assert groups.table(metrics, 'val/') == [('by_gender/F', {'users': 1.0})]
  assert groups.is_group_key('heldout_users/by_age/56+/hr@10') and not groups.is_group_key('hr@10')


def test_item_raters_counts_each_user_once():
  np.testing.assert_array_equal(groups.item_raters([np.array([1, 1, 3]), np.array([3, 0])], 4), [0, 1, 0, 2, 0])


def test_ranking_sums_by_group_are_the_sums_of_each_groups_queries():
  # Two users x two query slots; user 1's second slot is padding. Held-out item first; rank = negatives >= it.
  scores = tf.constant([[[0.9] + [0.0] * 20, [0.0] + [1.0] * 20],  # ranks 0 and 20.
                        [[0.5, 0.9, 0.9] + [0.0] * 18, [0.0] * 21]])  # rank 2; padding.
  mask = tf.constant([[1.0, 1.0], [1.0, 0.0]])
  member = tf.constant([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],  # Group 2 holds every query of user 0.
                        [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # The padded query's marks must not count.
  sums = client_eval.ranking_sums(scores, mask, member)
  np.testing.assert_allclose(sums['group_count'], [2.0, 1.0, 2.0])
  np.testing.assert_allclose(sums['group_users'], [2.0, 1.0, 1.0])
  np.testing.assert_allclose(sums['group_hits_at_10'], [2.0, 0.0, 1.0])
  np.testing.assert_allclose(sums['group_ndcg_at_10'], [1.0 + 1 / math.log2(4), 0.0, 1.0], rtol=1e-6)
  assert float(sums['count']) == 3.0 and float(sums['hits_at_10']) == 2.0
  metrics = client_eval.finalize({k: v.numpy() for k, v in sums.items()}, client_eval.RANKING, 'val/',
                                 ('by_x/a', 'by_x/b', 'by_y/c'))
  assert metrics['val/by_x/a/hr@10'] == 1.0 and metrics['val/by_x/b/hr@10'] == 0.0
  assert metrics['val/by_y/c/ndcg@10'] == pytest.approx(0.5) and metrics['val/by_y/c/users'] == 1.0
  assert 'val/by_x/a/hr@5' not in metrics  # Groups report @10 only.


def test_rating_sums_by_group():
  predicted, ratings = tf.constant([[3.0, 5.0], [1.0, 2.0]]), tf.constant([[4.0, 5.0], [3.0, 9.0]])
  mask = tf.constant([[1.0, 1.0], [1.0, 0.0]])
  member = tf.constant([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
  sums = {k: v.numpy() for k, v in client_eval.rating_sums(predicted, ratings, mask, member).items()}
  np.testing.assert_allclose(sums['group_squared_error'], [1.0, 4.0])
  np.testing.assert_allclose(sums['group_absolute_error'], [1.0, 2.0])
  metrics = client_eval.finalize(sums, client_eval.RATING, '', ('by_g/a', 'by_g/b'))
  assert metrics['by_g/b/rmse'] == pytest.approx(math.sqrt(2.0)) and metrics['by_g/b/users'] == 2.0
  # An empty group is reported (with its users: 0), without metrics.
  empty = client_eval.finalize(sums | {'group_count': np.array([2.0, 0.0]), 'group_users': np.array([1.0, 0.0])},
                               client_eval.RATING, '', ('by_g/a', 'by_g/b'))
  assert empty['by_g/b/users'] == 0.0 and 'by_g/b/rmse' not in empty


@pytest.mark.parametrize('objective', ['implicit', 'rating'])
def test_a_groups_metrics_are_those_of_evaluating_its_users_alone(tiny_dataset, objective):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), embedding_dim=4,
                                  objective=objective)
  clients = task.eval_clients(schema.TEST, group_metrics=('gender', 'item_popularity'))
  evaluator = shard_math.ItemSideEvaluator(task.model_config, 8, learning_rate=0.5, epochs=2, users_per_chunk=7)
  rng = np.random.default_rng(0)
  weights = [rng.normal(0, 0.3, w.shape).astype(np.float32) for layer in task.model_fn().global_layers
             for w in layer.get_weights()]
  together = client_eval.finalize(evaluator.evaluate(weights, clients), task.eval_kind, '', clients.group_names)
  female = [u for u, rows in enumerate(clients.groups) if rows[0, clients.group_names.index('by_gender/F')]]
  assert 0 < len(female) < len(clients.client_ids)
  alone = dataclasses.replace(clients, groups=None, group_names=(), **{
      f: [getattr(clients, f)[u] for u in female] for f in ('client_ids', 'support', 'queries', 'seen', 'relevant')})
  by_itself = client_eval.finalize(evaluator.evaluate(weights, alone), task.eval_kind)
  for metric in ('hr@10', 'ndcg@10') if objective == 'implicit' else ('rmse', 'mae'):
    assert together[f'by_gender/F/{metric}'] == pytest.approx(by_itself[metric], abs=1e-6)
  assert together['by_gender/F/users'] == len(female)
  # Popularity partitions the queries: its groups add up to the whole.
  popularity = [n for n in clients.group_names if n.startswith('by_item_popularity/')]
  assert sum(together[f'{n}/count'] for n in popularity) == together['count']
