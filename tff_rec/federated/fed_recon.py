"""Federated Reconstruction training and federated evaluation processes.

Singhal et al., "Federated Reconstruction: Partially Local Federated Learning",
NeurIPS 2021. Training is TFF's `tff.learning.algorithms.build_fed_recon`; the
evaluation is a small federated computation of ours that runs
`client_eval.evaluate_client` on every client and sums the results at the
server, so only aggregated metric sums ever leave the clients.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).
from tff_rec.evaluation import client_eval
from tff_rec.federated import compression, lr_schedule, shard_math
from tff_rec.models.mf import ModelBundle

SERVER_OPTIMIZERS = ('sgd', 'adam', 'yogi')
# How the server averages client updates (`tff.learning.ClientWeighting`). With a fixed number of local epochs a
# client's update is a sum over its examples, so NUM_EXAMPLES counts each example of a client with n examples n
# times over (FedAvg's objective inconsistency, Wang et al., "Tackling the Objective Inconsistency Problem in
# Heterogeneous Federated Optimization", NeurIPS 2020); UNIFORM counts every example once, as centralized SGD does.
CLIENT_WEIGHTINGS = ('num_examples', 'uniform')


@dataclasses.dataclass(frozen=True)
class ReconConfig:
  server_optimizer: str = 'adam'
  server_learning_rate: float = 0.01
  client_learning_rate: float = 0.1
  reconstruction_learning_rate: float = 0.1
  reconstruction_epochs: int = 1
  local_epochs: int = 1
  # True: alternate batches between reconstruction and training; False: both
  # stages see all of the client's data (reconstruction first).
  split_dataset: bool = True
  # Adam / Yogi epsilon: the floor of the per-coordinate step normalisation. Under DP noise a larger value keeps
  # coordinates that carry only noise from taking full-size steps.
  server_epsilon: float = 1e-7
  client_weighting: str = 'num_examples'  # CLIENT_WEIGHTINGS; an unweighted (DP, secure) aggregator is uniform.
  server_lr_schedule: lr_schedule.LrSchedule = lr_schedule.LrSchedule()  # The server rate over the rounds.

  def validate(self) -> None:
    if self.server_optimizer not in SERVER_OPTIMIZERS:
      raise ValueError(f'server_optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}')
    check_client_weighting(self.client_weighting)
    self.server_lr_schedule.validate()
    for name in ('server_learning_rate', 'client_learning_rate', 'reconstruction_learning_rate', 'server_epsilon'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
    if self.reconstruction_epochs < 1 or self.local_epochs < 1:
      raise ValueError('reconstruction_epochs and local_epochs must be >= 1')


def server_optimizer(name: str, learning_rate: float, epsilon: float = 1e-7,
                     schedule: lr_schedule.LrSchedule = lr_schedule.LrSchedule()) -> tff.learning.optimizers.Optimizer:
  """The `tff.learning.optimizers` server optimizer `name`, its rate following `schedule` (constant by default)."""
  if name == 'sgd':
    optimizer = tff.learning.optimizers.build_sgdm(learning_rate)
  elif name == 'adam':
    optimizer = tff.learning.optimizers.build_adam(learning_rate, epsilon=epsilon)
  elif name == 'yogi':
    optimizer = tff.learning.optimizers.build_yogi(learning_rate, epsilon=epsilon)
  else:
    raise ValueError(f'unknown server optimizer {name!r}')
  return lr_schedule.apply(optimizer, schedule, learning_rate)


def reconstruction_model(bundle: ModelBundle) -> tff.learning.models.ReconstructionModel:
  return tff.learning.models.ReconstructionModel.from_keras_model_and_layers(
      bundle.model, global_layers=bundle.global_layers, local_layers=bundle.local_layers,
      input_spec=bundle.input_spec)


class NonFiniteClients(tf.keras.metrics.Metric):
  """1 if any of a client's training batches had non-finite labels or predictions; summed by TFF, a count.

  TFF's client work zeroes a non-finite update (and gives it weight 0) without
  reporting it; this metric makes the count visible in the round metrics
  (`client_work/train/non_finite_clients`), like the shard process's. A
  non-finite loss needs a non-finite label or prediction (the losses here are
  finite on finite inputs).
  """

  def __init__(self, name: str = 'non_finite_clients', **kwargs):
    super().__init__(name=name, **kwargs)
    self.flag = self.add_weight(name='flag', initializer='zeros')

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight
    finite = tf.reduce_all(tf.math.is_finite(y_pred)) & tf.reduce_all(tf.math.is_finite(tf.cast(y_true, tf.float32)))
    self.flag.assign(tf.maximum(self.flag, 1.0 - tf.cast(finite, self.flag.dtype)))

  def result(self):
    return self.flag


def build_training_process(model_fn: Callable[[], ModelBundle], loss_fn: Callable[[], tf.keras.losses.Loss],
                           config: ReconConfig, aggregator: Any = None) -> tff.learning.templates.LearningProcess:
  """Fed Recon: per round, each client reconstructs its user, then updates the items.

  With `split_dataset`, even batches reconstruct the local user and odd ones
  train the global item table; otherwise both stages use every batch.
  """
  config.validate()
  split_fn = tff.learning.models.ReconstructionModel.build_dataset_split_fn(
      recon_epochs=config.reconstruction_epochs, post_recon_epochs=config.local_epochs,
      split_dataset=config.split_dataset)
  return tff.learning.algorithms.build_fed_recon(
      lambda: reconstruction_model(model_fn()),
      loss_fn=loss_fn,
      server_optimizer_fn=server_optimizer(config.server_optimizer, config.server_learning_rate,
                                           config.server_epsilon, config.server_lr_schedule),
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(config.client_learning_rate),
      reconstruction_optimizer_fn=tff.learning.optimizers.build_sgdm(config.reconstruction_learning_rate),
      dataset_split_fn=split_fn,
      metrics_fn=lambda: [NonFiniteClients()],
      model_aggregator_factory=aggregator,  # None: TFF's example-weighted mean; a DP factory: clipped and noised.
      client_weighting=client_weighting(aggregator, config.client_weighting),
  )


def check_client_weighting(weighting: str) -> None:
  if weighting not in CLIENT_WEIGHTINGS:
    raise ValueError(f'--client_weighting must be one of {CLIENT_WEIGHTINGS}, got {weighting!r}')


def client_weighting(aggregator: Any, weighting: str = 'num_examples') -> tff.learning.ClientWeighting:
  """`weighting`, except that an unweighted aggregator (DP, secure sum: every client counts once, its update
  bounded) is always uniform."""
  if isinstance(aggregator, tff.aggregators.UnweightedAggregationFactory) or weighting == 'uniform':
    return tff.learning.ClientWeighting.UNIFORM
  return tff.learning.ClientWeighting.NUM_EXAMPLES


def batch_type() -> tff.Type:
  """The TFF type of one (item indices, labels) batch, `mf.input_spec()`."""
  return tff.StructWithPythonType(
      [tff.TensorType(np.int64, [None]), tff.TensorType(np.float32, [None, 1])], tuple)


def build_evaluation(model_fn: Callable[[], ModelBundle], loss_fn: Callable[[], tf.keras.losses.Loss],
                     weights_type: tff.Type, kind: str, *, num_items: int, learning_rate: float,
                     epochs: int) -> tff.Computation:
  """A federated computation (global weights@SERVER, client data@CLIENTS) -> metric sums@SERVER.

  Client data is `OrderedDict(support, queries, seen, relevant)`
  (`tasks.RecommendationTask.eval_datasets`); see `client_eval.evaluate_client`.
  """
  data_type = tff.to_type(collections.OrderedDict(
      support=tff.SequenceType(batch_type()), queries=tff.SequenceType(batch_type()),
      seen=tff.TensorType(np.int64, [None]), relevant=tff.TensorType(np.int64, [None])))

  @tff.tensorflow.computation(weights_type, data_type)
  @tf.function  # Orders the stateful steps; graph mode alone would prune them (as in TFF's fed_recon).
  def client_fn(weights, data):
    with tf.init_scope():
      bundle = model_fn()
      loss = loss_fn()
    model_weights = tff.learning.models.ReconstructionModel.get_global_variables(reconstruction_model(bundle))
    tf.nest.map_structure(lambda v, w: v.assign(w), model_weights, weights)
    return client_eval.evaluate_client(bundle, data, kind, loss, num_items=num_items,
                                       learning_rate=learning_rate, epochs=epochs)

  @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER), tff.FederatedType(data_type, tff.CLIENTS))
  def evaluate(weights, data):
    return tff.federated_sum(tff.federated_map(client_fn, (tff.federated_broadcast(weights), data)))

  return evaluate


def as_numpy(totals) -> dict[str, Any]:
  """A computation's metric sums: floats, and arrays for the per-group sums."""
  return {k: float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64) for k, v in totals.items()}


