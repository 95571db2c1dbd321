"""Federated Reconstruction's client maths for a shard of users, batched over them (plain TF, no TFF).

A TFF client of `tff_rec.federated.process` is a *shard*: one or more users
whose per-user work runs side by side in one graph (FedJAX's `for_each_client`
idea: the per-user maths written once, batched, whatever the shard size). Per
user, exactly TFF's `build_fed_recon` client (Singhal et al., "Federated
Reconstruction: Partially Local Federated Learning", NeurIPS 2021) with every
batch used by both stages: the local user starts at zero and takes SGD steps on
the batch-mean loss for `reconstruction_epochs` passes with the items frozen
(`reconstruction.reconstruct`), then the item side takes SGD steps for
`local_epochs` passes with the user frozen; the update is `initial - final`,
zeroed with weight 0 if not finite.

A user's local copy of the item side holds only the rows its examples touch
(`pack_shard` maps each example to a local row), so a round costs
O(examples x dim) rather than O(users x catalogue x dim); untouched rows have a
zero gradient (the L2 penalty is per example), so the update is the dense one.
Each user's update then goes to the aggregator (`tff_rec.federated.aggregation`), which sums the shard's.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from tff_rec import attacks
from tff_rec.evaluation import client_eval
from tff_rec.models import als, mf, reconstruction, two_tower
from tff_rec.preprocessing import Examples, pad_rows

UNIFORM, NUM_EXAMPLES = 'uniform', 'num_examples'
FED_RECON, FED_AVG, FED_ALS = 'fed_recon', 'fed_avg', 'fed_als'


@dataclasses.dataclass(frozen=True)
class ClientSettings:
  """What a user's client work does (`fed_recon.ReconConfig`'s client part, and the model's loss)."""

  objective: str
  l2: float
  client_learning_rate: float
  reconstruction_learning_rate: float
  reconstruction_epochs: int
  local_epochs: int
  client_weighting: str = NUM_EXAMPLES
  algorithm: str = FED_RECON  # FED_RECON: the user reconstructed, local; FED_AVG: its row of a global table;
  # FED_ALS: the user solved exactly, its ALS statistics the update.
  proximal_strength: float = 0.0  # FedProx's mu (FED_AVG).
  als: als.AlsConfig | None = None  # FED_ALS.
  two_tower: bool = False  # FED_RECON of `two_tower.build_two_tower` (the weights are its candidate tower's).
  split_dataset: bool = False  # FED_RECON: even batches reconstruct, odd ones train (TFF's split); else all both.
  poison: attacks.Poison | None = None  # What the shard's malicious users (its `malicious` [U]) upload instead.


def shard_sizes(num_users: int, users_per_shard: int) -> list[int]:
  """How `num_users` users split into shards of at most `users_per_shard`, as evenly as possible."""
  if users_per_shard < 1:
    raise ValueError(f'users_per_shard must be >= 1, got {users_per_shard}')
  shards = max(1, math.ceil(num_users / users_per_shard))
  base, extra = divmod(num_users, shards)
  return [base + (1 if s < extra else 0) for s in range(shards)]


def split(values: list, users_per_shard: int) -> list[list]:
  """`values` (one per user) cut into consecutive shards (`shard_sizes`)."""
  out, start = [], 0
  for size in shard_sizes(len(values), users_per_shard):
    out.append(values[start:start + size])
    start += size
  return out


def size_shards(examples: list[Examples], users_per_shard: int, max_examples: int = 0) -> list[list[int]]:
  """Users' indices cut into shards of alike users (stably sorted by example count): a shard steps as many
  batches as its largest user, so grouping alike users keeps padding small. A shard's sum does not depend on who
  is in it.

  `max_examples` 0: `shard_sizes`' even shards of at most `users_per_shard`.
  Else each shard, filled in that order, takes users while it has fewer than
  `users_per_shard` and its users x its largest user's examples (what it
  pads to) stay within `max_examples`: many light users share a shard, a
  heavy one may run alone, so a round has fewer shards (each costs TFF's
  runtime a fixed time) at about the same padding.
  """
  order = sorted(range(len(examples)), key=lambda u: len(examples[u][0]))
  if not max_examples:
    return split(order, users_per_shard)
  if max_examples < 0:
    raise ValueError(f'max_examples must be >= 0, got {max_examples}')
  shards: list[list[int]] = []
  for u in order:
    largest = max(1, len(examples[u][0]))  # The shard's largest so far: users come in increasing size.
    if not shards or len(shards[-1]) >= users_per_shard or (len(shards[-1]) + 1) * largest > max_examples:
      shards.append([])
    shards[-1].append(u)
  return shards


