"""Two-tower model: features, the retrieval loss by hand, and scoring unseen items."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.data import schema
from tff_rec.models import two_tower


def test_year_buckets():
  assert [two_tower.year_bucket(y) for y in (0, 1919, 1920, 1924, 1925, 1995, 2030)] == [0, 0, 1, 1, 2, 16, 17]


def _features(num_items=4):
  genres = np.zeros((num_items + 1, schema.NUM_GENRES), np.float32)
  genres[1, 1] = genres[2, 5] = genres[3, 1] = genres[4, 8] = 1.0
  return two_tower.ItemFeatures(genres, np.array([0, 16, 15, 16, 3], np.int64))


def test_retrieval_loss_by_hand():
  # One user q; positives p1, p2 (label 1) and one negative n (label 0). Each positive's softmax is over itself
  # and the negative: the other positive is the same user's item, removed as an accidental hit.
  q, p1, p2, n = [1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]
  y_pred = tf.constant([q + p1, q + p2, q + n])
  y_true = tf.constant([[1.0], [1.0], [0.0]])
  loss = float(two_tower.RetrievalLoss(dim=2)(y_true, y_pred))
  s1, s2, sn = 2.0, 0.0, 1.0
  expected = (-np.log(np.exp(s1) / (np.exp(s1) + np.exp(sn))) - np.log(np.exp(s2) / (np.exp(s2) + np.exp(sn)))) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_candidate_tower_scores_items_from_features_alone():
  bundle = two_tower.build_two_tower(two_tower.TwoTowerConfig(num_items=4, embedding_dim=3), _features())
  bundle.global_layers[0].embeddings.assign(np.zeros((5, 3), np.float32))  # No id signal for any item.
  bundle.local_layers[0].embedding.assign([[1.0, 1.0, 1.0]])
  scores = bundle.score_fn(bundle.model(tf.constant([1, 3, 4], tf.int64))).numpy()
  # Items 1 and 3 share genre and year bucket: equal scores; item 4 (other genre, year) differs.
  assert scores[0] == pytest.approx(scores[1]) and scores[2] != pytest.approx(scores[0])


def test_feature_table_must_cover_the_catalogue():
  with pytest.raises(ValueError, match='item features cover 4 items'):
    two_tower.build_two_tower(two_tower.TwoTowerConfig(num_items=5), _features())


def test_title_vectors_join_the_dense_features_of_the_candidate_tower():
  text = np.zeros((5, 2), np.float32)
  text[1], text[3] = [1.0, 0.0], [0.0, 1.0]  # Items 1 and 3: same genre and year, different titles.
  plain = _features()
  features = two_tower.ItemFeatures(plain.genres, plain.year_buckets, text)
  assert features.dense.shape == (5, schema.NUM_GENRES + 2)
  bundle = two_tower.build_two_tower(two_tower.TwoTowerConfig(num_items=4, embedding_dim=3), features)
  projection = bundle.global_layers[1].kernel
  assert projection.shape == (schema.NUM_GENRES + 2, 3)
  bundle.global_layers[0].embeddings.assign(np.zeros((5, 3), np.float32))
  bundle.local_layers[0].embedding.assign([[1.0, 1.0, 1.0]])
  scores = bundle.score_fn(bundle.model(tf.constant([1, 3], tf.int64))).numpy()
  assert scores[0] != pytest.approx(scores[1])  # Only the titles tell them apart.
  weights = [v.numpy() for layer in bundle.global_layers for v in layer.trainable_variables]
  table = two_tower.candidate_table(weights, features)
  np.testing.assert_allclose(table[[1, 3]] @ np.ones(3), scores, rtol=1e-5, atol=1e-6)
  # The exported model state stores `dense` as its feature table: the same candidates from it.
  np.testing.assert_array_equal(two_tower.candidate_table(weights, two_tower.ItemFeatures(features.dense,
                                                                                          features.year_buckets)),
                                table)