def type_bytes(type_spec: tff.Type) -> int:
  """Bytes of a fixed-shape TFF type's tensors (what a value of it costs on the wire, uncompressed)."""
  tensors = tf.nest.flatten(tff.types.structure_from_tensor_type_tree(lambda t: t, type_spec))
  return sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in tensors)


def communication(process, compressed: bool = False) -> dict[str, float]:
  """Bytes per client per round: the broadcast model weights down; the trainable update and its weight up.

  `compressed`: the update goes through `compression.aggregator()`'s encoders (measured by `compression.upload_bytes`).
  """
  weights = process.get_model_weights.type_signature.result
  if compressed:
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in tf.nest.flatten(
        tff.types.structure_from_tensor_type_tree(lambda t: t, weights.trainable))]
    upload = compression.upload_bytes(specs)
  else:
    upload = type_bytes(weights.trainable) + 4
  return {'communication/download_bytes_per_client': float(type_bytes(weights)),
          'communication/upload_bytes_per_client': float(upload)}


def item_side_evaluator(task, learning_rate: float, epochs: int) -> shard_math.ItemSideEvaluator:
  """The per-user evaluation of any engine's item side (`shard_math.ItemSideEvaluator`).

  The federated evaluation's maths, tested equal to `build_evaluation`; it
  evaluates users one by one whatever the training clients were (platforms, a
  global user table).
  """
  return shard_math.ItemSideEvaluator(task.model_config, task.data_config.batch_size, learning_rate=learning_rate,
                                      epochs=epochs)