def shard_indices(examples: list[Examples], users_per_shard: int, max_examples: int = 0) -> list[list[int]]:
  """The users (indices into `examples`) of each shard: of alike users (`size_shards`), or a
  `GroupedExamples`' groups (a platform's users) as they are."""
  groups = getattr(examples, 'groups', None)
  if groups is not None:
    return [list(group) for group in groups if group]
  return size_shards(examples, users_per_shard, max_examples)


def by_size(examples: list[Examples], users_per_shard: int, max_examples: int = 0) -> list[list[Examples]]:
  """`examples` cut into shards (`shard_indices`)."""
  return [[examples[u] for u in part] for part in shard_indices(examples, users_per_shard, max_examples)]


def pack_batches(examples: list[Examples], batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Users' examples -> (items, labels, mask), each [users, batches, batch_size].

  User u's batch t is examples[u][t * B:(t + 1) * B], as `Dataset.batch(B)`
  cuts it; the rest is padding (mask 0, item 0).
  """
  sizes = [len(items) for items, _ in examples]
  batches = max(1, max((math.ceil(n / batch_size) for n in sizes), default=1))
  shape = (len(examples), batches * batch_size)
  items = np.zeros(shape, np.int64)
  labels = np.zeros(shape, np.float32)
  mask = np.zeros(shape, np.float32)
  for c, ((x, y), n) in enumerate(zip(examples, sizes)):
    items[c, :n], labels[c, :n], mask[c, :n] = x, y, 1.0
  new_shape = (len(examples), batches, batch_size)
  return items.reshape(new_shape), labels.reshape(new_shape), mask.reshape(new_shape)


def pack_shard(examples: list[Examples], batch_size: int, keys=None) -> collections.OrderedDict:
  """A shard's training data: each user's batches in local row indices, and the item rows those index.

  Returns OrderedDict(local [U, T, B] int32 (index into the user's rows),
  labels [U, T, B], mask [U, T, B], rows [U, K] int64 (the catalogue rows
  user u touches, sorted, then padded with row 0, which gets no gradient), users [U]
  int64 (each user's row of a global user table, from (user, item) pairs;
  else 0), keys [U] int64 (`keys`, default 0..U-1: each user's position in
  the round's cohort, which seeds its own randomness whatever its shard)).
  """
  users = np.zeros(len(examples), np.int64)
  if examples and np.ndim(examples[0][0]) == 2:  # (user, item) pairs, a global user table's: one user each.
    users = np.array([pairs[0, 0] if len(pairs) else 0 for pairs, _ in examples], np.int64)
    examples = [(pairs[:, 1], labels) for pairs, labels in examples]
  items, labels, mask = pack_batches(examples, batch_size)
  local = np.zeros(items.shape, np.int32)
  touched = []
  for u, (user_items, _) in enumerate(examples):
    # The user's own rows, sorted, whatever the shard pads it to (so a row's position is the user's alone);
    # padded examples point at row position 0 and are masked.
    rows = np.unique(user_items) if len(user_items) else np.zeros(1, np.int64)  # An empty user: row 0, unused.
    touched.append(rows)
    local[u] = np.minimum(np.searchsorted(rows, items[u]), len(rows) - 1)
  rows, _ = pad_rows(touched, np.int64)
  keys = np.arange(len(examples)) if keys is None else keys
  return collections.OrderedDict(local=local, labels=labels, mask=mask, rows=rows, users=users,
                                 keys=np.asarray(keys, np.int64))


def split_weights(weights, objective: str):
  """(item embedding [rows, d], item bias [rows, 1], global mean or None)."""
  return weights[0], weights[1], (weights[2] if objective == mf.RATING else None)


def _sgd(value, grad, learning_rate):
  if isinstance(grad, tf.IndexedSlices):  # Rows a batch used: only those change.
    return tf.tensor_scatter_nd_sub(value, grad.indices[:, None], learning_rate * grad.values)
  return value - learning_rate * grad


def user_updates(weights, shard, settings: ClientSettings, features: two_tower.ItemFeatures | None = None):
  """Every user's sparse update and weight, and the shard's training sums.

  Args:
    weights: The global weights: Fed Recon's (item embedding, item bias[,
      mean]); FedAvg's user table (embedding[, bias]) first, then those.
    shard: `pack_shard`'s tensors.
    settings: The client work.
    features: The two-tower model's item features (`settings.two_tower`).

  Returns:
    (updates, sums): updates an OrderedDict (`aggregation.user_updates_type`)
    of rows (per weight: [U, K] the rows of it the user touched; [U, 0] for a
    scalar), deltas (per weight: [U, K, ...] on those rows; [U] for a scalar),
    each user's `initial - final`, zeroed if not finite; weight [U] per
    `client_weighting` (0 for an empty or non-finite user) and examples [U];
    sums an OrderedDict of the shard's loss sum, batch count, examples,
    non-finite and empty users.
  """
  if settings.algorithm == FED_ALS:
    return als_updates(weights, shard, settings.als)
  if settings.split_dataset and settings.algorithm == FED_RECON:
    recon, train = split_batches(shard)
    return (two_tower_updates(weights, features, train, settings, recon) if settings.two_tower
            else _fed_recon_updates(weights, train, settings, recon))
  if settings.two_tower:
    return two_tower_updates(weights, features, shard, settings)
  if settings.algorithm == FED_AVG:  # The user's row of the global table, trained with the items (McMahan et al.).
    tables = 2 if settings.objective == mf.RATING else 1
    user = [tf.gather(table, shard['users'])[:, None, :] for table in weights[:tables]]
    return _local_updates(user, weights[tables:], shard, settings, user_rows=shard['users'])
  return _fed_recon_updates(weights, shard, settings, shard)


def split_batches(shard) -> tuple[collections.OrderedDict, collections.OrderedDict]:
  """(the reconstruction data, the training data) of TFF's `split_dataset`: each user's even batches, its odd
  ones (`tff.learning.models.ReconstructionModel.build_dataset_split_fn`); the training part keeps the whole
  mask as `all_mask` (a user with one batch trains nothing, and is not empty)."""
  recon, train = collections.OrderedDict(shard), collections.OrderedDict(shard)
  for key in ('local', 'labels', 'mask'):
    recon[key], train[key] = shard[key][:, 0::2], shard[key][:, 1::2]
  train['all_mask'] = shard['mask']
  return recon, train


def _fed_recon_updates(weights, shard, settings: ClientSettings, recon):
  """Federated Reconstruction of MF: each user reconstructed on `recon`'s batches, the items trained on `shard`'s."""
  embedding, bias, mean = split_weights(weights, settings.objective)
  items = tf.gather(recon['rows'], recon['local'], batch_dims=1)  # The catalogue rows of each example.
  user = reconstruction.reconstruct(embedding, bias, mean, items, recon['labels'], recon['mask'],
                                    objective=settings.objective, l2=settings.l2,
                                    learning_rate=settings.reconstruction_learning_rate,
                                    epochs=settings.reconstruction_epochs)
  return _local_updates(user, weights, shard, settings)


def _local_updates(user, item_weights, shard, settings: ClientSettings, user_rows=None):
  """`local_epochs` of SGD on each user's item rows (and, with `user_rows`, on its user row, FedAvg / FedProx:
  Li et al., MLSys 2020, adds mu (w - w0) to every local weight's gradient on a user's non-empty steps; TFF 0.87's
  `build_weighted_fed_prox` adds mu (w0 - w), the opposite sign)."""
  objective = settings.objective
  rating = objective == mf.RATING
  embedding, bias, mean = split_weights(item_weights, objective)
  local_items, labels, mask, rows = shard['local'], shard['labels'], shard['mask'], shard['rows']
  users, touched = tf.shape(rows)[0], tf.shape(rows)[1]
  start = [tf.gather(embedding, rows), tf.gather(bias, rows)]  # [U, K, d], [U, K, 1]
  if rating:
    start.append(tf.fill([users, 1, 1], mean))
  offsets = tf.range(users)[:, None] * touched
  trained_user = list(user) if user_rows is not None else []
  local = trained_user + [tf.reshape(start[0], [-1, tf.shape(embedding)[1]]),
                          tf.reshape(start[1], [-1, 1])] + start[2:]
  initial, first_item = list(local), len(trained_user)
  batches = tf.shape(local_items)[1]
  mu = settings.proximal_strength

  def step(s, local, loss_sum, loss_batches):
    t = s % batches
    index = local_items[:, t] + offsets
    with tf.GradientTape() as tape:
      tape.watch(local)
      items = local[first_item:]
      losses, counts = reconstruction.batch_losses(local[:first_item] or user, tf.gather(items[0], index),
                                                   tf.gather(items[1], index), items[2] if rating else None,
                                                   labels[:, t], mask[:, t], objective=objective, l2=settings.l2)
      total = tf.reduce_sum(losses)
    grads = tape.gradient(total, local)
    nonempty = tf.cast(counts > 0, tf.float32)
    if mu:  # An empty step is no step: no proximal pull either.
      per_row = tf.reshape(tf.repeat(nonempty, touched), [-1, 1])
      grads = [tf.convert_to_tensor(g) + mu * (v - v0) * (per_row if v.shape.rank == 2 else nonempty[:, None, None])
               for g, v, v0 in zip(grads, local, initial)]
    local = [_sgd(v, g, settings.client_learning_rate) for v, g in zip(local, grads)]
    # The reported loss: TFF's Fed Recon averages batch losses; its FedAvg (Keras metrics) weighs them by batch size.
    weight = counts if user_rows is not None else nonempty
    return s + 1, local, loss_sum + losses * weight, loss_batches + weight

  _, local, loss_sum, loss_batches = tf.while_loop(  # Per user: a non-finite user's loss is left out below.
      lambda s, *_: s < settings.local_epochs * batches, step,
      (tf.constant(0), local, tf.zeros([users]), tf.zeros([users])))
  deltas = [a - b for a, b in zip(initial[:first_item], local[:first_item])]  # [U, 1, ...]
  items = local[first_item:]
  deltas += [start[0] - tf.reshape(items[0], tf.shape(start[0])), start[1] - tf.reshape(items[1], tf.shape(start[1]))]
  if rating:
    deltas.append(tf.reshape(start[2] - items[2], [users]))  # TFF's convention: initial - final.
  all_rows = ([user_rows[:, None]] * first_item if first_item else []) + [rows, rows]
  all_rows += [tf.zeros([users, 0], tf.int64)] if rating else []
  return _user_results(deltas, all_rows, loss_sum, loss_batches, shard, settings)


def _user_results(deltas, rows, loss_sum, loss_batches, shard, settings: ClientSettings):
  """`user_updates`' result from each user's deltas and rows and its loss sum and batch count [U]: a non-finite
  user's update zeroed, weighted 0 and left out of the loss."""
  mask = shard['mask']
  users = tf.shape(mask)[0]
  has_data = tf.reduce_sum(shard.get('all_mask', mask), axis=[1, 2]) > 0
  finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(tf.reshape(d, [users, -1])), axis=1)
                                   for d in deltas]), axis=0)
  deltas = [tf.where(tf.reshape(finite, [-1] + [1] * (d.shape.rank - 1)), d, 0.0) for d in deltas]
  examples = tf.reduce_sum(mask, axis=[1, 2]) * settings.local_epochs
  if settings.client_weighting == UNIFORM:  # TFF's UNIFORM; an empty user takes no part.
    weight = tf.cast(examples > 0, tf.float32)
  else:
    weight = examples
  weight = tf.where(finite, weight, 0.0)
  # tf.equal, not ==: TFF traces with TF1 tensor equality, where == is Python identity.
  counted = tf.cast(finite, tf.float32)
  sums = collections.OrderedDict(
      loss_sum=tf.reduce_sum(tf.where(finite, loss_sum, 0.0)), loss_batches=tf.reduce_sum(loss_batches * counted),
      num_examples=tf.reduce_sum(examples),
      non_finite_users=tf.reduce_sum(1.0 - counted),
      empty_users=tf.reduce_sum(tf.cast(tf.logical_not(has_data), tf.float32)))
  updates = collections.OrderedDict(rows=rows, deltas=deltas, weight=weight, examples=examples, keys=shard['keys'])
  return updates, sums


