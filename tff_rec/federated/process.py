"""Every algorithm as one TFF learning process whose clients are shards of users.

Federated Reconstruction (Singhal et al., "Federated Reconstruction: Partially
Local Federated Learning", NeurIPS 2021) of MF or the two-tower model is the
default; federated ALS (Hu et al. 2008, its item solve as the finalizer), and
FedAvg (McMahan et al., AISTATS 2017) and FedProx (Li et al., MLSys 2020) with
a global user table as the baselines, and FedAvg of the sequence two-tower (no
per-user parameters; `sequence_math`), are the same process with another client
work (`shard_math.ClientSettings`). The process is composed from TFF's four templates
(`tff.learning.templates.compose_learning_process`): TFF's broadcast
distributor, a client work process of ours (`shard_math.user_updates` on every
user of a shard, batched), a shard aggregator (the weighted mean, or user-level
DP), and TFF's
`build_apply_optimizer_finalizer` with the server optimizer (and its rate
schedule). Evaluation is a federated computation of the same shape whose
clients return only metric sums.

A TFF client is a shard of at most `users_per_shard` users (with `shard_examples`, fewer where they are heavy:
`shard_math.size_shards`): each user's update is
computed as TFF's own one-client-per-user process would (tested equal to
`build_fed_recon` at shard size 1 and at any shard size), and the aggregator
(`tff_rec.federated.aggregation`) takes each user's update through its
per-user step (weighting, the DP clip) before the shard sums them, so the sum
over shards is the sum over users. Shard size 1 is the
deployment form: one TFF client per user.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import

from tff_rec import attacks, runtime  # noqa: F401  runtime: the managed TFF context (no leaked worker).
from tff_rec.evaluation import client_eval
from tff_rec.federated import aggregation as aggregation_lib
from tff_rec.federated import als as fed_als
from tff_rec.federated import fed_recon, sequence_math, shard_math
from tff_rec.models import als, mf, sequence, two_tower

_F32 = np.float32


def initial_weights(model_config: mf.MFConfig) -> list[np.ndarray]:
  """The global weights (item embedding, item bias[, mean]) from the Keras model's own initializers."""
  bundle = mf.build_mf(model_config)
  return [v.numpy() for layer in bundle.global_layers for v in layer.trainable_variables]


def weights_type(weights: list[np.ndarray]) -> tff.Type:
  """`tff.learning.models.ModelWeights` of the global weights (all trainable), as TFF's learning processes hold it."""
  return tff.to_type(tff.learning.models.ModelWeights(
      trainable=[tff.TensorType(_F32, w.shape) for w in weights], non_trainable=[]))


def fedavg_initial_weights(task) -> list[np.ndarray]:
  """FedAvg's global weights from the Keras user-table model's initializers: the user table (embedding[, bias])
  first, then the item side as `initial_weights` orders it."""
  variables = {v.name.split('/')[0]: v.numpy() for v in task.model_fn().model.trainable_variables}
  return [variables[name] for name in FEDAVG_LAYERS if name in variables]


FEDAVG_LAYERS = ('user_embedding', 'user_bias', 'item_embedding', 'item_bias', 'global_mean')


def shard_type() -> tff.SequenceType:
  """A shard's training data (`shard_math.pack_shard`) as a one-element sequence (TFF clients hold sequences)."""
  return tff.SequenceType(collections.OrderedDict(
      local=tff.TensorType(np.int32, [None, None, None]), labels=tff.TensorType(_F32, [None, None, None]),
      mask=tff.TensorType(_F32, [None, None, None]), rows=tff.TensorType(np.int64, [None, None]),
      users=tff.TensorType(np.int64, [None]), keys=tff.TensorType(np.int64, [None]),
      malicious=tff.TensorType(_F32, [None])))


