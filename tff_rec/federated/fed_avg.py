"""FedAvg and FedProx over MF with a global user table: a labelled baseline, never a default.

FedAvg (McMahan et al., AISTATS 2017) with TFF's `build_weighted_fed_avg`;
FedProx (Li et al., MLSys 2020) with `build_weighted_fed_prox`. Server
optimizers SGD, Adam and Yogi (Reddi et al., ICLR 2021) from
`tff.learning.optimizers`.

Plain FedAvg has no local parameters, so the user embeddings are a global
table (`mf.build_mf_user_table(users_are_local=False)`): every round ships
every user's embedding to every client and back. That defeats the point of
keeping user data local, which is why Federated Reconstruction is the default;
this engine exists to compare against. Evaluation is the federated
reconstruction evaluation on the trained item side, as for every engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_federated as tff

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).
from tff_rec.federated import compression, lr_schedule
from tff_rec.federated.fed_recon import (SERVER_OPTIMIZERS, TffEngine, check_client_weighting, client_weighting,
                                         item_side_evaluator, server_optimizer)

ITEM_LAYERS = ('item_embedding', 'item_bias', 'global_mean')  # The evaluator's weight order.


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  client_learning_rate: float = 0.1
  local_epochs: int = 1
  proximal_strength: float = 0.0  # > 0: FedProx's mu.
  client_weighting: str = 'num_examples'  # fed_recon.CLIENT_WEIGHTINGS.
  server_lr_schedule: lr_schedule.LrSchedule = lr_schedule.LrSchedule()

  def validate(self) -> None:
    if self.server_optimizer not in SERVER_OPTIMIZERS:
      raise ValueError(f'server_optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}')
    check_client_weighting(self.client_weighting)
    self.server_lr_schedule.validate()
    if self.server_learning_rate <= 0 or self.client_learning_rate <= 0:
      raise ValueError('server_learning_rate and client_learning_rate must be > 0')
    if self.local_epochs < 1 or self.proximal_strength < 0:
      raise ValueError('local_epochs must be >= 1 and proximal_strength >= 0')


class FedAvgEngine(TffEngine):
  """`fed_recon.TffEngine` with FedAvg / FedProx's process (and the item side of its weights)."""

  def __init__(self, task, config: FedAvgConfig, *, eval_learning_rate: float,  # pylint: disable=super-init-not-called
               eval_epochs: int, aggregator: Any = None):
    config.validate()
    if task.user_table != 'global':
      raise ValueError('FedAvg trains a global user table: build the task with user_table="global"')
    self.task, self.config = task, config

    def model_fn():
      bundle = task.model_fn()
      return tff.learning.models.from_keras_model(bundle.model, loss=task.loss_fn(), input_spec=bundle.input_spec)

    client_optimizer = tff.learning.optimizers.build_sgdm(config.client_learning_rate)
    server = server_optimizer(config.server_optimizer, config.server_learning_rate,
                              schedule=config.server_lr_schedule)
    weighting = client_weighting(aggregator, config.client_weighting)
    self._compressed = isinstance(aggregator, compression.CompressedMean)
    if config.proximal_strength > 0:
      self.process = tff.learning.algorithms.build_weighted_fed_prox(
          model_fn, proximal_strength=config.proximal_strength, client_optimizer_fn=client_optimizer,
          server_optimizer_fn=server, model_aggregator=aggregator, client_weighting=weighting)
    else:
      self.process = tff.learning.algorithms.build_weighted_fed_avg(
          model_fn, client_optimizer_fn=client_optimizer, server_optimizer_fn=server, model_aggregator=aggregator,
          client_weighting=weighting)
    layer_names = [v.name.split('/')[0] for v in task.model_fn().model.trainable_variables]
    self._item_positions = [layer_names.index(name) for name in ITEM_LAYERS if name in layer_names]
    self._evaluator = item_side_evaluator(task, eval_learning_rate, eval_epochs)

  def _dataset(self, examples):
    return self.task.client_dataset(examples).repeat(self.config.local_epochs)

  def global_weights(self, state) -> list[np.ndarray]:
    """The item side (what evaluation and export use)."""
    trainable = self.process.get_model_weights(state).trainable
    return [np.asarray(trainable[i]) for i in self._item_positions]
