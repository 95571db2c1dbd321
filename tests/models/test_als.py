"""Implicit ALS maths (Hu et al. 2008) by hand and against the catalogue-wide normal equations."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.models import als

CONFIG = als.AlsConfig(alpha=1.0, regularization=1.0)
TABLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)  # Row 0: unknown items.


def test_user_solve_by_hand():
  # G = diag(1, 4); A = G + alpha y1 y1^T + lambda I = diag(3, 5); b = (1 + alpha) y1 = (2, 0): x = (2/3, 0).
  x = als.solve_users(TABLE, tf.constant([[1, 0]]), tf.constant([[1.0, 0.0]]), CONFIG)
  np.testing.assert_allclose(x, [[2 / 3, 0.0]], rtol=1e-6)
  # A user with no rated item (padding / a negative only) gets 0.
  np.testing.assert_allclose(als.solve_users(TABLE, tf.constant([[2, 0]]), tf.constant([[0.0, 0.0]]), CONFIG),
                             [[0.0, 0.0]], atol=1e-7)


def test_user_solve_minimises_the_catalogue_loss():
  """The Gramian form equals the normal equations of sum over all items c_ui (p_ui - x y_i)^2 + lambda |x|^2."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=(30, 4)).astype(np.float32)
  rated = np.array([3, 7, 8, 21])
  config = als.AlsConfig(alpha=5.0, regularization=0.5)
  x = als.solve_users(table, tf.constant(rated[None]), tf.ones([1, 4]), config).numpy()[0]
  p = np.zeros(30); p[rated] = 1.0
  c = 1.0 + config.alpha * p
  expected = np.linalg.solve(table.T @ (c[:, None] * table) + config.regularization * np.eye(4), table.T @ (c * p))
  np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)


def test_negatives_and_padding_carry_no_weight():
  labels = tf.constant([[1.0, 0.0, 1.0]])
  mask = tf.constant([[1.0, 1.0, 0.0]])
  np.testing.assert_array_equal(als.positive_weights(labels, mask), [[1.0, 0.0, 0.0]])


def test_user_statistics_by_hand():
  users = tf.constant([[2 / 3, 0.0], [0.0, 1.0]])
  gram, sums = als.user_statistics(users, tf.constant([[1, 2], [2, 0]]), tf.constant([[1.0, 0.0], [1.0, 0.0]]), 3,
                                   CONFIG)
  np.testing.assert_allclose(gram, [[[4 / 9, 0], [0, 0]], [[0, 0], [0, 1]]], rtol=1e-6)
  # (1 + alpha) x at each rated item; item 2 of user 0 is a negative (weight 0).
  np.testing.assert_allclose(sums, [[[0, 0], [4 / 3, 0], [0, 0]], [[0, 0], [0, 0], [0, 2]]], rtol=1e-6)


def test_item_solve_by_hand_and_with_a_noisy_gramian():
  # G = diag(4/9, 0), lambda 1: y_1 = (4/3, 0) diag(9/13, 1) = (12/13, 0); row 0 is zeroed.
  sums = tf.constant([[5.0, 5.0], [4 / 3, 0.0], [0.0, 0.0]])
  table = als.solve_items(tf.constant([[4 / 9, 0.0], [0.0, 0.0]]), sums, 1.0)
  np.testing.assert_allclose(table, [[0, 0], [12 / 13, 0], [0, 0]], rtol=1e-6)
  # Noise made the Gramian indefinite and asymmetric: symmetrised, eigenvalue -1 floored at 0.
  noisy = als.solve_items(tf.constant([[-1.0, 0.2], [-0.2, 1.0]]), tf.constant([[0.0, 0.0], [1.0, 1.0]]), 1.0)
  np.testing.assert_allclose(noisy, [[0, 0], [1.0, 0.5]], rtol=1e-6)


def test_item_prior_by_hand():
  # d = 1, G = 1, lambda = 1, mu = 1; items 1 and 2 share one feature. y_i = (s_i + w) / 2 and
  # w = (y_1 + y_2) / (2 + 1) give w = 1/2: y = (1.25, 0.25). Item 2, rated by no one, gets its feature's 0.25.
  features = np.array([[0.0], [1.0], [1.0]], np.float32)
  table = als.solve_items(tf.constant([[1.0]]), tf.constant([[5.0], [2.0], [0.0]]), 1.0, features, 1.0)
  np.testing.assert_allclose(table, [[0.0], [1.25], [0.25]], rtol=1e-6)
  # Without the prior: s_i / 2.
  np.testing.assert_allclose(als.solve_items(tf.constant([[1.0]]), tf.constant([[5.0], [2.0], [0.0]]), 1.0),
                             [[0.0], [1.0], [0.0]], rtol=1e-6)


def test_item_prior_solves_the_joint_ridge_regression():
  """The eigenbasis solution equals the stacked normal equations in (Y, W), solved directly."""
  rng = np.random.default_rng(1)
  rows, dim, p, lam, mu = 7, 3, 2, 0.7, 0.5
  root = rng.normal(size=(dim, dim))
  gram = root @ root.T
  sums = rng.normal(size=(rows, dim))
  features = rng.integers(0, 2, size=(rows, p)).astype(np.float64)
  features[0] = 0.0
  # Y (G + lambda I) - lambda F W = S and (F^T F + mu I) W - F^T Y = 0, vectorised column-major.
  top = np.hstack([np.kron(gram + lam * np.eye(dim), np.eye(rows)), np.kron(np.eye(dim), -lam * features)])
  bottom = np.hstack([np.kron(np.eye(dim), -features.T), np.kron(np.eye(dim), features.T @ features + mu * np.eye(p))])
  solution = np.linalg.solve(np.vstack([top, bottom]), np.concatenate([sums.ravel('F'), np.zeros(p * dim)]))
  expected = solution[:rows * dim].reshape((rows, dim), order='F')
  table = als.solve_items(tf.constant(gram), tf.constant(sums), lam, features, mu).numpy()
  np.testing.assert_allclose(table[1:], expected[1:], rtol=1e-8, atol=1e-10)
  assert not np.allclose(table, als.solve_items(tf.constant(gram), tf.constant(sums), lam).numpy())


def test_prior_features_are_genres_and_a_year_bucket():
  genres = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
  features = als.prior_features(genres, np.array([0, 2, 0]), 3)
  np.testing.assert_array_equal(features, [[0, 0, 0, 0, 0], [1, 0, 0, 0, 1], [0, 1, 1, 0, 0]])


def test_example_losses_weight_rated_items_by_confidence():
  losses = als.example_losses(tf.constant([0.5, 0.5]), tf.constant([1.0, 0.0]), als.AlsConfig(alpha=3.0))
  np.testing.assert_allclose(losses, [4 * 0.25, 0.25])


def test_bad_config():
  with pytest.raises(ValueError, match='--als_alpha and --als_regularization must be > 0'):
    als.AlsConfig(alpha=0.0).validate()
  with pytest.raises(ValueError, match='--als_prior_regularization must be > 0'):
    als.AlsConfig(prior_regularization=0.0).validate()


def test_reconstruct_takes_padded_batches():
  # Two batches of 2: user 0 rated item 1 (then a negative and padding), user 1 nothing but a negative.
  items = tf.constant([[[1, 2], [0, 0]], [[2, 0], [0, 0]]], tf.int64)
  labels = tf.constant([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
  mask = tf.constant([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
  np.testing.assert_allclose(als.reconstruct(TABLE, items, labels, mask, CONFIG), [[[2 / 3, 0.0]], [[0.0, 0.0]]],
                             rtol=1e-6, atol=1e-7)
