r"""Trains a federated recommender and evaluates it.

  python -m experiments.train_federated --flagfile=configs/fedrecon_mf_movielens.flags

Writes to `<root_output_dir>/<experiment_name>/`: hparams.json, metrics.csv,
tensorboard/, checkpoints/, final_metrics.json and learning_curve.png. Running
again with the same flags resumes after the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import app, flags

from experiments import common_flags
from tff_rec import experiment, tasks, training_loop
from tff_rec.federated import fed_recon, sampling, vectorized

ENGINES = {'vectorized': vectorized.VectorizedEngine, 'tff': fed_recon.TffEngine}

# Algorithm.
_ALGORITHM = flags.DEFINE_enum('algorithm', 'fed_recon', ['fed_recon'], 'Federated algorithm.')
_ENGINE = flags.DEFINE_enum('engine', 'vectorized', list(ENGINES),
                            'vectorized: the whole cohort in one TF graph (fast; same model as tff, tested); '
                            'tff: TFF\'s build_fed_recon, one TFF client computation per client (reference).')
_ROUNDS = flags.DEFINE_integer('rounds', 100, 'Training rounds.')
_CLIENTS = flags.DEFINE_integer('clients_per_round', 100, 'Uniform sampling without replacement (0: use rate).')
_RATE = flags.DEFINE_float('client_sampling_rate', 0.0, 'Poisson sampling rate (with --clients_per_round=0).')
_LOCAL_EPOCHS = flags.DEFINE_integer('local_epochs', 1, 'Client epochs on the global (item) parameters.')
_RECON_EPOCHS = flags.DEFINE_integer('reconstruction_epochs', 1, 'Client epochs reconstructing the local user.')
_SPLIT = flags.DEFINE_bool('split_dataset', False, 'Alternate batches between reconstruction and training '
                           '(else both stages use all of a client\'s data).')
# Optimizers.
_SERVER_OPT = flags.DEFINE_enum('server_optimizer', 'sgd', list(fed_recon.SERVER_OPTIMIZERS), 'Server optimizer.')
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0, 'Server learning rate.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 1.0, 'Client SGD learning rate (global parameters).')


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a run does, parsed once from flags."""

  data: tasks.DataConfig
  objective: str
  embedding_dim: int
  l2: float
  init_stddev: float
  algorithm: str
  engine: str
  recon: fed_recon.ReconConfig
  sampling: sampling.SamplingConfig
  loop: training_loop.LoopConfig
  eval_reconstruction_epochs: int
  output_dir: str
  seed: int

  def validate(self) -> None:
    """Contradictions that must fail before any training."""
    self.data.validate()
    self.recon.validate()
    self.loop.validate()
    if self.data.view == 'cross_silo' and self.algorithm == 'fed_recon':
      raise ValueError('--view=cross_silo with --algorithm=fed_recon: a platform client holds many users, but '
                       "this MF model's local parameters are a single user's row; use --view=cross_device")
    if self.engine == 'vectorized' and self.recon.split_dataset:
      raise ValueError('--engine=vectorized implements --nosplit_dataset only; use --engine=tff for --split_dataset')
    if self.eval_reconstruction_epochs < 1:
      raise ValueError('--eval_reconstruction_epochs must be >= 1')


def config_from_flags() -> ExperimentConfig:
  return ExperimentConfig(
      data=common_flags.data_config(), **common_flags.model_kwargs(),
      algorithm=_ALGORITHM.value, engine=_ENGINE.value,
      recon=fed_recon.ReconConfig(_SERVER_OPT.value, _SERVER_LR.value, _CLIENT_LR.value,
                                  common_flags.RECON_LR.value, _RECON_EPOCHS.value, _LOCAL_EPOCHS.value,
                                  _SPLIT.value),
      sampling=sampling.SamplingConfig(_CLIENTS.value, _RATE.value),
      loop=common_flags.loop_config(_ROUNDS.value),
      eval_reconstruction_epochs=common_flags.EVAL_RECON_EPOCHS.value,
      output_dir=common_flags.output_dir())


def build_task(config: ExperimentConfig) -> tasks.RecommendationTask:
  """Validates `config` against the data and builds the task; raises before any training."""
  config.validate()
  task = tasks.RecommendationTask(config.data, objective=config.objective, embedding_dim=config.embedding_dim,
                                  l2=config.l2, init_stddev=config.init_stddev, seed=config.seed)
  config.sampling.validate(len(task.train_data.client_ids))
  return task


def run(config: ExperimentConfig, task: tasks.RecommendationTask) -> dict[str, Any]:
  """Trains and evaluates; returns the final metrics (also in final_metrics.json)."""
  engine = ENGINES[config.engine](task, config.recon, eval_learning_rate=config.recon.reconstruction_learning_rate,
                                  eval_epochs=config.eval_reconstruction_epochs)
  return experiment.run(
      engine, task,
      cohort_fn=lambda r: sampling.sample_clients(task.train_data.client_ids, r, config.seed, config.sampling),
      seed=config.seed, loop=config.loop, output_dir=config.output_dir, hparams=dataclasses.asdict(config),
      loss_key='client_work/train/loss')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  return experiment.main('train_federated', lambda: build_task(config), lambda task: run(config, task),
                         config.output_dir)


if __name__ == '__main__':
  app.run(main)
