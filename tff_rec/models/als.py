"""Implicit-feedback alternating least squares, the maths of `--algorithm=fed_als` (plain TF, no TFF).

Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback
Datasets" (ICDM 2008): preference p_ui = 1 for the items a user rated and 0
for every other item, confidence c_ui = 1 + alpha for the rated ones and 1
for the rest, loss sum_ui c_ui (p_ui - x_u . y_i)^2 + lambda (|x_u|^2 + ...).
With the items fixed each user's embedding is a ridge regression solved
exactly on the device (`solve_users`: Federated Reconstruction's local step
done in closed form, over the whole catalogue through the Gramian Y^T Y).

The item step needs, per user, only x x^T and (1 + alpha) x at each item it
rated (`user_statistics`); their sum over users gives every item's ridge
regression (`solve_items`). Private ALS (Chien et al., "Private Alternating
Least Squares: Practical Private Matrix Completion with Tighter Rates", ICML
2021) adds Gaussian noise to that sum after clipping each user's statistics,
which `tff_rec.federated.als` does with the DP queries of `tff_rec.privacy.dp`.
Like their implementation's default, the per-item alpha x x^T term is not
sent: every item's matrix is the shared Gramian, so a user's statistics are
one d x d matrix and a sparse [items, d] table, and less noise is needed.

Written by hand: no library in the stack has ALS with per-user statistics.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AlsConfig:
  alpha: float = 5.0  # Confidence of a rated item over an unrated one, minus 1.
  regularization: float = 10.0  # lambda of the user and item ridge regressions (in units of one user's statistics).

  def validate(self) -> None:
    if self.alpha <= 0 or self.regularization <= 0:
      raise ValueError(f'--als_alpha and --als_regularization must be > 0, got {self.alpha}, {self.regularization}')


def positive_weights(labels: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """1 for each (unpadded) rated example, 0 for sampled negatives and padding; same shape."""
  return mask * tf.cast(labels > 0.5, mask.dtype)


def solve_users(item_embedding: tf.Tensor, items: tf.Tensor, weights: tf.Tensor, config: AlsConfig) -> tf.Tensor:
  """Every user's exact embedding [users, d] given the items.

  x_u = (Y^T Y + alpha sum_n w_n y_n y_n^T + lambda I)^-1 sum_n w_n (1 + alpha) y_n,
  over the user's examples n (items [users, n], weights [users, n]: 1 for a
  rated item; an item rated twice counts twice). A user with none gets 0.
  """
  y = tf.gather(item_embedding, items)  # [users, n, d]
  d = tf.shape(item_embedding)[1]
  gramian = tf.matmul(item_embedding, item_embedding, transpose_a=True)
  a = (gramian[None] + config.alpha * tf.einsum('un,und,une->ude', weights, y, y)
       + config.regularization * tf.eye(d, dtype=item_embedding.dtype)[None])
  b = (1.0 + config.alpha) * tf.einsum('un,und->ud', weights, y)
  return tf.linalg.solve(a, b[..., None])[..., 0]


def reconstruct(item_embedding: tf.Tensor, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
                config: AlsConfig) -> tf.Tensor:
  """`solve_users` on padded [users, batches, B] support batches (as `reconstruction.reconstruct` takes them):
  the rated, unpadded examples count. Returns [users, 1, d], the shape of MF's local user."""
  users = tf.shape(items)[0]
  positives = positive_weights(tf.reshape(labels, [users, -1]), tf.reshape(mask, [users, -1]))
  return solve_users(item_embedding, tf.reshape(items, [users, -1]), positives, config)[:, None, :]


def user_statistics(users: tf.Tensor, items: tf.Tensor, weights: tf.Tensor, num_rows: int | tf.Tensor,
                    config: AlsConfig) -> tuple[tf.Tensor, tf.Tensor]:
  """Each user's contribution to the item step: (x x^T [users, d, d], (1 + alpha) x at its items [users, rows, d])."""
  num_users = tf.shape(users)[0]
  num_rows = tf.cast(num_rows, tf.int32)
  gram = tf.einsum('ud,ue->ude', users, users)
  segments = tf.cast(items, tf.int32) + tf.range(num_users)[:, None] * num_rows  # [users, n]
  values = (1.0 + config.alpha) * weights[..., None] * users[:, None, :]  # [users, n, d]
  sums = tf.math.unsorted_segment_sum(tf.reshape(values, [-1, tf.shape(users)[1]]), tf.reshape(segments, [-1]),
                                      num_users * num_rows)
  return gram, tf.reshape(sums, [num_users, num_rows, -1])


def solve_items(gram: tf.Tensor, sums: tf.Tensor, regularization: float) -> tf.Tensor:
  """Every item's embedding [rows, d] from the users' summed statistics: sums_i (G + lambda I)^-1.

  `gram` may carry noise: it is symmetrised and its eigenvalues floored at 0
  before the ridge term (post-processing, free under DP), so the solve is
  always well posed. Row 0 (unknown items) is 0.
  """
  symmetric = (gram + tf.transpose(gram)) / 2.0
  eigenvalues, vectors = tf.linalg.eigh(symmetric)
  inverse = tf.matmul(vectors * (1.0 / (tf.maximum(eigenvalues, 0.0) + regularization))[None, :], vectors,
                      transpose_b=True)
  table = tf.matmul(sums, inverse)
  return tf.concat([tf.zeros_like(table[:1]), table[1:]], axis=0)


def example_losses(scores: tf.Tensor, labels: tf.Tensor, config: AlsConfig) -> tf.Tensor:
  """The ALS loss of each example: c (p - s)^2 with p = the label (1 rated, 0 sampled negative), c = 1 + alpha p."""
  return (1.0 + config.alpha * labels) * tf.square(labels - scores)
