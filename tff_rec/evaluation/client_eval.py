"""What one client computes to evaluate a model on its own data (plain TF).

The client reconstructs its local parameters from its support data with the
global ones frozen (Federated Reconstruction's evaluation, Singhal et al. 2021),
then scores its held-out queries and returns metric *sums and counts*, which a
server can add up across clients; `finalize` turns totals into metrics.

Ranking (LOO-99, He et al. WWW 2017): a query is the held-out item followed by
its 99 negatives. rank = number of negatives scoring >= the held-out item, so
ties never favour it (a constant model scores HR@K = 0). HR@K = [rank < K],
NDCG@K = [rank < K] / log2(rank + 2). Full-catalogue Recall@K and NDCG@K
(`catalogue_sums`) rank the held-out items among every item the user did not
train on. The metric maths takes leading (client, query) dimensions, so the
per-client TFF evaluation and the shard process's batched one share it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tff_rec.models.mf import ModelBundle

RANKING_KS = (5, 10, 20)
CATALOGUE_KS = (10, 20)
RANKING, RATING = 'ranking', 'rating'
GROUP_K = 10  # Groups report HR@10 and NDCG@10 only: tens of groups x every K would bury the results.
EXPOSURE_K = 10  # ER@10: the share of benign users with a target item in their top 10 (`tff_rec.attacks`).


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


def ranking_sums(candidate_scores: tf.Tensor, mask: tf.Tensor | None = None,
                 groups: tf.Tensor | None = None) -> collections.OrderedDict:
  """Metric sums of LOO queries `candidate_scores` [..., 1 + negatives]; `[..., 0]` is the held-out item.

  Leading dimensions (clients, queries) are summed over; `mask` [...] (1 = a
  real query) drops padding. With `groups` [..., G] (`_group_sums`), also the
  count, HR@10 and NDCG@10 sums of each group's queries, and its users.
  """
  rank = tf.reduce_sum(tf.cast(candidate_scores[..., 1:] >= candidate_scores[..., :1], tf.float32), axis=-1)
  mask = tf.ones_like(rank) if mask is None else tf.cast(mask, tf.float32)
  sums = collections.OrderedDict(count=tf.reduce_sum(mask))
  per_query = {'count': mask}
  for k in RANKING_KS:
    hit = tf.cast(rank < k, tf.float32) * mask
    gain = hit * math.log(2.0) / tf.math.log(rank + 2.0)
    sums[f'hits_at_{k}'], sums[f'ndcg_at_{k}'] = tf.reduce_sum(hit), tf.reduce_sum(gain)
    if k == GROUP_K:
      per_query[f'hits_at_{k}'], per_query[f'ndcg_at_{k}'] = hit, gain
  if groups is not None:
    sums.update(_group_sums(per_query, mask, groups))
  return sums


def rating_sums(predicted: tf.Tensor, ratings: tf.Tensor, mask: tf.Tensor | None = None,
                groups: tf.Tensor | None = None) -> collections.OrderedDict:
  """Squared and absolute error sums of `predicted` vs `ratings` (same shape; `mask` drops padding); with
  `groups` [..., G], also each group's (`_group_sums`)."""
  error = predicted - ratings
  mask = tf.ones_like(error) if mask is None else tf.cast(mask, error.dtype)
  sums = collections.OrderedDict(count=tf.reduce_sum(mask), squared_error=tf.reduce_sum(mask * tf.square(error)),
                                 absolute_error=tf.reduce_sum(mask * tf.abs(error)))
  if groups is not None:
    sums.update(_group_sums({'count': mask, 'squared_error': mask * tf.square(error),
                             'absolute_error': mask * tf.abs(error)}, mask, groups))
  return sums


