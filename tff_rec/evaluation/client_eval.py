"""What one client computes to evaluate a model on its own data (plain TF).

The client reconstructs its local parameters from its support data with the
global ones frozen (Federated Reconstruction's evaluation, Singhal et al. 2021),
then scores its held-out queries and returns metric *sums and counts*, which a
server can add up across clients; `finalize` turns totals into metrics.

Ranking (LOO-99, He et al. WWW 2017): a query is the held-out item followed by
its 99 negatives. rank = number of negatives scoring >= the held-out item, so
ties never favour it (a constant model scores HR@K = 0). HR@K = [rank < K],
NDCG@K = [rank < K] / log2(rank + 2).
"""

from __future__ import annotations

import collections
import math

import tensorflow as tf

from tff_rec.models.mf import ModelBundle, scores

RANKING_KS = (5, 10, 20)
RANKING, RATING = 'ranking', 'rating'


def local_variables(bundle: ModelBundle) -> list[tf.Variable]:
  return [v for layer in bundle.local_layers for v in layer.trainable_variables]


def reconstruct(bundle: ModelBundle, support: tf.data.Dataset, loss: tf.keras.losses.Loss, *,
                learning_rate: float, epochs: int) -> None:
  """Resets the local variables to their initial zeros, then runs plain SGD on `support`.

  The same update as Fed Recon's reconstruction stage with
  `tff.learning.optimizers.build_sgdm(learning_rate)`: w <- w - lr * grad of
  the batch-mean loss, global variables frozen.
  """
  variables = local_variables(bundle)
  for v in variables:
    v.assign(tf.zeros_like(v))

  def step(state, batch):
    x, y = batch
    with tf.GradientTape() as tape:
      batch_loss = loss(y, bundle.model(x, training=True))
    for v, g in zip(variables, tape.gradient(batch_loss, variables)):
      v.assign_sub(learning_rate * g)
    return state + 1

  support.repeat(epochs).reduce(tf.constant(0), step)


def ranking_sums(candidate_scores: tf.Tensor) -> collections.OrderedDict:
  """Metric sums of one LOO query; `candidate_scores[0]` is the held-out item."""
  rank = tf.reduce_sum(tf.cast(candidate_scores[1:] >= candidate_scores[0], tf.float32))
  sums = collections.OrderedDict(count=tf.constant(1.0))
  for k in RANKING_KS:
    hit = tf.cast(rank < k, tf.float32)
    sums[f'hits_at_{k}'] = hit
    sums[f'ndcg_at_{k}'] = hit * math.log(2.0) / tf.math.log(rank + 2.0)
  return sums


def zero_sums(kind: str) -> collections.OrderedDict:
  if kind == RANKING:
    keys = ['count'] + [f'{m}_at_{k}' for k in RANKING_KS for m in ('hits', 'ndcg')]
  else:
    keys = ['count', 'squared_error', 'absolute_error']
  return collections.OrderedDict((key, tf.constant(0.0)) for key in keys)


def query_sums(bundle: ModelBundle, queries: tf.data.Dataset, kind: str) -> collections.OrderedDict:
  """Adds up metric sums over a client's queries with the current local variables."""
  def add(totals, batch):
    x, y = batch
    predicted = scores(bundle.model(x, training=False))
    if kind == RANKING:
      new = ranking_sums(predicted)
    else:
      error = predicted - y[:, 0]
      new = collections.OrderedDict(count=tf.cast(tf.size(error), tf.float32),
                                    squared_error=tf.reduce_sum(tf.square(error)),
                                    absolute_error=tf.reduce_sum(tf.abs(error)))
    return collections.OrderedDict((k, totals[k] + new[k]) for k in totals)

  return queries.reduce(zero_sums(kind), add)


def evaluate_client(bundle: ModelBundle, support: tf.data.Dataset, queries: tf.data.Dataset, kind: str,
                    loss: tf.keras.losses.Loss, *, learning_rate: float, epochs: int) -> collections.OrderedDict:
  """Reconstruct on `support`, then the metric sums over `queries`."""
  reconstruct(bundle, support, loss, learning_rate=learning_rate, epochs=epochs)
  return query_sums(bundle, queries, kind)


def finalize(totals: dict, kind: str, prefix: str = '') -> dict[str, float]:
  """Turns summed totals (over any set of clients) into metrics."""
  count = float(totals['count'])
  if count == 0:
    return {f'{prefix}count': 0.0}
  if kind == RANKING:
    metrics = {}
    for k in RANKING_KS:
      metrics[f'{prefix}hr@{k}'] = float(totals[f'hits_at_{k}']) / count
      metrics[f'{prefix}ndcg@{k}'] = float(totals[f'ndcg_at_{k}']) / count
  else:
    metrics = {f'{prefix}rmse': math.sqrt(float(totals['squared_error']) / count),
               f'{prefix}mae': float(totals['absolute_error']) / count}
  metrics[f'{prefix}count'] = count
  return metrics