def candidates(weights, features: two_tower.ItemFeatures, items: tf.Tensor) -> tf.Tensor:
  """The two-tower candidate embeddings of catalogue rows `items` [...] -> [..., d] (`two_tower.candidate_table`
  for those rows): item-id embedding + dense features (genres[, title vector]) x projection + year-bucket
  embedding."""
  id_embedding, genre_projection, year_embedding = weights
  genres = tf.gather(tf.constant(features.dense), items)
  return (tf.gather(id_embedding, items) + tf.tensordot(genres, genre_projection, 1)
          + tf.gather(year_embedding, tf.gather(tf.constant(features.year_buckets), items)))


def two_tower_updates(weights, features: two_tower.ItemFeatures, shard, settings: ClientSettings, recon=None):
  """Federated Reconstruction of the two-tower model (`two_tower.build_two_tower`), per user of the shard.

  Each user's query embedding is reconstructed from zeros on its own batches
  with the candidate tower frozen (`reconstruction.reconstruct_query`), then
  the candidate tower takes `local_epochs` of SGD on TFRS's retrieval loss
  (`reconstruction.retrieval_batch_losses`) with the query frozen: the rows of
  the item-id embedding the user's examples touch, and its own copies of the
  genre projection and year embedding (small, dense). Returns (updates, sums)
  as `user_updates`: the id rows' deltas on the user's rows, the two small
  tables' on all their rows. `recon`: the reconstruction's batches (default
  `shard`'s).
  """
  recon = shard if recon is None else recon
  id_embedding, genre_projection, year_embedding = weights
  local_items, labels, mask, rows = shard['local'], shard['labels'], shard['mask'], shard['rows']
  users, touched, dim = tf.shape(rows)[0], tf.shape(rows)[1], tf.shape(id_embedding)[1]
  items = tf.gather(rows, local_items, batch_dims=1)  # [U, T, B] catalogue rows.
  offsets = tf.range(users)[:, None, None] * touched
  user_candidates = tf.reshape(candidates(weights, features, rows), [-1, dim])  # [U * K, d]
  query = reconstruction.reconstruct_query(user_candidates, recon['local'] + offsets, recon['labels'], recon['mask'],
                                           learning_rate=settings.reconstruction_learning_rate,
                                           epochs=settings.reconstruction_epochs)
  genres, years = tf.constant(features.dense), tf.constant(features.year_buckets)
  start = [tf.reshape(tf.gather(id_embedding, rows), [-1, dim]),
           tf.tile(genre_projection[None], [users, 1, 1]), tf.tile(year_embedding[None], [users, 1, 1])]
  batches = tf.shape(local_items)[1]

  def step(s, local, loss_sum, loss_batches):
    t = s % batches
    with tf.GradientTape() as tape:
      tape.watch(local)
      batch = items[:, t]
      candidate = (tf.gather(local[0], local_items[:, t] + offsets[:, 0]) +
                   tf.einsum('ubg,ugd->ubd', tf.gather(genres, batch), local[1]) +
                   tf.gather(local[2], tf.gather(years, batch), batch_dims=1))
      losses = reconstruction.retrieval_batch_losses(query, candidate, labels[:, t], mask[:, t])
      total = tf.reduce_sum(losses)
    grads = tape.gradient(total, local)
    grads = grads[:1] + [tf.convert_to_tensor(g) for g in grads[1:]]  # The small tables' per-user copies: dense.
    local = [_sgd(v, g, settings.client_learning_rate) for v, g in zip(local, grads)]
    nonempty = tf.cast(tf.reduce_sum(mask[:, t], axis=1) > 0, tf.float32)
    return s + 1, local, loss_sum + losses * nonempty, loss_batches + nonempty

  _, local, loss_sum, loss_batches = tf.while_loop(
      lambda s, *_: s < settings.local_epochs * batches, step,
      (tf.constant(0), start, tf.zeros([users]), tf.zeros([users])))
  deltas = [tf.reshape(start[0] - local[0], [users, touched, dim]), start[1] - local[1], start[2] - local[2]]
  small = [tf.tile(tf.range(tf.shape(w)[0], dtype=tf.int64)[None], [users, 1])
           for w in (genre_projection, year_embedding)]
  return _user_results(deltas, [rows] + small, loss_sum, loss_batches, shard, settings)