def _group_sums(per_query: dict[str, tf.Tensor], mask: tf.Tensor, groups: tf.Tensor) -> dict[str, tf.Tensor]:
  """Each group's sums [G] of per-query values [users, queries] (or [queries]: one user), and its users.

  `groups` [..., G] is 1 where the query belongs to the group (`tff_rec.evaluation.groups`); a user counts in a
  group if one of its real queries does.
  """
  groups = tf.cast(groups, tf.float32) * tf.expand_dims(mask, -1)
  width = groups.shape[-1] if groups.shape[-1] is not None else tf.shape(groups)[-1]  # Static where known (TFF).
  out = {f'group_{key}': tf.reduce_sum(tf.reshape(tf.expand_dims(value, -1) * groups, [-1, width]), 0)
         for key, value in per_query.items()}
  out['group_users'] = tf.reduce_sum(tf.reshape(tf.reduce_max(groups, axis=-2), [-1, width]), 0)
  return out


def catalogue_sums(item_scores: tf.Tensor, seen: tf.Tensor, relevant: tf.Tensor,
                   targets: tf.Tensor | None = None) -> collections.OrderedDict:
  """Full-catalogue Recall@K and NDCG@K sums over users[, and the target items' exposure].

  Args:
    item_scores: [users, items + 1] scores of every item index (0 = unknown).
    seen: [users, items + 1] bool, the user's training items (excluded, as is
      index 0).
    relevant: [users, items + 1] bool, the user's held-out items.
    targets: [users, T] item indices (`tff_rec.attacks`' target items): also
      `target_exposed`, the users with a target among their top EXPOSURE_K
      unseen items (ranked as a relevant item is), and `exposure_users`; ER@K
      (Rong et al., ICDE 2022) is their ratio.

  A relevant item's rank counts the unseen items (other relevant ones
  included) scoring >= it, so ties never favour it. Recall@K = hits / |relevant|
  and NDCG@K = DCG / ideal DCG (Krichene & Rendle, "On Sampled Metrics for Item
  Recommendation", KDD 2020, argue for exactly this over sampled metrics).
  Users with no relevant item are not counted.
  """
  candidate = tf.logical_not(seen) & (tf.range(tf.shape(item_scores)[1]) > 0)[None, :]
  relevant = relevant & candidate
  # rank[u, i] = #{j candidate, j != i: s[u, j] >= s[u, i]}; only read for relevant i (a few per user).
  rel_users, rel_items = tf.unstack(tf.cast(tf.where(relevant), tf.int32), axis=1)
  rel_scores = tf.gather_nd(item_scores, tf.stack([rel_users, rel_items], 1))
  user_scores = tf.gather(item_scores, rel_users)
  user_candidates = tf.gather(candidate, rel_users)
  at_least = tf.reduce_sum(tf.cast(user_candidates & (user_scores >= rel_scores[:, None]), tf.float32), 1)
  rank = at_least - 1.0  # The item itself.
  num_users = tf.shape(item_scores)[0]
  per_user = tf.math.unsorted_segment_sum(tf.ones_like(rank), rel_users, num_users)
  has_relevant = tf.cast(per_user > 0, tf.float32)
  sums = collections.OrderedDict(catalogue_users=tf.reduce_sum(has_relevant))
  if targets is not None:
    target_scores = tf.gather(item_scores, targets, batch_dims=1)  # [U, T]
    above = tf.reduce_sum(tf.cast(candidate[:, None, :] & (item_scores[:, None, :] >= target_scores[..., None]),
                                  tf.float32), -1) - 1.0  # Unseen items scoring >= the target, the target aside.
    exposed = tf.gather(candidate, targets, batch_dims=1) & (above < EXPOSURE_K)
    sums['target_exposed'] = tf.reduce_sum(tf.cast(tf.reduce_any(exposed, axis=1), tf.float32))
    sums['exposure_users'] = tf.cast(num_users, tf.float32)
  for k in CATALOGUE_KS:
    hit = tf.cast(rank < k, tf.float32)
    hits = tf.math.unsorted_segment_sum(hit, rel_users, num_users)
    dcg = tf.math.unsorted_segment_sum(hit * math.log(2.0) / tf.math.log(rank + 2.0), rel_users, num_users)
    ideal_positions = tf.range(k, dtype=tf.float32)
    ideal = tf.reduce_sum(tf.cast(ideal_positions[None, :] < per_user[:, None], tf.float32) * math.log(2.0) /
                          tf.math.log(ideal_positions[None, :] + 2.0), 1)
    sums[f'recall_at_{k}'] = tf.reduce_sum(tf.math.divide_no_nan(hits, per_user))
    sums[f'catalogue_ndcg_at_{k}'] = tf.reduce_sum(tf.math.divide_no_nan(dcg, ideal))
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
    predicted = bundle.score_fn(bundle.model(x, training=False))
    new = ranking_sums(predicted) if kind == RANKING else rating_sums(predicted, y[:, 0])
    return collections.OrderedDict((k, totals[k] + new[k]) for k in totals)

  return queries.reduce(zero_sums(kind), add)


