"""The sequence two-tower's client maths for a shard of users, batched over them (plain TF, no TFF).

FedAvg (McMahan et al., AISTATS 2017) of `tff_rec.models.sequence`: every
weight is global, so a user's client work is `local_epochs` SGD steps from the
broadcast weights on its own window of history (each step: the next-item loss
at every position, averaged), and its update is `initial - final`. The users of
a shard train side by side, each on its own copy of the weights (a leading user
axis), and of the item embedding only the rows its window and negatives touch
(as `shard_math` does for MF), so a user's update is exactly what it would
compute alone (tested). Each update goes to the aggregator with its weight,
as every algorithm's does (`shard_math._user_results`).
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from tff_rec.federated import shard_math
from tff_rec.models import sequence, two_tower


def _features(features: two_tower.ItemFeatures):
  return tf.constant(features.dense), tf.constant(features.year_buckets)


def user_candidates(weights, features: two_tower.ItemFeatures, rows: tf.Tensor, id_rows: tf.Tensor) -> tf.Tensor:
  """The candidate tower of each user's rows [U, K] from its id rows [U, K, d] -> [U, K, d]."""
  dense, years = _features(features)
  return sequence.candidate_embeddings(weights, id_rows, tf.gather(dense, rows), tf.gather(years, rows))


def shard_losses(weights, id_rows, data, config: sequence.SequenceConfig, features: two_tower.ItemFeatures,
                 seeds=None) -> tuple[tf.Tensor, tf.Tensor]:
  """Each user's summed next-item loss and predictions [U] (`sequence.next_item_losses`) on its window, its item
  rows given as `id_rows` [U, K, d] (`weights[sequence.ITEM]` is not read)."""
  candidates = user_candidates(weights, features, data['rows'], id_rows)
  inputs = tf.gather(candidates, data['history'], batch_dims=1)
  states = sequence.query_states(weights, config, inputs, data['present'], seeds)
  return sequence.next_item_losses(states, candidates, data['targets'], data['target_mask'], data['positive'],
                                    data['candidate_mask'])


def user_updates(weights, shard, settings: shard_math.ClientSettings, config: sequence.SequenceConfig,
                 features: two_tower.ItemFeatures):
  """Every user's update (the item rows it touched; every other weight whole) and the shard's training sums."""
  rows = shard['rows']
  users = tf.shape(rows)[0]
  start = [tf.gather(weights[sequence.ITEM], rows)] + [
      tf.tile(w[None], tf.concat([[users], tf.ones([tf.rank(w)], tf.int32)], 0)) for w in weights[1:]]
  predictions = tf.reduce_sum(shard['target_mask'], axis=1)

  def step(s, local, loss_sum):
    with tf.GradientTape() as tape:
      tape.watch(local)
      seeds = None if config.dropout == 0.0 else shard['seeds'] + tf.constant([0, 1000], tf.int64) * tf.cast(
          s, tf.int64)
      totals, counts = shard_losses(local, local[0], shard, config, features, seeds)
      mean = tf.math.divide_no_nan(totals, counts)  # Each user's mean over its positions.
      objective = tf.reduce_sum(mean)
    grads = tape.gradient(objective, local)
    local = [v - settings.client_learning_rate * tf.convert_to_tensor(g) for v, g in zip(local, grads)]
    return s + 1, local, loss_sum + mean

  _, final, loss_sum = tf.while_loop(lambda s, *_: s < settings.local_epochs, step,
                                     (tf.constant(0), start, tf.zeros([users])))
  deltas = [a - b for a, b in zip(start, final)]
  all_rows = [tf.tile(tf.range(tf.shape(w, out_type=tf.int64)[0])[None], [users, 1]) for w in weights[1:]]
  has_data = tf.cast(predictions > 0, tf.float32)
  # `_user_results` counts a user's examples from its mask: its predictions.
  view = {'mask': shard['target_mask'][:, None, :], 'keys': shard['keys']}
  return shard_math._user_results(deltas, [rows] + all_rows, loss_sum * has_data,  # pylint: disable=protected-access
                                  has_data * float(settings.local_epochs), view, settings)


def catalogue_table(weights, features: two_tower.ItemFeatures) -> tf.Tensor:
  """Every item's candidate embedding [items + 1, d] from shared (expanded) weights."""
  dense, years = _features(features)
  table = weights[sequence.ITEM]  # [1, rows, d]
  return sequence.candidate_embeddings(weights, table, dense[None], years[None])[0]


def user_queries(weights, config: sequence.SequenceConfig, table: tf.Tensor, history: tf.Tensor,
                 present: tf.Tensor) -> tf.Tensor:
  """Each user's query [U, d]: the state at the last position of its history [U, L] (catalogue rows)."""
  states = sequence.query_states(weights, config, tf.gather(table, history), present)
  return states[:, -1, :]


def eval_arrays(clients, config: sequence.SequenceConfig, num_items: int) -> collections.OrderedDict:
  """`tasks.EvalClients` (or a shard of them) -> the tensors `evaluation_sums` takes: each user's history (the
  support in time order: `seen`) instead of support batches."""
  data = shard_math.eval_arrays(clients, 1, num_items)
  for key in ('items', 'labels', 'mask'):
    del data[key]
  data['history'], data['present'] = sequence.pad_histories(clients.seen, config.max_history)
  data.move_to_end('present', last=False)
  data.move_to_end('history', last=False)  # First: the order of `process.eval_type`.
  return data


def evaluation_sums(weights, data, config: sequence.SequenceConfig,
                    features: two_tower.ItemFeatures) -> collections.OrderedDict:
  """The metric sums of `client_eval` over a shard of users (`eval_arrays`): each user's query from its history,
  scored against the candidate tower over the catalogue."""
  weights = sequence.expand(weights)
  table = catalogue_table(weights, features)
  query = user_queries(weights, config, table, data['history'], data['present'])[:, None, :]
  return shard_math.query_sums(query, table, data)


def support_losses(weights, data, config: sequence.SequenceConfig, features: two_tower.ItemFeatures) -> tf.Tensor:
  """Each user's mean next-item loss on a window of its history [U] (the membership-inference signal)."""
  expanded = sequence.expand(weights)
  totals, counts = shard_losses(expanded, tf.gather(expanded[sequence.ITEM][0], data['rows']), data, config,
                                features)
  return tf.math.divide_no_nan(totals, counts)


def support_examples(histories: list[np.ndarray], config: sequence.SequenceConfig, num_negatives: int,
                     seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Each user's window and fixed negatives (`seed`) for `support_losses`."""
  return [sequence.training_example(h, config.max_history, num_negatives, config.num_items, seed)
          for h in histories]
