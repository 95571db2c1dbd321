r"""Trains a federated recommender and evaluates it.

  python -m experiments.train_federated --flagfile=configs/fedrecon_mf_movielens.flags

Writes to `<root_output_dir>/<experiment_name>/`: hparams.json, metrics.csv,
tensorboard/, checkpoints/, final_metrics.json and learning_curve.png. Running
again with the same flags resumes after the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

from absl import app, flags

from tff_rec import atomic, runtime, tasks, training_loop
from tff_rec.data import schema
from tff_rec.evaluation import client_eval
from tff_rec.federated import fed_recon, sampling, vectorized
from tff_rec.models import mf
from tff_rec.plotting import learning_curve

ENGINES = {'vectorized': vectorized.VectorizedEngine, 'tff': fed_recon.TffEngine}

# Data.
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/movielens_100k', 'A prepared dataset directory.')
_VIEW = flags.DEFINE_enum('view', 'cross_device', sorted(tasks.VIEWS), 'Client = user, or client = platform.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Client batch size.')
_NEGATIVES = flags.DEFINE_integer('num_negatives', 4, 'Implicit objective: sampled negatives per positive.')
# Model.
_OBJECTIVE = flags.DEFINE_enum('objective', mf.IMPLICIT, list(mf.OBJECTIVES),
                               'implicit: ranking (HR/NDCG, LOO-99); rating: explicit ratings (RMSE/MAE).')
_DIM = flags.DEFINE_integer('embedding_dim', 32, 'Embedding dimension.')
_L2 = flags.DEFINE_float('l2', 0.0, 'L2 regularization of the embeddings a batch touches.')
_INIT = flags.DEFINE_float('init_stddev', 0.1, 'Stddev of the item-embedding initializer.')
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
_RECON_LR = flags.DEFINE_float('reconstruction_learning_rate', 1.0, 'Client SGD learning rate (local user).')
# Evaluation.
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 10, 'Validate every this many rounds.')
_EVAL_RECON_EPOCHS = flags.DEFINE_integer('eval_reconstruction_epochs', 3, 'Reconstruction epochs at evaluation.')
# Output.
_ROOT = flags.DEFINE_string('root_output_dir', 'runs', 'Root of all experiment outputs.')
_NAME = flags.DEFINE_string('experiment_name', None, 'Output subdirectory (required).')
_CHECKPOINT_EVERY = flags.DEFINE_integer('checkpoint_every', 10, 'Checkpoint every this many rounds.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of initialization, sampling, negatives and shuffling.')

flags.mark_flag_as_required('experiment_name')
# The progress bar and the results table are the output; TFF's per-checkpoint
# INFO lines would interleave with the bar. --verbosity=0 brings them back.
flags.FLAGS.set_default('verbosity', -1)


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
      data=tasks.DataConfig(_DATA_DIR.value, _VIEW.value, _BATCH.value, _NEGATIVES.value),
      objective=_OBJECTIVE.value, embedding_dim=_DIM.value, l2=_L2.value, init_stddev=_INIT.value,
      algorithm=_ALGORITHM.value, engine=_ENGINE.value,
      recon=fed_recon.ReconConfig(_SERVER_OPT.value, _SERVER_LR.value, _CLIENT_LR.value, _RECON_LR.value,
                                  _RECON_EPOCHS.value, _LOCAL_EPOCHS.value, _SPLIT.value),
      sampling=sampling.SamplingConfig(_CLIENTS.value, _RATE.value),
      loop=training_loop.LoopConfig(_ROUNDS.value, _EVAL_EVERY.value, _CHECKPOINT_EVERY.value, _PROGRESS.value),
      eval_reconstruction_epochs=_EVAL_RECON_EPOCHS.value,
      output_dir=os.path.join(_ROOT.value, _NAME.value), seed=_SEED.value)


def build_task(config: ExperimentConfig) -> tasks.RecommendationTask:
  """Validates `config` against the data and builds the task; raises before any training."""
  config.validate()
  task = tasks.RecommendationTask(config.data, objective=config.objective, embedding_dim=config.embedding_dim,
                                  l2=config.l2, init_stddev=config.init_stddev, seed=config.seed)
  config.sampling.validate(len(task.train_data.client_ids))
  return task


def run(config: ExperimentConfig, task: tasks.RecommendationTask) -> dict[str, float]:
  """Trains and evaluates; returns the final metrics (also in final_metrics.json)."""
  began = time.monotonic()
  os.makedirs(config.output_dir, exist_ok=True)
  atomic.write_json(os.path.join(config.output_dir, 'hparams.json'), dataclasses.asdict(config))
  engine = ENGINES[config.engine](task, config.recon, eval_learning_rate=config.recon.reconstruction_learning_rate,
                                  eval_epochs=config.eval_reconstruction_epochs)
  eval_clients = {}

  def evaluate(state, part: str, *, heldout: bool = False, prefix: str = '') -> dict[str, float]:
    if (part, heldout) not in eval_clients:
      eval_clients[part, heldout] = task.eval_clients(part, heldout=heldout, seed=config.seed)
    return client_eval.finalize(engine.evaluate(state, eval_clients[part, heldout]), task.eval_kind, prefix)

  state = training_loop.run(
      engine,
      cohort_fn=lambda r: sampling.sample_clients(task.train_data.client_ids, r, config.seed, config.sampling),
      data_fn=lambda ids, r: task.train_examples(ids, r, config.seed),
      evaluate_fn=lambda state: evaluate(state, schema.VAL, prefix='val/'),
      config=config.loop, output_dir=config.output_dir)
  final = evaluate(state, schema.TEST)
  final.update(evaluate(state, schema.TEST, heldout=True, prefix='heldout_users/'))
  for key in ('rmse', 'mae', 'hr@10', 'ndcg@10', 'recall@20'):
    final.setdefault(key, None)  # Metrics this objective does not produce.
  final.update(rounds=config.loop.rounds, wall_seconds=time.monotonic() - began)
  atomic.write_json(os.path.join(config.output_dir, 'final_metrics.json'), final)
  metric_key = 'val/hr@10' if task.eval_kind == client_eval.RANKING else 'val/rmse'
  learning_curve(training_loop.read_history(config.output_dir),
                 os.path.join(config.output_dir, 'learning_curve.png'),
                 loss_key='client_work/train/loss', metric_key=metric_key)
  return final


def format_results(final: dict) -> str:
  rows = [(k, v) for k, v in final.items() if v is not None and not k.endswith('count')]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v:.4f}' if isinstance(v, float) else f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  try:
    task = build_task(config)
  except (ValueError, FileNotFoundError) as e:
    print(f'train_federated: error: {e}', file=sys.stderr)
    return 2
  try:
    final = run(config, task)
  finally:
    runtime.stop_all_workers()
  logging.info('Wrote %s', config.output_dir)
  print(f'Results ({config.output_dir}/final_metrics.json):')
  print(format_results(final))
  return 0


if __name__ == '__main__':
  app.run(main)