def als_updates(weights, shard, config: als.AlsConfig):
  """Every user's implicit-ALS statistics (Hu, Koren & Volinsky, ICDM 2008), and the shard's training sums.

  Each user solves its embedding x exactly against the item table
  (`als.solve_users`) and contributes x x^T and (1 + alpha) x at its rated
  rows (`als.user_statistics`, here on the rows it touched). Returns (updates,
  sums) as `user_updates`: deltas [gram [U, d, d] (rows: 0..d-1), sums
  [U, K, d]], weight 1 for a user with a rated item and a finite solve (else
  0, the statistics zeroed), examples its rated items.
  """
  embedding, bias = weights[0], weights[1]
  rows = shard['rows']
  users, touched, dim = tf.shape(rows)[0], tf.shape(rows)[1], tf.shape(embedding)[1]
  local = tf.reshape(shard['local'], [users, -1])
  labels, mask = tf.reshape(shard['labels'], [users, -1]), tf.reshape(shard['mask'], [users, -1])
  items = tf.gather(rows, local, batch_dims=1)
  positives = als.positive_weights(labels, mask)
  x = als.solve_users(embedding, items, positives, config)
  finite = tf.reduce_all(tf.math.is_finite(x), axis=1)
  x = tf.where(finite[:, None], x, 0.0)
  segments = tf.cast(local, tf.int32) + tf.range(users)[:, None] * touched
  values = (1.0 + config.alpha) * positives[..., None] * x[:, None, :]
  sums = tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(values, [-1, dim]), tf.reshape(segments, [-1]),
                                                 users * touched), [users, touched, dim])
  gram = tf.einsum('ud,ue->ude', x, x)
  rated = tf.reduce_sum(positives, axis=1)
  weight = tf.cast(tf.logical_and(finite, rated > 0), tf.float32)
  scores = mf.predict(x[:, None, :], tf.gather(embedding, items), tf.gather(bias, items))[..., 0]
  counts = tf.reduce_sum(mask, axis=1)
  losses = tf.math.divide_no_nan(tf.reduce_sum(als.example_losses(scores, labels, config) * mask, axis=1), counts)
  nonempty = tf.cast(counts > 0, tf.float32)
  sums_out = collections.OrderedDict(
      loss_sum=tf.reduce_sum(losses * nonempty), loss_batches=tf.reduce_sum(nonempty),
      num_examples=tf.reduce_sum(counts), non_finite_users=tf.reduce_sum(1.0 - tf.cast(finite, tf.float32)),
      empty_users=tf.reduce_sum(tf.cast(tf.equal(counts, 0.0), tf.float32)))
  gram_rows = tf.tile(tf.range(dim, dtype=tf.int64)[None], [users, 1])
  updates = collections.OrderedDict(rows=[gram_rows, rows], deltas=[gram, sums], weight=weight, examples=rated,
                                    keys=shard['keys'])
  return updates, sums_out


