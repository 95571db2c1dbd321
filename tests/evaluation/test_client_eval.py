"""Client evaluation maths, with hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.evaluation import client_eval
from tff_rec.models import mf


def test_rank_counts_ties_against_the_held_out_item():
  # Held-out 0.5; negatives 0.9 and 0.5 score >= it -> rank 2.
  sums = client_eval.ranking_sums(tf.constant([0.5, 0.9, 0.1, 0.5, 0.2]))
  assert float(sums['hits_at_5']) == 1.0 and float(sums['hits_at_10']) == 1.0
  np.testing.assert_allclose(float(sums['ndcg_at_5']), 1 / math.log2(4), rtol=1e-6)


def test_constant_model_scores_zero():
  sums = client_eval.ranking_sums(tf.zeros([100]))
  assert all(float(sums[f'hits_at_{k}']) == 0.0 for k in client_eval.RANKING_KS)


def test_top_item_scores_one():
  sums = client_eval.ranking_sums(tf.constant([2.0] + [1.0] * 99))
  assert float(sums['hits_at_5']) == 1.0 and float(sums['ndcg_at_5']) == pytest.approx(1.0)


def test_finalize():
  ranking = client_eval.finalize({'count': 4.0, 'hits_at_5': 1.0, 'ndcg_at_5': 0.5, 'hits_at_10': 2.0,
                                  'ndcg_at_10': 1.0, 'hits_at_20': 3.0, 'ndcg_at_20': 1.5}, client_eval.RANKING)
  assert ranking['hr@10'] == 0.5 and ranking['ndcg@20'] == 0.375 and ranking['count'] == 4.0
  rating = client_eval.finalize({'count': 2.0, 'squared_error': 8.0, 'absolute_error': 3.0}, client_eval.RATING, 'x/')
  assert rating == {'x/rmse': 2.0, 'x/mae': 1.5, 'x/count': 2.0}


def test_reconstruct_is_one_sgd_step_from_zero_per_batch():
  bundle = mf.build_mf(mf.MFConfig(num_items=1, embedding_dim=1, objective=mf.RATING))
  bundle.global_layers[0].embeddings.assign([[0.0], [2.0]])  # q_1 = 2
  bundle.global_layers[2].mean.assign(3.0)
  bundle.local_layers[0].embedding.assign([[5.0]])  # Reset to 0 by reconstruct.
  support = tf.data.Dataset.from_tensors((tf.constant([1], tf.int64), tf.constant([[4.0]])))
  client_eval.reconstruct(bundle, support, mf.RegularizedLoss(mf.RATING), learning_rate=0.1, epochs=1)
  # From p = b = 0: prediction 3, error -1; d/dp (r - pred)^2 = -2 * 1 * q = -4 -> p = 0.4; d/db = -2 -> b = 0.2.
  np.testing.assert_allclose(bundle.local_layers[0].embedding.numpy(), [[0.4]], rtol=1e-6)
  np.testing.assert_allclose(bundle.local_layers[0].bias.numpy(), [[0.2]], rtol=1e-6)


def test_catalogue_metrics_by_hand():
  # Items 1..5 (0 = unknown, never ranked). Seen: item 5 (scored highest, excluded).
  item_scores = tf.constant([[9.0, 0.1, 0.8, 0.5, 0.5, 1.0]])
  seen = tf.constant([[False, False, False, False, False, True]])
  relevant = tf.constant([[False, False, False, True, False, False]])  # Item 3 ties item 4 -> rank 2.
  sums = client_eval.catalogue_sums(item_scores, seen, relevant)
  assert float(sums['catalogue_users']) == 1.0
  assert float(sums['recall_at_10']) == 1.0
  np.testing.assert_allclose(float(sums['catalogue_ndcg_at_10']), 1 / math.log2(4), rtol=1e-6)
  # Two relevant items at ranks 0 and 2 of a 2-item ideal: (1 + 1/log2(4)) / (1 + 1/log2(3)).
  two = client_eval.catalogue_sums(item_scores, seen, tf.constant([[False, False, True, True, False, False]]))
  np.testing.assert_allclose(float(two['catalogue_ndcg_at_10']), (1 + 0.5) / (1 + 1 / math.log2(3)), rtol=1e-6)
  # A constant model ranks a relevant item below every other candidate: no hit at K below the catalogue size.
  flat = client_eval.catalogue_sums(tf.zeros([1, 30]), tf.zeros([1, 30], bool),
                                    tf.one_hot([3], 30, on_value=True, off_value=False))
  assert float(flat['recall_at_20']) == 0.0


def test_target_exposure_counts_users_with_an_unseen_target_in_their_top_10():
  # 14 items; user 0 ranks target 13 tenth (9 unseen items above it), user 1 eleventh (10 above), user 2 has
  # seen target 13 (not a candidate) and ranks target 12 last, user 3 ranks target 12 first among ties (ties go
  # against the target: 13 items score as it does, so it is not in the top 10).
  scores = np.zeros([4, 15], np.float32)
  scores[0, 1:10], scores[0, 13] = 2.0, 1.0
  scores[1, 1:11], scores[1, 13] = 2.0, 1.0
  scores[2, 13], scores[2, 12] = 5.0, -1.0
  scores[3] = 1.0
  seen = np.zeros([4, 15], bool)
  seen[2, 13] = True
  targets = tf.constant([[12, 13]] * 4, tf.int64)
  sums = client_eval.catalogue_sums(tf.constant(scores), tf.constant(seen), tf.zeros([4, 15], bool), targets)
  assert float(sums['target_exposed']) == 1.0 and float(sums['exposure_users']) == 4.0
  totals = {'count': 1.0, 'hits_at_5': 0.0, 'ndcg_at_5': 0.0, 'hits_at_10': 0.0, 'ndcg_at_10': 0.0,
            'hits_at_20': 0.0, 'ndcg_at_20': 0.0, **{k: float(v) for k, v in sums.items()}}
  assert client_eval.finalize(totals, client_eval.RANKING, 'val/')['val/er@10'] == 0.25
  assert 'target_exposed' not in client_eval.catalogue_sums(tf.constant(scores), tf.constant(seen),
                                                            tf.zeros([4, 15], bool))


def test_masked_ranking_sums_skip_padding():
  scores = tf.constant([[[2.0] + [1.0] * 99, [0.0] * 100]])  # A hit, then a padded query.
  sums = client_eval.ranking_sums(scores, tf.constant([[1.0, 0.0]]))
  assert float(sums['count']) == 1.0 and float(sums['hits_at_5']) == 1.0
