"""Batched MF reconstruction: support examples by hand, and the hand-written gradient against Keras + tape."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import preprocessing
from tff_rec.evaluation import client_eval
from tff_rec.models import mf, reconstruction, two_tower

TABLE = np.array([[7], [8], [9], [10]], np.int64)  # 4 rows, 1 negative each.


def test_implicit_support_drops_unknown_items_and_reads_the_negative_table():
  history = [[3, 0, 5], [0, 0, 0], [2, 2, 0]]
  items, labels, counts = reconstruction.support_examples(history, np.ones((3, 3), np.float32),
                                                          objective=mf.IMPLICIT, negatives=TABLE)
  # User 0: item 3 at position 0 -> row 3 (10); item 5 closes up to position 1 -> row (1 + 5) % 4 = 2 (9).
  # User 2: item 2 at positions 0 and 1 -> rows 2 (9) and 3 (10).
  assert items.numpy().tolist() == [[3, 10, 5, 9], [0, 0, 0, 0], [2, 9, 2, 10]]
  assert labels.numpy().tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0]]
  assert counts.numpy().tolist() == [4, 0, 4]


def test_recency_emphasis_appends_the_last_items_blocks_again():
  items, labels, counts = reconstruction.support_examples([[3, 0, 5, 6], [2, 0, 0, 0]], np.ones((2, 4), np.float32),
                                                          objective=mf.IMPLICIT, negatives=TABLE, recent_items=2,
                                                          recent_repeats=2)
  # User 0: 3 -> row 3 (10), 5 -> row 2 (9), 6 at position 2 -> row 0 (7); then (5, 6)'s blocks twice more.
  assert items.numpy()[0].tolist() == [3, 10, 5, 9, 6, 7] + [5, 9, 6, 7] * 2
  # User 1 has one item: its block three times.
  assert items.numpy()[1].tolist() == [2, 9] * 3 + [0] * 8
  assert labels.numpy()[1].tolist() == [1, 0] * 3 + [0] * 8 and counts.numpy().tolist() == [14, 6]
  rated, _, rated_counts = reconstruction.support_examples([[4, 2]], [[1.0, 2.0]], objective=mf.RATING,
                                                           negatives=TABLE, recent_items=1, recent_repeats=3)
  assert rated.numpy().tolist() == [[4, 2, 2, 2, 2]] and rated_counts.numpy().tolist() == [5]


def test_rating_support_keeps_ratings_of_known_items_in_order():
  items, labels, counts = reconstruction.support_examples(
      [[0, 4, 2], [1, 0, 0]], [[9.0, 4.5, 1.0], [3.0, 0.0, 0.0]], objective=mf.RATING, negatives=TABLE)
  assert items.numpy().tolist() == [[4, 2], [1, 0]]
  assert labels.numpy().tolist() == [[4.5, 1.0], [3.0, 0.0]]
  assert counts.numpy().tolist() == [2, 1]


def test_batched_cuts_like_dataset_batch():
  items, labels, mask = reconstruction.batched(tf.constant([[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]], tf.int64),
                                               tf.ones([2, 5]), tf.constant([5, 1], tf.int64), 2)
  assert items.numpy().tolist() == [[[1, 2], [3, 4], [5, 0]], [[6, 0], [0, 0], [0, 0]]]
  assert mask.numpy().tolist() == [[[1, 1], [1, 1], [1, 0]], [[1, 0], [0, 0], [0, 0]]]
  assert labels.shape == (2, 3, 2)


@pytest.mark.parametrize('objective', [mf.IMPLICIT, mf.RATING])
def test_reconstruction_equals_keras_sgd_on_the_same_batches(objective):
  """The hand-written gradient gives the user that `client_eval.reconstruct` (Keras + tape, TFF's eval) gives."""
  rng = np.random.default_rng(0)
  num_items, dim, batch_size = 12, 3, 4
  config = mf.MFConfig(num_items=num_items, embedding_dim=dim, l2=0.05, objective=objective, seed=1)
  bundle = mf.build_mf(config)
  layers = {layer.name: layer for layer in bundle.model.layers}
  layers['item_bias'].embeddings.assign(rng.normal(size=(num_items + 1, 1)).astype(np.float32))
  if objective == mf.RATING:
    layers['global_mean'].mean.assign(3.2)
  weights = [v.numpy() for layer in bundle.global_layers for v in layer.trainable_variables]
  histories = [rng.integers(1, num_items + 1, size=n) for n in (7, 2, 10)]
  ratings = [rng.integers(1, 6, size=len(h)).astype(np.float32) for h in histories]
  history, _ = preprocessing.pad_rows(histories, np.int64)
  history_ratings, _ = preprocessing.pad_rows(ratings, np.float32)
  table = reconstruction.negative_table(0, num_items, 2)
  items, labels, counts = reconstruction.support_examples(history, history_ratings, objective=objective,
                                                          negatives=table)
  batched = reconstruction.batched(items, labels, counts, batch_size)
  user, shares = reconstruction.reconstruct(weights[0], weights[1], weights[2] if objective == mf.RATING else None,
                                            *batched, objective=objective, l2=config.l2, learning_rate=0.3,
                                            epochs=3, coefficients=True)
  # The examples' shares rebuild the user exactly: p_u = sum_e c_e q_e (and b_u = sum_e c_b,e).
  np.testing.assert_allclose(np.einsum('ubk,ubkd->ud', shares[0], weights[0][batched[0].numpy()]),
                             user[0].numpy()[:, 0], atol=1e-5)
  if objective == mf.RATING:
    np.testing.assert_allclose(shares[1].numpy().sum((1, 2)), user[1].numpy()[:, 0, 0], atol=1e-5)
  assert np.all(shares[0].numpy()[batched[2].numpy() == 0] == 0)  # Padding has no share.
  loss = mf.RegularizedLoss(objective)
  for u, n in enumerate(counts.numpy()):
    support = preprocessing.as_dataset((items[u, :n].numpy(), labels[u, :n].numpy()), batch_size)
    client_eval.reconstruct(bundle, support, loss, learning_rate=0.3, epochs=3)
    expected = [v.numpy() for v in client_eval.local_variables(bundle)]
    np.testing.assert_allclose(user[0][u].numpy(), expected[0], atol=1e-6)
    if objective == mf.RATING:
      np.testing.assert_allclose(user[1][u].numpy(), expected[1], atol=1e-6)
    assert np.abs(expected[0]).sum() > 0  # Reconstruction moved the user.


def test_negative_table_is_fixed_by_the_seed_and_in_the_catalogue():
  a, b = reconstruction.negative_table(3, 50, 4), reconstruction.negative_table(3, 50, 4)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (reconstruction.NEGATIVE_TABLE_ROWS, 4) and a.min() >= 1 and a.max() <= 50
  assert not np.array_equal(a, reconstruction.negative_table(4, 50, 4))


def test_retrieval_reconstruction_equals_keras_sgd_with_the_tfrs_loss():
  """Two-tower: the batched retrieval loss and its SGD give the query `client_eval.reconstruct` gives."""
  rng = np.random.default_rng(1)
  num_items, dim, batch_size = 12, 3, 5
  features = two_tower.ItemFeatures(rng.integers(0, 2, size=(num_items + 1, 19)).astype(np.float32),
                                    rng.integers(0, two_tower.NUM_YEAR_BUCKETS, size=num_items + 1))
  bundle = two_tower.build_two_tower(two_tower.TwoTowerConfig(num_items, dim, 0.5, seed=2), features)
  weights = [v.numpy() for layer in bundle.global_layers for v in layer.trainable_variables]
  table = two_tower.candidate_table(weights, features)
  np.testing.assert_allclose(table, bundle.model(tf.range(num_items + 1, dtype=tf.int64))[:, dim:], atol=1e-5)
  histories = [rng.integers(1, num_items + 1, size=n) for n in (6, 1, 9)]
  history, _ = preprocessing.pad_rows(histories, np.int64)
  items, labels, counts = reconstruction.support_examples(
      history, np.ones(history.shape, np.float32), objective=mf.IMPLICIT,
      negatives=reconstruction.negative_table(0, num_items, 2))
  batched = reconstruction.batched(items, labels, counts, batch_size)
  query, shares = reconstruction.reconstruct_query(tf.constant(table), *batched, learning_rate=0.4, epochs=3,
                                                   coefficients=True)
  np.testing.assert_allclose(np.einsum('ubk,ubkd->ud', shares, table[batched[0].numpy()]), query.numpy()[:, 0],
                             atol=1e-5)
  loss = two_tower.RetrievalLoss(dim)
  for u, n in enumerate(counts.numpy()):
    support = preprocessing.as_dataset((items[u, :n].numpy(), labels[u, :n].numpy()), batch_size)
    client_eval.reconstruct(bundle, support, loss, learning_rate=0.4, epochs=3)
    expected = client_eval.local_variables(bundle)[0].numpy()
    np.testing.assert_allclose(query[u].numpy(), expected, atol=1e-5)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize('labels, mask', [
    ([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    ([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),  # No negatives.
    ([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]),  # No positives; an empty batch.
])
def test_closed_form_retrieval_gradient_equals_the_tape(labels, mask):
  rng = np.random.default_rng(7)
  query = tf.constant(rng.normal(size=(2, 1, 3)), tf.float32)
  candidates = tf.constant(rng.normal(size=(2, 5, 3)), tf.float32)
  labels, mask = tf.constant(labels, tf.float32), tf.constant(mask, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(query)
    loss = tf.reduce_sum(reconstruction.retrieval_batch_losses(query, candidates, labels, mask))
  gradient = reconstruction.retrieval_score_gradients(query, candidates, labels, mask)
  np.testing.assert_allclose(tf.reduce_sum(gradient[..., None] * candidates, 1, keepdims=True).numpy(),
                             tape.gradient(loss, query).numpy(), atol=1e-6)
