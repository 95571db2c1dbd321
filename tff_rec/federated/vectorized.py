"""Cohort-vectorised Federated Reconstruction for MF: a whole round as one TensorFlow graph.

Written by hand because no library does it: TFF runs every client as its own
computation (one executor call and one serialised dataset per client), and for
recommendation clients (a user, a few hundred examples) that fixed cost is
most of the round. Here all clients of a cohort step together: client c's
batch t is row [c, t] of padded [clients, batches, batch_size] tensors with a
mask, every client keeps its own copy of the item table (only the rows it
touches change), and a client with no batch at step t does nothing.

The maths is exactly TFF's `build_fed_recon` (Singhal et al., NeurIPS 2021) as
configured by `fed_recon.build_training_process` with `split_dataset=False`:
per client, the local user starts at zero and takes plain SGD steps on the
batch-mean loss for `reconstruction_epochs` passes with the items frozen, then
the items take SGD steps for `local_epochs` passes with the user frozen; the
update `initial - final` is zeroed (weight 0) if not finite, averaged weighted
by the client's post-reconstruction examples (or, with `client_weighting=
'uniform'`, every non-empty finite client by 1), and applied by the same
`tff.learning.optimizers` server optimizer, which skips a non-finite average.
tests/federated/test_vectorized.py checks the result against the TFF process.
Evaluation reconstructs every user the same way and computes the metric sums
of `client_eval` over all of them at once.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_privacy as tfp

from tff_rec.evaluation import client_eval
from tff_rec.federated.fed_recon import ReconConfig, RoundOutput, server_optimizer
from tff_rec.models import mf, reconstruction
from tff_rec.federated.shard_math import pack_batches as pad_examples  # Cuts batches as Dataset.batch.
from tff_rec.preprocessing import Examples, pad_rows
from tff_rec.privacy.queries import clip_norm, noise_seed, stateless_query_noise


class VectorizedEngine:
  """Fed Recon MF rounds with the whole cohort in one graph; the interface of `fed_recon.TffEngine`."""

  def __init__(self, task, config: ReconConfig, *, eval_learning_rate: float, eval_epochs: int,
               dp_query: Any = None, seed: int = 0):
    """`dp_query`: a tensorflow-privacy query (`privacy.dp.dp_query`) replacing the weighted mean; `seed`
    seeds its noise per round."""
    config.validate()
    if config.split_dataset:
      raise ValueError('the vectorized engine implements --nosplit_dataset only; use --engine=tff for '
                       '--split_dataset')
    self.task = task
    self.config = config
    self.model_config: mf.MFConfig = task.model_config
    self.rating = self.model_config.objective == mf.RATING
    self.batch_size = task.data_config.batch_size
    self.optimizer = server_optimizer(config.server_optimizer, config.server_learning_rate, config.server_epsilon,
                                      config.server_lr_schedule)
    self.eval_learning_rate, self.eval_epochs = eval_learning_rate, eval_epochs
    if dp_query is not None and not isinstance(dp_query, tfp.SumAggregationDPQuery):
      raise TypeError(f'the vectorized engine sums preprocessed records: needs a SumAggregationDPQuery, got {dp_query}')
    self.dp_query, self.seed = dp_query, seed
    self._client = tf.function(self._client_fn, reduce_retracing=True)
    self._weighted_mean = tf.function(self._weighted_mean_fn, reduce_retracing=True)
    self._dp_accumulate = tf.function(self._dp_accumulate_fn, reduce_retracing=True)
    self._server = tf.function(self._server_fn, reduce_retracing=True)
    self._evaluate = tf.function(self._evaluate_fn, reduce_retracing=True)
    self._client_losses = tf.function(self._client_losses_fn, reduce_retracing=True)

  # State.

  def initialize(self) -> collections.OrderedDict:
    """Global weights from the model's own initializers, and the server optimizer's state."""
    bundle = mf.build_mf(self.model_config)
    weights = tuple(v.numpy() for layer in bundle.global_layers for v in layer.trainable_variables)
    specs = tuple(tf.TensorSpec(w.shape, tf.float32) for w in weights)
    state = collections.OrderedDict(
        round=np.int64(0), weights=weights,
        optimizer=tf.nest.map_structure(np.asarray, self.optimizer.initialize(specs)))
    if self.dp_query is not None:
      state['dp'] = [np.asarray(x) for x in tf.nest.flatten(self.dp_query.initial_global_state())]
    return state

  def global_weights(self, state) -> list[np.ndarray]:
    return [np.asarray(w) for w in state['weights']]

  # One round.

  def next(self, state, examples: list[Examples]) -> RoundOutput:
    items, labels, mask = pad_examples(examples, self.batch_size)
    weights = tuple(tf.constant(w) for w in state['weights'])
    deltas, client_weight, metrics = self._client(weights, items, labels, mask)
    new_state = collections.OrderedDict(round=np.int64(state['round'] + 1))
    if self.dp_query is None:
      if self.config.client_weighting == 'uniform':  # TFF's UNIFORM (its engine skips empty clients: weight 0).
        client_weight = tf.cast(client_weight > 0, tf.float32)
      update = self._weighted_mean(deltas, client_weight)
    else:
      dp_state = tf.nest.pack_sequence_as(self.dp_query.initial_global_state(), list(state['dp']))
      sample_state = self._dp_accumulate(dp_state, deltas, tf.reduce_sum(mask, axis=[1, 2]) > 0)
      # The noise is a function of (seed, round): a resumed run draws what an uninterrupted one would.
      with stateless_query_noise(noise_seed(self.seed, int(state['round']))):
        update, dp_state, _ = self.dp_query.get_noised_result(sample_state, dp_state)
      update = tuple(update)
      new_state['dp'] = [np.asarray(x) for x in tf.nest.flatten(dp_state)]
      metrics['privacy'] = collections.OrderedDict(clip_norm=clip_norm(dp_state))
    new_weights, new_optimizer, rejected = self._server(weights, state['optimizer'], update)
    metrics['finalizer'] = collections.OrderedDict(update_non_finite=rejected)
    size = float(sum(w.nbytes for w in state['weights']))  # The same as fed_recon.communication's TFF types.
    metrics['communication'] = collections.OrderedDict(download_bytes_per_client=size,
                                                       upload_bytes_per_client=size + 4)
    new_state['weights'] = tuple(w.numpy() for w in new_weights)
    new_state['optimizer'] = tf.nest.map_structure(np.asarray, new_optimizer)
    return RoundOutput(new_state, tf.nest.map_structure(np.asarray, metrics))

  def _split(self, weights):
    """(item embedding, item bias, global mean or None)."""
    return weights[0], weights[1], (weights[2] if self.rating else None)

  def _batch_losses(self, user, q, b, mu, labels, mask):
    """Per-client batch-mean loss [C] (0 for an empty batch), and the batch sizes [C]."""
    return reconstruction.batch_losses(user, q, b, mu, labels, mask, objective=self.model_config.objective,
                                       l2=self.model_config.l2)

  def _reconstruct(self, weights, items, labels, mask, *, learning_rate: float, epochs: int):
    """Every client's local user from zeros, SGD on its batches with the items frozen."""
    embedding, bias, mean = self._split(weights)
    return reconstruction.reconstruct(embedding, bias, mean, items, labels, mask,
                                      objective=self.model_config.objective, l2=self.model_config.l2,
                                      learning_rate=learning_rate, epochs=epochs)

  def _client_fn(self, weights, items, labels, mask):
    """Every client's update (initial - final, zeroed if not finite), its weight, and round metrics."""
    config = self.config
    user = self._reconstruct(weights, items, labels, mask, learning_rate=config.reconstruction_learning_rate,
                             epochs=config.reconstruction_epochs)
    embedding, bias, mean = self._split(weights)
    clients = tf.shape(items)[0]
    rows = tf.shape(embedding)[0]
    offsets = tf.cast(tf.range(clients) * rows, tf.int64)[:, None]
    # Each client's copy of the trainable item-side weights, flattened to [clients * rows, ...].
    local = [tf.tile(embedding, [clients, 1]), tf.tile(bias, [clients, 1])]
    if self.rating:
      local.append(tf.fill([clients, 1, 1], mean))
    loss_sum = tf.constant(0.0)
    loss_batches = tf.constant(0.0)
    for _ in range(config.local_epochs):
      for t in tf.range(tf.shape(items)[1]):
        index = items[:, t] + offsets
        with tf.GradientTape() as tape:
          tape.watch(local)
          losses, counts = self._batch_losses(user, tf.gather(local[0], index), tf.gather(local[1], index),
                                              local[2] if self.rating else None, labels[:, t], mask[:, t])
          total = tf.reduce_sum(losses)
        grads = tape.gradient(total, local)
        local = [self._sgd(v, g, config.client_learning_rate) for v, g in zip(local, grads)]
        nonempty = tf.cast(counts > 0, tf.float32)
        loss_sum += tf.reduce_sum(losses * nonempty)
        loss_batches += tf.reduce_sum(nonempty)
    finals = [tf.reshape(local[0], [clients, rows, -1]), tf.reshape(local[1], [clients, rows, 1])]
    if self.rating:
      finals.append(tf.reshape(local[2], [clients]))
    deltas = [w[None] - f for w, f in zip(weights, finals)]  # TFF's convention: initial - final.
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(tf.reshape(d, [clients, -1])), axis=1)
                                     for d in deltas]), axis=0)
    examples = tf.reduce_sum(mask, axis=[1, 2]) * config.local_epochs
    deltas = [tf.where(self._expand(finite, d), d, 0.0) for d in deltas]  # Non-finite: zeroed, weight 0.
    metrics = collections.OrderedDict(
        client_work=collections.OrderedDict(
            train=collections.OrderedDict(
                loss=tf.math.divide_no_nan(loss_sum, loss_batches), num_examples=tf.reduce_sum(examples),
                non_finite_clients=tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float32))),
            empty_clients=tf.reduce_sum(tf.cast(examples == 0, tf.int32))))
    return deltas, tf.where(finite, examples, 0.0), metrics

  @staticmethod
  def _weighted_mean_fn(deltas, client_weight):
    # Plain division, as TFF's MeanFactory: an all-zero-weight cohort gives NaN, which the server step rejects.
    return tuple(tf.math.divide(tf.tensordot(client_weight, d, axes=1), tf.reduce_sum(client_weight))
                 for d in deltas)

  def _dp_accumulate_fn(self, dp_state, deltas, participates):
    """tensorflow-privacy's query over the cohort: each participating client's update clipped and summed."""
    query = self.dp_query
    params = query.derive_sample_params(dp_state)
    sample_state = query.initial_sample_state(tuple(tf.TensorSpec(d.shape[1:], d.dtype) for d in deltas))
    # The query's own per-record preprocessing (clipping, clipped-count bit), vectorised over clients; its
    # accumulation is a sum (a SumAggregationDPQuery), taken over the clients that took part.
    records = tf.vectorized_map(lambda record: query.preprocess_record(params, record), tuple(deltas))
    weight = tf.cast(participates, deltas[0].dtype)
    return tf.nest.map_structure(
        lambda total, per_client: total + tf.tensordot(tf.cast(weight, per_client.dtype), per_client, axes=1),
        sample_state, records)

  def _server_fn(self, weights, optimizer_state, update):
    update_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
    new_optimizer, new_weights = tf.cond(  # A non-finite update is rejected, as TFF's finalizer does.
        update_finite, lambda: self.optimizer.next(optimizer_state, weights, update),
        lambda: (optimizer_state, weights))
    return tuple(new_weights), new_optimizer, tf.cast(tf.logical_not(update_finite), tf.int32)

  @staticmethod
  def _expand(flags, tensor):
    return tf.reshape(flags, tf.concat([[-1], tf.ones([tf.rank(tensor) - 1], tf.int32)], 0))

  @staticmethod
  def _sgd(value, grad, learning_rate):
    if isinstance(grad, tf.IndexedSlices):  # Embedding rows: touch only the rows a batch used.
      return tf.tensor_scatter_nd_sub(value, grad.indices[:, None], learning_rate * grad.values)
    return value - learning_rate * grad

  # Evaluation.

  def evaluate(self, state, clients) -> dict[str, float]:
    """Metric totals over `clients` (`tasks.EvalClients`), as `fed_recon.TffEngine.evaluate`."""
    items, labels, mask = pad_examples(clients.support, self.batch_size)
    query_items, query_mask = pad_rows([q[0] for q in clients.queries], np.int64)
    query_labels, _ = pad_rows([q[1] for q in clients.queries], np.float32)
    rows = self.model_config.num_items + 1
    seen = np.zeros((len(clients.client_ids), rows), bool)
    relevant = np.zeros_like(seen)
    for c, (s, r) in enumerate(zip(clients.seen, clients.relevant)):
      seen[c, s], relevant[c, r] = True, True
    weights = tuple(tf.constant(w) for w in state['weights'])
    totals = self._evaluate(weights, items, labels, mask, query_items, query_labels, query_mask, seen, relevant)
    return {k: float(v) for k, v in totals.items()}

  def client_losses(self, state, clients) -> np.ndarray:
    """Each client's mean training loss on its support data after reconstruction (membership-inference signal)."""
    items, labels, mask = pad_examples(clients.support, self.batch_size)
    weights = tuple(tf.constant(w) for w in state['weights'])
    return self._client_losses(weights, items, labels, mask).numpy()

  def _client_losses_fn(self, weights, items, labels, mask):
    user = self._reconstruct(weights, items, labels, mask, learning_rate=self.eval_learning_rate,
                             epochs=self.eval_epochs)
    embedding, bias, mean = self._split(weights)
    mu = None if mean is None else tf.fill([tf.shape(items)[0], 1, 1], mean)
    total = tf.zeros([tf.shape(items)[0]])
    for t in tf.range(tf.shape(items)[1]):
      losses, counts = self._batch_losses(user, tf.gather(embedding, items[:, t]), tf.gather(bias, items[:, t]), mu,
                                          labels[:, t], mask[:, t])
      total += losses * counts
    return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=[1, 2]))

  def _evaluate_fn(self, weights, items, labels, mask, query_items, query_labels, query_mask, seen, relevant):
    user = self._reconstruct(weights, items, labels, mask, learning_rate=self.eval_learning_rate,
                             epochs=self.eval_epochs)
    embedding, bias, mean = self._split(weights)
    p_u = user[0]
    b_u = user[1] if self.rating else None

    def score(indices):  # indices [C, ...] -> scores [C, ...]
      flat = tf.reshape(indices, [tf.shape(indices)[0], -1])
      mu = None if mean is None else mean
      out = mf.predict(p_u, tf.gather(embedding, flat), tf.gather(bias, flat), b_u, mu)[..., 0]
      return tf.reshape(out, tf.shape(indices))

    if self.rating:
      sums = client_eval.rating_sums(score(query_items), query_labels, query_mask)
    else:
      sums = client_eval.ranking_sums(score(query_items), query_mask)
    all_items = tf.tile(tf.range(tf.shape(embedding)[0], dtype=tf.int64)[None], [tf.shape(items)[0], 1])
    sums.update(client_eval.catalogue_sums(score(all_items), seen, relevant))
    return sums