# Evaluation: every user reconstructed from its support, then the metric sums of `client_eval`.

def eval_arrays(clients, batch_size: int, num_items: int) -> collections.OrderedDict:
  """`tasks.EvalClients` (or a shard of them) -> the padded tensors `evaluation_sums` takes."""
  items, labels, mask = pack_batches(clients.support, batch_size)
  query_items, query_mask = pad_rows([q[0] for q in clients.queries], np.int64)
  query_labels, _ = pad_rows([q[1] for q in clients.queries], np.float32)
  seen = np.zeros((len(clients.support), num_items + 1), bool)
  relevant = np.zeros_like(seen)
  for c, (s, r) in enumerate(zip(clients.seen, clients.relevant)):
    seen[c, s], relevant[c, r] = True, True
  data = collections.OrderedDict(items=items, labels=labels, mask=mask, query_items=query_items,
                                 query_labels=query_labels, query_mask=query_mask, seen=seen, relevant=relevant)
  if clients.groups is not None:  # [U, queries, G]: each query's groups (metrics by group).
    data['query_groups'], _ = pad_rows(clients.groups, np.float32)
  if clients.targets is not None:  # [U, T]: the attack's target items, whose exposure is measured.
    data['targets'] = np.tile(np.asarray(clients.targets, np.int64)[None], [len(clients.support), 1])
  return data