def sequence_shard_type() -> tff.SequenceType:
  """A shard's training windows (`sequence.pack_sequences`) as a one-element sequence."""
  two = [None, None]
  return tff.SequenceType(collections.OrderedDict(
      rows=tff.TensorType(np.int64, two), history=tff.TensorType(np.int32, two), present=tff.TensorType(_F32, two),
      targets=tff.TensorType(np.int32, two), target_mask=tff.TensorType(_F32, two),
      positive=tff.TensorType(_F32, two), candidate_mask=tff.TensorType(_F32, two),
      seeds=tff.TensorType(np.int64, [None, 2]), keys=tff.TensorType(np.int64, [None]),
      malicious=tff.TensorType(_F32, [None])))


def as_client_data(tensors: collections.OrderedDict) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensors(tensors)


def build_client_work(model_weights_type: tff.Type, settings: shard_math.ClientSettings,
                      features: two_tower.ItemFeatures | None = None,
                      sequence_config: sequence.SequenceConfig | None = None
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Each shard's users reconstruct and update (`shard_math.user_updates`); their sparse updates go to the aggregator.

  Measurements (summed over shards): `train/loss` (the mean batch loss of
  the item-side steps), `train/num_examples`, `train/non_finite_clients` and
  `empty_clients` (users, whose update is zeroed and weighted 0).
  """
  data_type = shard_type() if sequence_config is None else sequence_shard_type()

  @tff.tensorflow.computation(model_weights_type, data_type)
  @tf.function
  def client_update(weights, dataset):
    shard = dataset.get_single_element()
    if sequence_config is not None:
      updates, sums = sequence_math.user_updates(list(weights.trainable), shard, settings, sequence_config, features)
    else:
      updates, sums = shard_math.user_updates(tuple(weights.trainable), shard, settings, features)
    if settings.poison is not None:  # The shard's malicious users upload what the attack crafts instead.
      updates = attacks.poison_updates(updates, tuple(weights.trainable), shard['malicious'], settings.poison)
    updates['deltas'], updates['rows'] = list(updates['deltas']), list(updates['rows'])
    return tff.learning.templates.ClientResult(update=updates, update_weight=tf.reduce_sum(updates['weight'])), sums

  sums_type = client_update.type_signature.result[1]

  @tff.tensorflow.computation(sums_type)
  def measurements(sums):
    return collections.OrderedDict(
        train=collections.OrderedDict(loss=tf.math.divide_no_nan(sums['loss_sum'], sums['loss_batches']),
                                      num_examples=sums['num_examples'],
                                      non_finite_clients=sums['non_finite_users']),
        empty_clients=tf.cast(sums['empty_users'], tf.int32))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(model_weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    outputs = tff.federated_map(client_update, (weights, data))
    totals = tff.federated_sum(outputs[1])
    return tff.templates.MeasuredProcessOutput(state, outputs[0], tff.federated_map(measurements, totals))

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def client_settings(task, config: fed_recon.ReconConfig, algorithm: str = shard_math.FED_RECON,
                    proximal_strength: float = 0.0) -> shard_math.ClientSettings:
  return shard_math.ClientSettings(
      objective=task.model_config.objective, l2=task.model_config.l2,
      client_learning_rate=config.client_learning_rate,
      reconstruction_learning_rate=config.reconstruction_learning_rate,
      reconstruction_epochs=config.reconstruction_epochs, local_epochs=config.local_epochs,
      client_weighting=config.client_weighting, algorithm=algorithm, proximal_strength=proximal_strength,
      split_dataset=config.split_dataset)


Aggregation = Callable[[list[tf.TensorSpec]], tff.aggregators.UnweightedAggregationFactory]
_CLEAR_KERNELS_EVERY = 10  # Rounds between clearings of TF's eager kernel cache (`ShardEngine.next`).
FED_PROX = 'fed_prox'
ALGORITHMS = (shard_math.FED_RECON, shard_math.FED_AVG, FED_PROX, shard_math.FED_ALS)


def build_learning_process(initial: list[np.ndarray], settings: shard_math.ClientSettings,
                           config: fed_recon.ReconConfig, *, factory: tff.aggregators.UnweightedAggregationFactory,
                           update_specs: list[tf.TensorSpec],
                           finalizer: Callable[[tff.Type, tff.Type], tff.learning.templates.FinalizerProcess] | None
                           = None, features: two_tower.ItemFeatures | None = None,
                           sequence_config: sequence.SequenceConfig | None = None
                           ) -> tff.learning.templates.LearningProcess:
  """TFF's broadcast, the shard client work of `settings`, a shard aggregator, a finalizer.

  `initial`: the global weights (`initial_weights`, `fedavg_initial_weights`).
  `factory`: a shard aggregator of `tff_rec.federated.aggregation` (the
  weighted mean; DP; secure; compression) built for `update_specs`, the
  dense shapes of the aggregated update (the weights', or ALS's statistics).
  `finalizer`: (model weights type, aggregated update type) -> the finalizer;
  default TFF's `build_apply_optimizer_finalizer` with the server optimizer
  and its rate schedule. `features`: the two-tower models' item features; `sequence_config`: the sequence
  two-tower's shape (its client work, `sequence_math.user_updates`).
  """
  config.validate()
  model_weights_type = weights_type(initial)

  @tff.tensorflow.computation
  def initial_model_weights():
    return tff.learning.models.ModelWeights(trainable=[tf.constant(w) for w in initial], non_trainable=[])

  client_work = build_client_work(model_weights_type, settings, features, sequence_config)
  update_type = client_work.next.type_signature.result.result.member.update
  # What every shard aggregator takes.
  aggregation_lib.user_updates_type(update_specs).check_assignable_from(update_type)
  aggregator = tff.aggregators.as_weighted_aggregator(factory).create(update_type, tff.TensorType(_F32))
  if finalizer is None:
    finalizer_process = tff.learning.templates.build_apply_optimizer_finalizer(
        fed_recon.server_optimizer(config.server_optimizer, config.server_learning_rate, config.server_epsilon,
                                   config.server_lr_schedule), model_weights_type)
  else:
    finalizer_process = finalizer(model_weights_type, aggregator.next.type_signature.result.result.member)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights, tff.learning.templates.build_broadcast_process(model_weights_type), client_work,
      aggregator, finalizer_process)


def build_als_finalizer(config: als.AlsConfig, clients: float, prior: np.ndarray | None
                        ) -> Callable[[tff.Type, tff.Type], tff.learning.templates.FinalizerProcess]:
  """Federated ALS's server step as a TFF finalizer: every item's ridge regression on the (noised) mean statistics
  (`als.solve_items`, regularization / `clients` in mean units); a non-finite mean keeps the items
  (`update_non_finite`), as TFF's optimizer finalizer does."""

  def build(model_weights_type: tff.Type, update_type: tff.Type) -> tff.learning.templates.FinalizerProcess:
    @tff.tensorflow.computation(model_weights_type, update_type)
    def solve(weights, update):
      gram, sums = update
      table, bias = weights.trainable
      finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(gram)), tf.reduce_all(tf.math.is_finite(sums)))
      table = tf.cond(finite, lambda: als.solve_items(gram, sums, config.regularization / clients, prior,
                                                      config.prior_regularization), lambda: table)
      return (tff.learning.models.ModelWeights(trainable=[table, bias], non_trainable=[]),
              collections.OrderedDict(update_non_finite=tf.cast(tf.logical_not(finite), tf.int32)))

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(model_weights_type, tff.SERVER),
                               tff.FederatedType(update_type, tff.SERVER))
    def next_fn(state, weights, update):
      out = tff.federated_map(solve, (weights, update))
      return tff.templates.MeasuredProcessOutput(state, out[0], out[1])

    return tff.learning.templates.FinalizerProcess(init_fn, next_fn)

  return build