def client_catalogue_sums(bundle: ModelBundle, num_items: int, seen_items: tf.Tensor,
                          relevant_items: tf.Tensor) -> collections.OrderedDict:
  """`catalogue_sums` of one client, scoring every item with its reconstructed user."""
  all_scores = bundle.score_fn(bundle.model(tf.range(num_items + 1, dtype=tf.int64), training=False))

  def as_mask(indices):
    return tf.reduce_any(tf.equal(tf.range(num_items + 1, dtype=tf.int64)[:, None], indices[None, :]), axis=1)
  return catalogue_sums(all_scores[None, :], as_mask(seen_items)[None, :], as_mask(relevant_items)[None, :])


def evaluate_client(bundle: ModelBundle, data: Mapping[str, Any], kind: str, loss: tf.keras.losses.Loss, *,
                    num_items: int, learning_rate: float, epochs: int) -> collections.OrderedDict:
  """Reconstruct on `data['support']`, then the metric sums over `data['queries']` and the catalogue.

  `data` is one client's `OrderedDict(support, queries, seen, relevant)`:
  datasets of (item indices, labels) batches, and item indices [n] of its
  training items (excluded from the catalogue ranking) and held-out items.
  """
  reconstruct(bundle, data['support'], loss, learning_rate=learning_rate, epochs=epochs)
  sums = query_sums(bundle, data['queries'], kind)
  sums.update(client_catalogue_sums(bundle, num_items, data['seen'], data['relevant']))
  return sums


def finalize(totals: dict, kind: str, prefix: str = '', group_names: Sequence[str] = ()) -> dict[str, float]:
  """Turns summed totals (over any set of clients) into metrics; with `group_names` (the columns of the totals'
  `group_*` sums), also each group's: f'{prefix}{name}/hr@10' (rating: rmse, mae) and its users and count."""
  count = float(totals['count'])
  if count == 0:
    return {f'{prefix}count': 0.0}
  metrics = _metrics(totals, kind, prefix)
  users = float(totals.get('catalogue_users', 0.0))
  for k in CATALOGUE_KS:
    if users:
      metrics[f'{prefix}recall@{k}'] = float(totals[f'recall_at_{k}']) / users
      metrics[f'{prefix}catalogue_ndcg@{k}'] = float(totals[f'catalogue_ndcg_at_{k}']) / users
  if float(totals.get('exposure_users', 0.0)):
    metrics[f'{prefix}er@{EXPOSURE_K}'] = float(totals['target_exposed']) / float(totals['exposure_users'])
  metrics[f'{prefix}count'] = count
  if group_names and 'group_count' in totals:
    for g, name in enumerate(group_names):
      group = {key[len('group_'):]: np.asarray(value)[g] for key, value in totals.items() if key.startswith('group_')}
      if group['count'] > 0:
        metrics.update(_metrics(group, kind, f'{prefix}{name}/', ks=(GROUP_K,)))
      metrics[f'{prefix}{name}/users'] = float(group['users'])
      metrics[f'{prefix}{name}/count'] = float(group['count'])
  return metrics


def _metrics(totals: dict, kind: str, prefix: str, ks: Sequence[int] = RANKING_KS) -> dict[str, float]:
  count = float(totals['count'])
  if kind == RANKING:
    metrics = {}
    for k in ks:
      metrics[f'{prefix}hr@{k}'] = float(totals[f'hits_at_{k}']) / count
      metrics[f'{prefix}ndcg@{k}'] = float(totals[f'ndcg_at_{k}']) / count
    return metrics
  return {f'{prefix}rmse': math.sqrt(float(totals['squared_error']) / count),
          f'{prefix}mae': float(totals['absolute_error']) / count}