def reconstruct_users(weights, items, labels, mask, *, objective: str, l2: float, learning_rate: float, epochs: int,
                      als_config: als.AlsConfig | None = None):
  """Every user's local parameters from its support: SGD (`reconstruction.reconstruct`), or with `als_config`
  the exact ALS solve (`als.reconstruct`; the SGD settings do not apply)."""
  embedding, bias, mean = split_weights(weights, objective)
  if als_config is not None:
    return [als.reconstruct(embedding, items, labels, mask, als_config)]
  return reconstruction.reconstruct(embedding, bias, mean, items, labels, mask, objective=objective, l2=l2,
                                    learning_rate=learning_rate, epochs=epochs)


def evaluation_sums(weights, data, *, objective: str, l2: float, learning_rate: float, epochs: int,
                    als_config: als.AlsConfig | None = None) -> collections.OrderedDict:
  """The metric sums of `client_eval` over a shard of users (`eval_arrays`), each reconstructed from its support
  (`reconstruct_users`)."""
  rating = objective == mf.RATING
  user = reconstruct_users(weights, data['items'], data['labels'], data['mask'], objective=objective, l2=l2,
                           learning_rate=learning_rate, epochs=epochs, als_config=als_config)
  embedding, bias, mean = split_weights(weights, objective)
  p_u = user[0]
  b_u = user[1] if rating else None

  def score(indices):  # indices [U, ...] -> scores [U, ...]
    flat = tf.reshape(indices, [tf.shape(indices)[0], -1])
    out = mf.predict(p_u, tf.gather(embedding, flat), tf.gather(bias, flat), b_u, mean)[..., 0]
    return tf.reshape(out, tf.shape(indices))

  if rating:
    sums = client_eval.rating_sums(score(data['query_items']), data['query_labels'], data['query_mask'],
                                   data.get('query_groups'))
  else:
    sums = client_eval.ranking_sums(score(data['query_items']), data['query_mask'], data.get('query_groups'))
  all_items = tf.tile(tf.range(tf.shape(embedding)[0], dtype=tf.int64)[None], [tf.shape(data['items'])[0], 1])
  sums.update(client_eval.catalogue_sums(score(all_items), data['seen'], data['relevant'], data.get('targets')))
  return sums