def eval_type(kind: str, groups: int = 0, sequential: bool = False, targets: int = 0) -> tff.SequenceType:
  """A shard's evaluation data (`shard_math.eval_arrays`) as a one-element sequence (with `groups` > 0, each
  query's membership of that many groups too; with `targets` > 0, that many target items, for ER@10)."""
  query_shape = [None, None, None] if kind == client_eval.RANKING else [None, None]
  three = [None, None, None]
  spec = collections.OrderedDict(
      items=tff.TensorType(np.int64, three), labels=tff.TensorType(_F32, three), mask=tff.TensorType(_F32, three),
      query_items=tff.TensorType(np.int64, query_shape), query_labels=tff.TensorType(_F32, query_shape),
      query_mask=tff.TensorType(_F32, query_shape[:2]), seen=tff.TensorType(np.bool_, [None, None]),
      relevant=tff.TensorType(np.bool_, [None, None]))
  if sequential:  # The sequence two-tower reads each user's history instead of support batches.
    spec = collections.OrderedDict(history=tff.TensorType(np.int64, [None, None]),
                                   present=tff.TensorType(_F32, [None, None]),
                                   **{k: v for k, v in spec.items() if k not in ('items', 'labels', 'mask')})
  if groups:
    spec['query_groups'] = tff.TensorType(_F32, [None, None, groups])
  if targets:
    spec['targets'] = tff.TensorType(np.int64, [None, targets])
  return tff.SequenceType(spec)


