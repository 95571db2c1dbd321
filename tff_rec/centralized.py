"""Centralized training of the same MF model on the same splits: the baseline federated runs are compared to.

All training users' examples are pooled on one machine and the model (a user
table plus the global item table) is trained by minibatch gradient descent with
a `tff.learning.optimizers` optimizer, whose explicit state checkpoints like a
federated server state. One "round" of the shared training loop is one epoch.
The maths is `mf.predict`, `mf.l2_penalty` and `mf.RegularizedLoss`, as in
federated training, and evaluation is the federated one
(`fed_recon.item_side_evaluator`: users reconstructed from their
support data with the trained item side), so the two differ only in where the
training happens.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from tff_rec.federated import fed_recon, process, sequence_math, shard_math
from tff_rec.federated.fed_recon import RoundOutput
from tff_rec.models import mf, sequence, sequence_towers
from tff_rec.preprocessing import Examples


@dataclasses.dataclass(frozen=True)
class CentralizedConfig:
  optimizer: str = 'adam'
  learning_rate: float = 0.01
  batch_size: int = 256
  user_init_stddev: float = 0.1
  seed: int = 0

  def validate(self) -> None:
    if self.optimizer not in fed_recon.SERVER_OPTIMIZERS:
      raise ValueError(f'optimizer must be one of {fed_recon.SERVER_OPTIMIZERS}, got {self.optimizer!r}')
    if self.learning_rate <= 0 or self.batch_size < 1 or self.user_init_stddev < 0:
      raise ValueError(f'learning_rate and user_init_stddev must be > 0 and batch_size >= 1, got {self}')


class CentralizedEngine:
  """`next(state, examples)` trains one epoch over every user's `examples` (the users in `user_ids` order)."""

  def __init__(self, task, config: CentralizedConfig, *, eval_learning_rate: float, eval_epochs: int):
    config.validate()
    self.task, self.config = task, config
    self.model_config: mf.MFConfig = task.model_config
    self.rating = self.model_config.objective == mf.RATING
    self.user_ids = list(task.train_data.client_ids)
    self.loss = task.loss_fn()
    self.optimizer = fed_recon.server_optimizer(config.optimizer, config.learning_rate)
    # Evaluation is exactly the federated one, on the trained item side.
    self._evaluator = fed_recon.item_side_evaluator(task, eval_learning_rate, eval_epochs)
    self._step = tf.function(self._step_fn, reduce_retracing=True)

  def initialize(self) -> collections.OrderedDict:
    items = process.initial_weights(self.model_config)
    users = np.random.default_rng(self.config.seed).normal(
        0.0, self.config.user_init_stddev, (len(self.user_ids), self.model_config.embedding_dim)).astype(np.float32)
    weights = (users,) + ((np.zeros((len(self.user_ids), 1), np.float32),) if self.rating else ()) + tuple(items)
    specs = tuple(tf.TensorSpec(w.shape, tf.float32) for w in weights)
    return collections.OrderedDict(weights=weights,
                                   optimizer=tf.nest.map_structure(np.asarray, self.optimizer.initialize(specs)),
                                   epoch=np.int64(0))

  def global_weights(self, state) -> list[np.ndarray]:
    """The item side (what a federated server would hold)."""
    return [np.asarray(w) for w in state['weights'][2 if self.rating else 1:]]

  def next(self, state, examples: list[Examples]) -> RoundOutput:
    users = np.concatenate([np.full(len(x), u, np.int64) for u, (x, _) in enumerate(examples)])
    items = np.concatenate([x for x, _ in examples])
    labels = np.concatenate([y for _, y in examples])
    epoch = int(state['epoch'])
    order = np.random.default_rng([self.config.seed, epoch]).permutation(len(items))
    users, items, labels = users[order], items[order], labels[order]
    weights = tuple(tf.constant(w) for w in state['weights'])
    optimizer_state = state['optimizer']
    batch = self.config.batch_size
    loss_sum, batches = 0.0, 0
    for start in range(0, len(items), batch):
      end = start + batch
      optimizer_state, weights, loss = self._step(optimizer_state, weights, users[start:end], items[start:end],
                                                  labels[start:end])
      loss_sum += float(loss)
      batches += 1
    new_state = collections.OrderedDict(weights=tuple(w.numpy() for w in weights),
                                        optimizer=tf.nest.map_structure(np.asarray, optimizer_state),
                                        epoch=np.int64(epoch + 1))
    metrics = collections.OrderedDict(train=collections.OrderedDict(
        loss=loss_sum / max(batches, 1), num_examples=float(len(items))))
    return RoundOutput(new_state, metrics)

  def _step_fn(self, optimizer_state, weights, users, items, labels):
    with tf.GradientTape() as tape:
      tape.watch(weights)
      if self.rating:
        user_table, user_bias, embedding, bias, mean = weights
        b_u, mu = tf.gather(user_bias, users), mean
      else:
        user_table, embedding, bias = weights
        b_u = mu = None
      p_u, q_i = tf.gather(user_table, users), tf.gather(embedding, items)
      score = mf.predict(p_u, q_i, tf.gather(bias, items), b_u, mu)
      predictions = tf.concat([score, mf.l2_penalty(p_u, q_i, self.model_config.l2)], axis=-1)
      loss = self.loss(labels[:, None], predictions)
    grads = tape.gradient(loss, weights)
    optimizer_state, weights = self.optimizer.next(optimizer_state, weights, tuple(tf.convert_to_tensor(g)
                                                                                   for g in grads))
    return optimizer_state, tuple(weights), loss

  def evaluate(self, state, clients) -> dict[str, float]:
    return self._evaluator.evaluate(self.global_weights(state), clients)