def _two_tower_users(weights, features: two_tower.ItemFeatures, items, labels, mask, *, learning_rate: float,
                     epochs: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(the candidate tower over the catalogue [rows, d], each user's query reconstructed from its support against
  it [U, 1, d])."""
  table = candidates(weights, features, tf.range(tf.shape(weights[0])[0], dtype=tf.int64))
  return table, reconstruction.reconstruct_query(table, items, labels, mask, learning_rate=learning_rate,
                                                 epochs=epochs)


def two_tower_evaluation_sums(weights, features: two_tower.ItemFeatures, data, *, learning_rate: float,
                              epochs: int) -> collections.OrderedDict:
  """`evaluation_sums` of the two-tower model: each user's query reconstructed from its support against the
  candidate tower over the catalogue (`reconstruction.reconstruct_query`), items scored by the dot product."""
  table, query = _two_tower_users(weights, features, data['items'], data['labels'], data['mask'],
                                  learning_rate=learning_rate, epochs=epochs)
  return query_sums(query, table, data)


def query_sums(query: tf.Tensor, table: tf.Tensor, data) -> collections.OrderedDict:
  """The ranking and catalogue sums of users whose queries [U, 1, d] score items by <query, table row> (the
  two-tower models): LOO candidates `data['query_items']`, and every item of the `table` [rows, d]."""

  def score(indices):  # indices [U, ...] -> scores [U, ...]
    flat = tf.reshape(indices, [tf.shape(indices)[0], -1])
    return tf.reshape(tf.reduce_sum(query * tf.gather(table, flat), -1), tf.shape(indices))

  sums = client_eval.ranking_sums(score(data['query_items']), data['query_mask'], data.get('query_groups'))
  all_items = tf.tile(tf.range(tf.shape(table)[0], dtype=tf.int64)[None], [tf.shape(query)[0], 1])
  sums.update(client_eval.catalogue_sums(score(all_items), data['seen'], data['relevant'], data.get('targets')))
  return sums


def two_tower_support_losses(weights, items, labels, mask, *, features: two_tower.ItemFeatures,
                             learning_rate: float, epochs: int) -> tf.Tensor:
  """Each user's mean retrieval loss over its support batches after reconstruction [U] (the membership-inference
  signal of the two-tower model)."""
  table, query = _two_tower_users(weights, features, items, labels, mask, learning_rate=learning_rate, epochs=epochs)
  users = tf.shape(items)[0]

  def step(t, total, batches):
    losses = reconstruction.retrieval_batch_losses(query, tf.gather(table, items[:, t]), labels[:, t], mask[:, t])
    nonempty = tf.cast(tf.reduce_sum(mask[:, t], axis=1) > 0, tf.float32)
    return t + 1, total + losses * nonempty, batches + nonempty

  _, total, batches = tf.while_loop(lambda t, *_: t < tf.shape(items)[1], step,
                                    (tf.constant(0), tf.zeros([users]), tf.zeros([users])))
  return tf.math.divide_no_nan(total, batches)


class ItemSideEvaluator:
  """Any engine's item side evaluated per user in this process: `evaluation_sums` over size-sorted chunks of users.

  What the shard process's federated evaluation computes, for engines whose
  training clients are not single users (platforms, FedAvg's global user
  table, the centralized baseline).
  """

  def __init__(self, model_config: mf.MFConfig, batch_size: int, *, learning_rate: float, epochs: int,
               users_per_chunk: int = 100):
    self._num_items, self._batch_size, self._chunk = model_config.num_items, batch_size, users_per_chunk
    self._sums = tf.function(
        lambda weights, data: evaluation_sums(weights, data, objective=model_config.objective, l2=model_config.l2,
                                              learning_rate=learning_rate, epochs=epochs), reduce_retracing=True)

  def evaluate(self, weights: list[np.ndarray], clients) -> dict[str, float]:
    """Metric totals over `clients` (`tasks.EvalClients`) for the global `weights`."""
    weights = tuple(tf.constant(w) for w in weights)
    return sum_over_chunks(lambda data: self._sums(weights, data), clients,
                           lambda part: eval_arrays(part, self._batch_size, self._num_items), self._chunk)


def sum_over_chunks(sums, clients, arrays, users_per_chunk: int) -> dict[str, Any]:
  """Metric totals in this process: `sums(arrays(part))` added up over size-sorted chunks of `clients`
  (`split_eval`), as the federated evaluation adds its shards' sums."""
  totals: dict[str, Any] = {}
  for part in split_eval(clients, users_per_chunk):
    for key, value in sums(arrays(part)).items():
      value = value.numpy().astype(np.float64)
      totals[key] = totals.get(key, 0.0) + (float(value) if value.ndim == 0 else value)
  return totals


