"""Federated (private) implicit ALS: `--algorithm=fed_als`, cohort-vectorised like `vectorized.VectorizedEngine`.

Each round every sampled user solves its embedding exactly against the
current item table (`models.als.solve_users`, on the device: the user's
embedding and ratings never leave it) and uploads only its ALS statistics
(`models.als.user_statistics`: x x^T and (1 + alpha) x at its rated items).
The server averages them, without or with DP (the same tensorflow-privacy
queries as DP Federated Reconstruction: each user's statistics clipped to an
L2 norm as one record, Gaussian noise on the sum, `tff_rec.privacy.dp`), and
solves every item's ridge regression (`models.als.solve_items`). With DP this
is private ALS (Chien et al., ICML 2021) with user-level clipping; with every
user in every round (`--client_sampling_rate=1`) a run is `rounds` Gaussian
mechanisms, which `dp.PrivacyLedger` accounts as it does any Poisson sampler.

Spending the budget on a few full solves rather than many noisy gradient steps
is what makes it better under DP on MovieLens-100K (docs/privacy.md). With
`AlsConfig.item_prior` the item step centres each item on what its public
genres and release year predict (`models.als.solve_items`), fitted on the
server from the released statistics. The model is the
MF model with a zero item bias, scored x . y_i, so evaluation, the
membership-inference audit and export share the MF code; only the user's
reconstruction (exact, `AlsEngine._reconstruct`) and the loss differ.
Runs on this engine only (no TFF process is built for it).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf

from tff_rec.federated.fed_recon import ReconConfig, RoundOutput
from tff_rec.federated.vectorized import VectorizedEngine
from tff_rec.models import als, mf, two_tower
from tff_rec.preprocessing import Examples


def item_prior(task, config: als.AlsConfig) -> np.ndarray | None:
  """The item prior's design matrix from the task's public catalogue (genres, year bucket), if `config` has one."""
  if not config.item_prior:
    return None
  catalogue = two_tower.item_features(task.db_path, task.vocabulary)
  return als.prior_features(catalogue.genres, catalogue.year_buckets, two_tower.NUM_YEAR_BUCKETS)


class AlsEngine(VectorizedEngine):
  """ALS rounds with the interface of the other engines (initialize, next, evaluate, global_weights).

  Args:
    task: An implicit-feedback MF `tasks.RecommendationTask`.
    config: ALS's alpha, regularization and item prior (whose features,
      genres and year bucket, are read from the task's catalogue).
    clients: The expected cohort size: the mean of the statistics is over it
      (as DP's normalised query), so the item step's ridge term is
      regularization / clients in mean units.
    dp_query: A tensorflow-privacy sum query (`dp.dp_query`) or None.
    seed: Seeds the DP noise per round.
  """

  def __init__(self, task, config: als.AlsConfig, *, clients: float, dp_query: Any = None, seed: int = 0):
    config.validate()
    if task.model_config.objective != mf.IMPLICIT:
      raise ValueError('--algorithm=fed_als trains implicit feedback: use --objective=implicit')
    super().__init__(task, ReconConfig(server_optimizer='sgd', split_dataset=False), eval_learning_rate=1.0,
                     eval_epochs=1, dp_query=dp_query, seed=seed)
    self.als, self.clients = config, float(clients)
    prior = item_prior(task, config)
    self.prior = None if prior is None else tf.constant(prior)

  def next(self, state, examples: list[Examples]) -> RoundOutput:
    output = super().next(state, examples)
    rows, dim = state['weights'][0].shape
    # What a client uploads is its statistics, not a model delta: x x^T and the [items, d] table (float32).
    output.metrics['communication']['upload_bytes_per_client'] = np.float64(4 * (dim * dim + rows * dim))
    return output

  def _reconstruct(self, weights, items, labels, mask, *, learning_rate: float, epochs: int):
    """Every user's exact ALS embedding from its rated examples (the SGD settings do not apply)."""
    del learning_rate, epochs
    return [als.reconstruct(weights[0], items, labels, mask, self.als)]

  def _batch_losses(self, user, q, b, mu, labels, mask):
    """Each user's batch-mean ALS loss on its examples (rated: 1, sampled negatives: 0) and batch sizes."""
    del mu
    scores = mf.predict(user[0], q, b, None, None)[..., 0]
    counts = tf.reduce_sum(mask, axis=1)
    return tf.math.divide_no_nan(tf.reduce_sum(als.example_losses(scores, labels, self.als) * mask, 1), counts), counts

  def _client_fn(self, weights, items, labels, mask):
    """Every client's statistics (zeroed if not finite), its weight (1, or 0 if empty or not finite), metrics."""
    embedding, bias = weights[0], weights[1]
    users = tf.shape(items)[0]
    flat_items = tf.reshape(items, [users, -1])
    flat_labels, flat_mask = tf.reshape(labels, [users, -1]), tf.reshape(mask, [users, -1])
    positives = als.positive_weights(flat_labels, flat_mask)
    x = als.solve_users(embedding, flat_items, positives, self.als)
    gram, sums = als.user_statistics(x, flat_items, positives, tf.shape(embedding)[0], self.als)
    finite = tf.reduce_all(tf.math.is_finite(x), axis=1)
    gram = tf.where(finite[:, None, None], gram, 0.0)
    sums = tf.where(finite[:, None, None], sums, 0.0)
    took_part = tf.logical_and(finite, tf.reduce_sum(positives, axis=1) > 0)
    losses, examples = self._batch_losses([x[:, None, :]], tf.gather(embedding, flat_items),
                                          tf.gather(bias, flat_items), None, flat_labels, flat_mask)
    nonempty = tf.cast(examples > 0, tf.float32)
    metrics = collections.OrderedDict(
        client_work=collections.OrderedDict(
            train=collections.OrderedDict(
                loss=tf.math.divide_no_nan(tf.reduce_sum(losses * nonempty), tf.reduce_sum(nonempty)),
                num_examples=tf.reduce_sum(examples),
                non_finite_clients=tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float32))),
            empty_clients=tf.reduce_sum(tf.cast(examples == 0, tf.int32))))
    return (gram, sums), tf.cast(took_part, tf.float32), metrics

  def _server_fn(self, weights, optimizer_state, update):
    """The item step on the (noised) mean statistics; a non-finite mean is rejected, as the other engines do."""
    gram, sums = update
    finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(gram)), tf.reduce_all(tf.math.is_finite(sums)))
    table = tf.cond(finite, lambda: als.solve_items(gram, sums, self.als.regularization / self.clients, self.prior,
                                                    self.als.prior_regularization),
                    lambda: weights[0])
    return (table, weights[1]), optimizer_state, tf.cast(tf.logical_not(finite), tf.int32)
