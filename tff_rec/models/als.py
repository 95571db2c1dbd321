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

With `item_prior`, each item's ridge is centred on a linear function W f_i of
its public catalogue features (genres, release-year bucket: `prior_features`)
instead of 0, W fitted jointly (`solve_items`): the hierarchical prior of
regression-based latent factors (Agarwal & Chen, "Regression-based Latent
Factor Models", KDD 2009). Items with few raters, whose noised statistics are
mostly noise under DP, fall back on what their genre and year predict. It is
computed from the released statistics and public metadata only: post-processing,
free under DP.

Written by hand: no library in the stack has ALS with per-user statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AlsConfig:
  alpha: float = 5.0  # Confidence of a rated item over an unrated one, minus 1.
  regularization: float = 10.0  # lambda of the user and item ridge regressions (in units of one user's statistics).
  item_prior: bool = False  # Centre each item's ridge on W f_i, f_i its public features (`solve_items`).
  prior_regularization: float = 3.0  # Ridge on the prior's coefficients W, in units of lambda.

  def validate(self) -> None:
    if self.alpha <= 0 or self.regularization <= 0:
      raise ValueError(f'--als_alpha and --als_regularization must be > 0, got {self.alpha}, {self.regularization}')
    if self.prior_regularization <= 0:
      raise ValueError(f'--als_prior_regularization must be > 0, got {self.prior_regularization}')


def positive_weights(labels: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """1 for each (unpadded) rated example, 0 for sampled negatives and padding; same shape."""
  return mask * tf.cast(labels > 0.5, mask.dtype)


def solve_users(item_embedding: tf.Tensor, items: tf.Tensor, weights: tf.Tensor, config: AlsConfig) -> tf.Tensor:
  """Every user's exact embedding [users, d] given the items.

  x_u = (Y^T Y + alpha sum_n w_n y_n y_n^T + lambda I)^-1 sum_n w_n (1 + alpha) y_n,
  over the user's examples n (items [users, n], weights [users, n]: 1 for a
  rated item; an item rated twice counts twice). A user with none gets 0.
  """
  return spd_solve(*normal_equations(item_embedding, items, weights, config))


def normal_equations(item_embedding: tf.Tensor, items: tf.Tensor, weights: tf.Tensor,
                     config: AlsConfig) -> tuple[tf.Tensor, tf.Tensor]:
  """`solve_users`' system a [users, d, d] and b [users, d]: b = sum_n (1 + alpha) w_n y_n, so the score of an
  item v is sum_n (1 + alpha) w_n <a^-1 v, y_n>, each example's exact share (`recommend`'s explanations)."""
  y = tf.gather(item_embedding, items)  # [users, n, d]
  d = item_embedding.shape[1]
  weighted = tf.expand_dims(weights, -1) * y
  gramian = tf.matmul(item_embedding, item_embedding, transpose_a=True)
  a = (tf.expand_dims(gramian + config.regularization * tf.eye(d, dtype=item_embedding.dtype), 0)
       + config.alpha * tf.matmul(weighted, y, transpose_a=True))  # [users, d, d]
  b = (1.0 + config.alpha) * tf.reduce_sum(weighted, axis=1)  # [users, d]
  return a, b


def spd_solve(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """x with a x = b for symmetric positive definite a [users, d, d] (static d), b [users, d].

  Cholesky a = L L^T, then two triangular solves, unrolled over the d columns in plain elementwise ops and
  reductions: the exact solve, and one that TFLite's builtin ops express (the on-device model,
  `tff_rec.serving.tflite`; TFLite has no matrix solve). Written by hand for that reason.
  """
  d = a.shape[-1]
  columns = []  # L's columns, each [users, d] (zeros above the diagonal).
  for j in range(d):
    done = tf.stack(columns, axis=-1) if columns else None  # [users, d, j]
    row_j = done[:, j, :] if columns else None  # [users, j]: L[j, :j]
    residual = a[:, :, j] - (tf.reduce_sum(done * tf.expand_dims(row_j, 1), -1) if columns else 0.0)  # [users, d]
    pivot = tf.sqrt(residual[:, j:j + 1])
    below = tf.cast(tf.range(d) >= j, a.dtype)
    columns.append(residual / pivot * below)
  lower = tf.stack(columns, axis=-1)  # [users, d, d]
  y = []  # Forward: L y = b.
  for i in range(d):
    partial = tf.reduce_sum(lower[:, i, :i] * tf.stack(y, -1), -1) if y else 0.0
    y.append((b[:, i] - partial) / lower[:, i, i])
  y = tf.stack(y, -1)
  x = [None] * d  # Backward: L^T x = y.
  for i in reversed(range(d)):
    later = tf.stack(x[i + 1:], -1) if i + 1 < d else None
    partial = tf.reduce_sum(lower[:, i + 1:, i] * later, -1) if later is not None else 0.0
    x[i] = (y[:, i] - partial) / lower[:, i, i]
  return tf.stack(x, -1)


def reconstruct(item_embedding: tf.Tensor, items: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
                config: AlsConfig, system: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
  """`solve_users` on padded [users, batches, B] support batches (as `reconstruction.reconstruct` takes them):
  the rated, unpadded examples count. Returns [users, 1, d], the shape of MF's local user; with `system`, also
  the solved system's matrix a [users, d, d] (`normal_equations`), which `recommend`'s explanations reuse."""
  users = tf.shape(items)[0]
  positives = positive_weights(tf.reshape(labels, [users, -1]), tf.reshape(mask, [users, -1]))
  a, b = normal_equations(item_embedding, tf.reshape(items, [users, -1]), positives, config)
  user = spd_solve(a, b)[:, None, :]
  return (user, a) if system else user


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


def prior_features(genres: np.ndarray, year_buckets: np.ndarray, num_buckets: int) -> np.ndarray:
  """The item prior's design matrix [rows, dense + num_buckets]: the dense features (genre multi-hot[, title
  vector]), one-hot year bucket; row 0 zero."""
  features = np.concatenate([genres, np.eye(num_buckets, dtype=np.float32)[year_buckets]], axis=1)
  features[0] = 0.0
  return features.astype(np.float32)


def solve_items(gram: tf.Tensor, sums: tf.Tensor, regularization: float, features: tf.Tensor | None = None,
                prior_regularization: float = 3.0) -> tf.Tensor:
  """Every item's embedding [rows, d] from the users' summed statistics.

  Without `features`: y_i = (G + lambda I)^-1 s_i, the ridge regression
  centred on 0. With `features` F [rows, p] (`prior_features`): the minimiser
  over Y and W of
    sum_i (y_i^T G y_i - 2 s_i^T y_i + lambda |y_i - W^T f_i|^2) + mu lambda |W|^2,
  mu = `prior_regularization`, whose stationary point is
    y_i = (G + lambda I)^-1 (s_i + lambda W^T f_i),  W = (F^T F + mu I)^-1 F^T Y.
  Solved exactly (written by hand): in the eigenbasis G = V diag(g) V^T each
  column k of Y V decouples, with c_k = lambda / (g_k + lambda) and
    (Y V)_k = (S V)_k / (g_k + lambda) + c_k F ((1 - c_k) F^T F + mu I)^-1 F^T (S V)_k / (g_k + lambda)
  (Woodbury on (I - c_k F (F^T F + mu I)^-1 F^T)^-1; the p x p matrix is
  positive definite as c_k <= 1 < 1 + mu).

  `gram` may carry noise: it is symmetrised and its eigenvalues floored at 0
  before the ridge term (post-processing, free under DP), so the solve is
  always well posed. Row 0 (unknown items) is 0.
  """
  symmetric = (gram + tf.transpose(gram)) / 2.0
  eigenvalues, vectors = tf.linalg.eigh(symmetric)
  diagonal = tf.maximum(eigenvalues, 0.0) + regularization  # [d]
  rotated = tf.matmul(sums, vectors)  # S V [rows, d]
  if features is not None:
    features = tf.convert_to_tensor(features, sums.dtype)
    shrink = regularization / diagonal  # c_k [d]
    cross = tf.matmul(features, features, transpose_a=True)  # F^T F [p, p]
    systems = ((1.0 - shrink)[:, None, None] * cross[None]
               + prior_regularization * tf.eye(tf.shape(cross)[0], dtype=sums.dtype)[None])  # [d, p, p]
    coefficients = tf.linalg.solve(systems, tf.transpose(tf.matmul(features, rotated, transpose_a=True))[..., None])
    rotated += tf.matmul(features, shrink[:, None] * coefficients[..., 0], transpose_b=True)
  table = tf.matmul(rotated / diagonal[None, :], vectors, transpose_b=True)
  return tf.concat([tf.zeros_like(table[:1]), table[1:]], axis=0)


def example_losses(scores: tf.Tensor, labels: tf.Tensor, config: AlsConfig) -> tf.Tensor:
  """The ALS loss of each example: c (p - s)^2 with p = the label (1 rated, 0 sampled negative), c = 1 + alpha p."""
  return (1.0 + config.alpha * labels) * tf.square(labels - scores)