def split_eval(clients, users_per_shard: int, max_examples: int = 0) -> list:
  """`tasks.EvalClients` cut into shards of users of similar support size (`size_shards`; objects with the same
  fields)."""
  fields = ('client_ids', 'support', 'queries', 'seen', 'relevant') + (('groups',) if clients.groups else ())
  return [dataclasses.replace(clients, **{f: [getattr(clients, f)[u] for u in part] for f in fields})
          for part in size_shards(clients.support, users_per_shard, max_examples)]


def support_losses(weights, items, labels, mask, *, objective: str, l2: float, learning_rate: float,
                   epochs: int, als_config: als.AlsConfig | None = None) -> tf.Tensor:
  """Each user's mean loss on its support after reconstruction [U] (the membership-inference signal; with
  `als_config`, ALS's loss after its exact solve)."""
  user = reconstruct_users(weights, items, labels, mask, objective=objective, l2=l2, learning_rate=learning_rate,
                           epochs=epochs, als_config=als_config)
  embedding, bias, mean = split_weights(weights, objective)
  users = tf.shape(items)[0]
  mu = None if mean is None else tf.fill([users, 1, 1], mean)

  def step(t, total):
    if als_config is not None:
      scores = mf.predict(user[0], tf.gather(embedding, items[:, t]), tf.gather(bias, items[:, t]))[..., 0]
      counts = tf.reduce_sum(mask[:, t], axis=1)
      losses = tf.math.divide_no_nan(
          tf.reduce_sum(als.example_losses(scores, labels[:, t], als_config) * mask[:, t], axis=1), counts)
    else:
      losses, counts = reconstruction.batch_losses(user, tf.gather(embedding, items[:, t]),
                                                   tf.gather(bias, items[:, t]), mu, labels[:, t], mask[:, t],
                                                   objective=objective, l2=l2)
    return t + 1, total + losses * counts

  _, total = tf.while_loop(lambda t, _: t < tf.shape(items)[1], step, (tf.constant(0), tf.zeros([users])))
  return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=[1, 2]))