class SequenceCentralizedEngine:
  """The sequence two-tower trained centrally: `next(state, examples)` is one epoch over every training user's
  window (`tasks.RecommendationTask.train_examples`, fresh negatives each epoch) in shuffled minibatches of
  `batch_size` users, each step the optimizer on the users' mean next-item loss. The model is the functional Keras
  towers (`sequence_towers.build_towers`), whose maths (`sequence.query_states`, `sequence.next_item_losses`)
  and evaluation (`sequence_math.evaluation_sums`) are the federated ones, so the two differ only in where the
  training happens (tested: a full-batch SGD epoch is a FedSGD round)."""

  def __init__(self, task, config: CentralizedConfig):
    config.validate()
    self.task, self.config = task, config
    self.user_ids = list(task.train_data.client_ids)
    self.optimizer = fed_recon.server_optimizer(config.optimizer, config.learning_rate)
    self.towers = sequence_towers.build_towers(task.sequence_config, task.item_features)
    self._step = tf.function(self._step_fn, reduce_retracing=True)
    shape, features = task.sequence_config, task.item_features
    self._sums = tf.function(lambda weights, data: sequence_math.evaluation_sums(weights, data, shape, features),
                             reduce_retracing=True)

  def initialize(self) -> collections.OrderedDict:
    weights = tuple(sequence.initial_weights(self.task.sequence_config))
    specs = tuple(tf.TensorSpec(w.shape, tf.float32) for w in weights)
    return collections.OrderedDict(weights=weights,
                                   optimizer=tf.nest.map_structure(np.asarray, self.optimizer.initialize(specs)),
                                   epoch=np.int64(0))

  def global_weights(self, state) -> list[np.ndarray]:
    return [np.asarray(w) for w in state['weights']]

  def next(self, state, examples: list[Examples]) -> RoundOutput:
    epoch = int(state['epoch'])
    order = np.random.default_rng([self.config.seed, epoch]).permutation(len(examples))
    self.towers.set_weights(state['weights'])
    optimizer_state, loss_sum, steps = state['optimizer'], 0.0, 0
    for start in range(0, len(order), self.config.batch_size):
      part = order[start:start + self.config.batch_size]
      data = sequence.pack_sequences([examples[u] for u in part], self.task.sequence_config.max_history)
      data = {k: tf.constant(v) for k, v in data.items()}
      optimizer_state, loss = self._step(optimizer_state, data, tf.constant(epoch, tf.int64))
      loss_sum += float(loss)
      steps += 1
    new_state = collections.OrderedDict(weights=tuple(v.numpy() for v in self.towers.variables),
                                        optimizer=tf.nest.map_structure(np.asarray, optimizer_state),
                                        epoch=np.int64(epoch + 1))
    predictions = float(sum(max(int(np.sum(y > 0.5)) - 1, 0) for _, y in examples))
    metrics = collections.OrderedDict(train=collections.OrderedDict(loss=loss_sum / max(steps, 1),
                                                                    num_examples=predictions))
    return RoundOutput(new_state, metrics)

  def _step_fn(self, optimizer_state, data, epoch):
    variables = self.towers.variables
    with tf.GradientTape() as tape:
      # The towers read catalogue indices: the window's local rows mapped back, padding as item 0.
      history = tf.where(data['present'] > 0, tf.gather(data['rows'], data['history'], batch_dims=1), 0)
      seeds = data['seeds'] + tf.stack([tf.constant(0, tf.int64), epoch])
      states = self.towers.query([history, seeds], training=True)
      totals, counts = sequence.next_item_losses(states, self.towers.candidate(data['rows']), data['targets'],
                                                 data['target_mask'], data['positive'], data['candidate_mask'])
      users = tf.reduce_sum(tf.cast(counts > 0, tf.float32))
      loss = tf.math.divide_no_nan(tf.reduce_sum(tf.math.divide_no_nan(totals, counts)), users)
    grads = tape.gradient(loss, variables)
    optimizer_state, weights = self.optimizer.next(optimizer_state, tuple(v.read_value() for v in variables),
                                                   tuple(tf.convert_to_tensor(g) for g in grads))
    for variable, value in zip(variables, weights):
      variable.assign(value)
    return optimizer_state, loss

  def evaluate(self, state, clients) -> dict[str, float]:
    """The federated evaluation's sums (`sequence_math.evaluation_sums`), 100 users at a time."""
    weights = [tf.constant(w) for w in state['weights']]
    shape, num_items = self.task.sequence_config, self.task.model_config.num_items
    return shard_math.sum_over_chunks(lambda data: self._sums(weights, data), clients,
                                      lambda part: sequence_math.eval_arrays(part, shape, num_items), 100)