@dataclasses.dataclass(frozen=True)
class RoundOutput:
  state: Any
  metrics: Mapping[str, Any]


class TffEngine:
  """Fed Recon run by TFF's runtime: `build_fed_recon` rounds and `build_evaluation`.

  The reference engine: every client is a separate TFF client computation.
  Shares its interface (initialize, next, evaluate, global_weights) with
  `process.ShardEngine`.
  """

  _communication: dict[str, float] | None = None  # Bytes per client; set on the first round.

  def __init__(self, task, config: ReconConfig, *, eval_learning_rate: float, eval_epochs: int,
               aggregator: Any = None):
    self.task = task
    self._compressed = isinstance(aggregator, compression.CompressedMean)
    self.process = build_training_process(task.model_fn, task.loss_fn, config, aggregator)
    if task.user_table is None:
      self._evaluation = build_evaluation(
          task.model_fn, task.loss_fn, self.process.get_model_weights.type_signature.result, task.eval_kind,
          num_items=task.model_config.num_items, learning_rate=eval_learning_rate, epochs=eval_epochs)
      self._evaluator = None
    else:  # A platform's users: evaluated per user, on the item side.
      self._evaluator = item_side_evaluator(task, eval_learning_rate, eval_epochs)

  def initialize(self):
    return self.process.initialize()

  def next(self, state, examples: list) -> RoundOutput:
    """One round on the cohort's `examples` (one `preprocessing.Examples` per client)."""
    kept = [e for e in examples if len(e[0])]  # An empty client is skipped, and counted.
    empty = {'client_work/empty_clients': len(examples) - len(kept)}
    if not kept:
      return RoundOutput(state, empty)
    output = self.process.next(state, [self._dataset(e) for e in kept])
    if self._communication is None:  # Fixed by the process's types: computed once.
      self._communication = communication(self.process, compressed=self._compressed)
    return RoundOutput(output.state, {**output.metrics, **empty, **self._communication})

  def _dataset(self, examples) -> tf.data.Dataset:
    return self.task.client_dataset(examples)

  def evaluate(self, state, clients) -> dict[str, float]:
    """Metric totals (sums and counts) over `clients` (`tasks.EvalClients`)."""
    if self._evaluator is not None:
      return self._evaluator.evaluate(self.global_weights(state), clients)
    return as_numpy(self._evaluation(self.process.get_model_weights(state), self.task.eval_datasets(clients)))

  def global_weights(self, state) -> list[np.ndarray]:
    return [np.asarray(w) for w in self.process.get_model_weights(state).trainable]