def build_evaluation(model_weights_type: tff.Type, kind: str, *, objective: str, l2: float, learning_rate: float,
                     epochs: int, item_side: int = 0, als_config: als.AlsConfig | None = None,
                     features: two_tower.ItemFeatures | None = None, groups: int = 0,
                     sequence_config: sequence.SequenceConfig | None = None, targets: int = 0) -> tff.Computation:
  """(model weights@SERVER, shard data@CLIENTS) -> metric sums@SERVER: every user reconstructed on its shard
  from the item side (the weights from position `item_side` on; FedAvg's user table is not used; with
  `features`, the two-tower model's candidate tower). With `groups` = G > 0, the sums of each group too: [G]
  vectors that `tff.federated_sum` adds up as it does the totals (it needs G fixed: one computation per G)."""
  data_type = eval_type(kind, groups, sequential=sequence_config is not None, targets=targets)

  @tff.tensorflow.computation(model_weights_type, data_type)
  @tf.function
  def client_sums(weights, dataset):
    if sequence_config is not None:
      return sequence_math.evaluation_sums(list(weights.trainable), dataset.get_single_element(), sequence_config,
                                           features)
    if features is not None:
      return shard_math.two_tower_evaluation_sums(tuple(weights.trainable), features, dataset.get_single_element(),
                                                  learning_rate=learning_rate, epochs=epochs)
    return shard_math.evaluation_sums(tuple(weights.trainable)[item_side:], dataset.get_single_element(),
                                      objective=objective, als_config=als_config,
                                      l2=l2, learning_rate=learning_rate, epochs=epochs)

  @tff.federated_computation(tff.FederatedType(model_weights_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def evaluate(weights, data):
    return tff.federated_sum(tff.federated_map(client_sums, (tff.federated_broadcast(weights), data)))

  return evaluate


class ShardEngine:
  """MF or the two-tower model on TFF's runtime, a TFF client per shard of users; the interface of the other engines.

  `algorithm`: `fed_recon` (the task's users are local rows; the two-tower's
  query towers likewise), `fed_avg` or
  `fed_prox` (with `proximal_strength`; the task's user table is global; the
  sequence two-tower: `fed_avg` of all its weights, it has no users' rows), or
  `fed_als` (with `als_config` and `clients`, the expected cohort its mean
  statistics are over; `config`'s server optimizer does not apply).
  """

  _communication: dict[str, float] | None = None
  # Called with each round's aggregator measurements (distributed DP checks them against its accounting).
  round_check: Callable[[Any], None] | None = None
  _rounds_run = 0

  def __init__(self, task, config: fed_recon.ReconConfig, *, users_per_shard: int, eval_learning_rate: float,
               eval_epochs: int, aggregation: Aggregation = aggregation_lib.MeanFactory,
               algorithm: str = shard_math.FED_RECON, proximal_strength: float = 0.0,
               als_config: als.AlsConfig | None = None, clients: float = 0.0,
               poison: attacks.Poison | None = None, shard_examples: int = 0):
    if users_per_shard < 1:
      raise ValueError(f'users_per_shard must be >= 1, got {users_per_shard}')
    if shard_examples < 0:
      raise ValueError(f'shard_examples must be >= 0, got {shard_examples}')
    if algorithm not in ALGORITHMS:
      raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
    self._sequence = task.sequence_config if task.model_name == 'sequence_two_tower' else None
    if self._sequence is not None and algorithm != shard_math.FED_AVG:
      raise ValueError(f'the sequence two-tower has no per-user parameters and trains with fed_avg, got {algorithm}')
    global_users = algorithm in (shard_math.FED_AVG, FED_PROX) and self._sequence is None
    if (task.user_table == 'global') != global_users:
      raise ValueError(f'{algorithm} needs a task whose user table is '
                       f'{"global" if global_users else "a local row (user_table=None)"}, got {task.user_table!r}')
    if (algorithm == FED_PROX) != (proximal_strength > 0):
      raise ValueError(f'proximal_strength must be > 0 exactly for fed_prox, got {proximal_strength} for {algorithm}')
    self.task, self.users_per_shard, self.shard_examples = task, users_per_shard, shard_examples
    kind = shard_math.FED_AVG if global_users else algorithm
    towers = task.model_name == 'two_tower'
    if towers and algorithm != shard_math.FED_RECON:
      raise ValueError(f'the two-tower model trains with fed_recon on the shard process, got {algorithm}')
    self.settings = dataclasses.replace(client_settings(task, config, kind, proximal_strength), als=als_config,
                                        two_tower=towers, poison=poison)
    self._features = task.item_features if towers else None
    if self._sequence is not None:  # Every weight global: the item side and the query tower.
      self._features = task.item_features
      initial = sequence.initial_weights(self._sequence)
    elif towers:  # The candidate tower (item-id embedding, genre projection, year embedding): all global.
      initial = [v.numpy() for layer in task.model_fn().global_layers for v in layer.trainable_variables]
    else:
      initial = fedavg_initial_weights(task) if global_users else initial_weights(task.model_config)
    self._item_side = 0 if towers or self._sequence else len(initial) - (3 if task.objective == mf.RATING else 2)
    self._eval = dict(objective=self.settings.objective, l2=self.settings.l2, learning_rate=eval_learning_rate,
                      epochs=eval_epochs)
    specs, finalizer = [tf.TensorSpec(w.shape, _F32) for w in initial], None
    if algorithm == shard_math.FED_ALS:
      if als_config is None or clients <= 0 or task.objective != mf.IMPLICIT:
        raise ValueError('fed_als needs implicit feedback, als_config and the expected cohort (clients > 0)')
      rows, dim = initial[0].shape
      specs = [tf.TensorSpec([dim, dim], _F32), tf.TensorSpec([rows, dim], _F32)]
      finalizer = build_als_finalizer(als_config, float(clients), fed_als.item_prior(task, als_config))
      self._eval['als_config'] = als_config
      # A user uploads its statistics: x x^T and the [rows, d] table, float32 (as a dense update would).
      self._communication = {'communication/download_bytes_per_client': float(4 * sum(w.size for w in initial)),
                             'communication/upload_bytes_per_client': float(4 * (dim * dim + rows * dim))}
    self._factory = aggregation(specs)
    self._specs = specs
    self._table_rows = self._rows_per_user(algorithm, self._item_side, specs, towers or self._sequence is not None)
    self.process = build_learning_process(initial, self.settings, config, factory=self._factory,
                                          update_specs=specs, finalizer=finalizer, features=self._features,
                                          sequence_config=self._sequence)
    self._weights_type = self.process.get_model_weights.type_signature.result
    self._evaluations: dict[tuple[int, int], tff.Computation] = {}  # `evaluation`'s, built on first use.
    if self._sequence is not None:
      features, shape = self._features, self._sequence
      self._losses = tf.function(lambda weights, data: sequence_math.support_losses(weights, data, shape, features),
                                 reduce_retracing=True)
    elif towers:
      features = self._features  # Constants of the graph, not arguments to trace.
      self._losses = tf.function(lambda *data: shard_math.two_tower_support_losses(
          *data, features=features, learning_rate=eval_learning_rate, epochs=eval_epochs), reduce_retracing=True)
    else:
      self._losses = tf.function(functools.partial(shard_math.support_losses, **self._eval), reduce_retracing=True)

  def initialize(self):
    return self.process.initialize()

  def next(self, state, examples: list) -> fed_recon.RoundOutput:
    """One round on the cohort's `examples` (one `preprocessing.Examples` per user), cut into shards."""
    batch_size = self.task.data_config.batch_size
    parts = shard_math.shard_indices(examples, self.users_per_shard, self.shard_examples)
    malicious = getattr(examples, 'malicious', np.zeros(len(examples), bool))  # `attacks.CohortExamples`'.
    shards = []
    for part in parts:
      if self._sequence is not None:
        shard = self._pack_sequences([examples[u] for u in part], part)
      else:
        shard = shard_math.pack_shard([examples[u] for u in part], batch_size, keys=part)
      shard['malicious'] = malicious[np.asarray(part, np.int64)].astype(np.float32)
      shards.append(as_client_data(shard))
    output = self.process.next(state, shards)
    self._rounds_run += 1
    if self._rounds_run % _CLEAR_KERNELS_EVERY == 0:
      # Written by hand: TF's eager context keeps a kernel per op and shape, and `from_tensors` of each new shard
      # shape (shards differ in users, batches and rows every round) adds one, about 55 KB: this process grew
      # 126 MB in 500 demo rounds (docs/log.md, 2026-12-01). Dropping them now and then bounds it; the next round
      # makes the few it needs again.
      context.context().clear_kernel_cache()
    if self.round_check is not None:
      self.round_check(output.metrics['aggregator'])
    if self._communication is None:  # Per user, fixed by the process's types.
      self._communication = fed_recon.communication(self.process)
    communication = dict(self._communication)
    if isinstance(self._factory, aggregation_lib.CompressedMeanFactory):
      communication['communication/upload_bytes_per_client'] = self._compressed_upload_bytes(examples)
    return fed_recon.RoundOutput(output.state, {**output.metrics, **communication})

  def _pack_sequences(self, examples: list, keys) -> collections.OrderedDict:
    data = sequence.pack_sequences(examples, self._sequence.max_history)
    data['keys'] = np.asarray(keys, np.int64)
    return data

  @staticmethod
  def _rows_per_user(algorithm: str, item_side: int, specs: list[tf.TensorSpec], towers: bool) -> list[str]:
    """What each update leaf's rows are for a user: 'items' (those it touched), 'one' (its user-table row), 'all'
    (ALS's d x d statistics; the two-tower's genre projection and year embedding) or 'scalar'."""
    kinds = []
    for i, spec in enumerate(specs):
      if not spec.shape.rank:
        kinds.append('scalar')
      elif (algorithm == shard_math.FED_ALS and i == 0) or (towers and i > 0):  # The two-tower's small tables.
        kinds.append('all')
      elif i < item_side:  # FedAvg's user table.
        kinds.append('one')
      else:
        kinds.append('items')
    return kinds

  def _compressed_upload_bytes(self, examples) -> float:
    """The mean bytes a user of the round uploads under `CompressedMeanFactory`: per quantised table, its rows'
    indices (int32) and one byte a value, plus the range (two float32); other leaves float32; the weight."""
    totals = []
    for items, _ in examples:
      touched = len(np.unique(items[:, 1] if np.ndim(items) == 2 else items))
      total = 4.0
      for spec, kind, quantised in zip(self._specs, self._table_rows, self._factory.compressed()):
        width = spec.shape.num_elements() // (spec.shape[0] if spec.shape.rank else 1)
        rows = {'items': touched, 'one': 1, 'all': spec.shape[0] if spec.shape.rank else 1, 'scalar': 1}[kind]
        total += rows * (4 + width) + 8 if quantised else 4 * spec.shape.num_elements()
      totals.append(total)
    return float(np.mean(totals)) if totals else 0.0

  def evaluate(self, state, clients) -> dict[str, float]:
    """Metric totals over `clients` (`tasks.EvalClients`), each shard of them a TFF client."""
    num_items = self.task.model_config.num_items
    if self._sequence is not None:
      data = [as_client_data(sequence_math.eval_arrays(part, self._sequence, num_items))
              for part in shard_math.split_eval(clients, self.users_per_shard, self.shard_examples)]
    else:
      data = [as_client_data(shard_math.eval_arrays(part, self.task.data_config.batch_size, num_items))
              for part in shard_math.split_eval(clients, self.users_per_shard, self.shard_examples)]
    groups = len(clients.group_names) if clients.groups is not None else 0
    targets = len(clients.targets) if clients.targets is not None else 0
    return fed_recon.as_numpy(self.evaluation(groups, targets)(self.process.get_model_weights(state), data))

  def evaluation(self, groups: int = 0, targets: int = 0) -> tff.Computation:
    """The federated evaluation (`build_evaluation`), with the sums of `groups` groups (0: none) and the
    exposure of `targets` target items (0: none)."""
    if (groups, targets) not in self._evaluations:
      self._evaluations[groups, targets] = build_evaluation(
          self._weights_type, self.task.eval_kind, item_side=self._item_side, features=self._features,
          groups=groups, sequence_config=self._sequence, targets=targets, **self._eval)
    return self._evaluations[groups, targets]

  def global_weights(self, state) -> list[np.ndarray]:
    """The item side (what evaluation and export use)."""
    return [np.asarray(w) for w in self.process.get_model_weights(state).trainable[self._item_side:]]

  def user_table(self, state) -> list[np.ndarray]:
    """FedAvg's global user table (embedding[, bias]); empty for Fed Recon, whose users never leave clients."""
    return [np.asarray(w) for w in self.process.get_model_weights(state).trainable[:self._item_side]]

  def client_losses(self, state, clients) -> np.ndarray:
    """Each user's mean support loss after reconstruction (the membership-inference audit's signal, simulated),
    computed a shard of alike users at a time: all users padded to the longest one's support at once took about
    1 MB a user (6.2 GB at 6,000 users with a power-law activity tail)."""
    weights = tuple(tf.constant(w) for w in self.global_weights(state))
    if self._sequence is not None:  # A window of each user's history with fixed negatives.
      examples = sequence_math.support_examples(clients.seen, self._sequence,
                                                self.task.data_config.num_negatives * self._sequence.max_history, 0)
      losses = np.zeros(len(examples), np.float32)
      for part in shard_math.size_shards(examples, self.users_per_shard, self.shard_examples):
        data = {k: tf.constant(v) for k, v in self._pack_sequences([examples[u] for u in part], part).items()}
        losses[part] = self._losses(list(weights), data).numpy()
      return losses
    losses = np.zeros(len(clients.support), np.float32)
    for part in shard_math.size_shards(clients.support, self.users_per_shard, self.shard_examples):
      items, labels, mask = shard_math.pack_batches([clients.support[u] for u in part],
                                                    self.task.data_config.batch_size)
      losses[part] = self._losses(weights, items, labels, mask).numpy()
    return losses
