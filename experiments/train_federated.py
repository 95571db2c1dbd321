r"""Trains a federated recommender and evaluates it.

  python -m experiments.train_federated --flagfile=configs/fedrecon_mf_movielens.flags

Writes to `<root_output_dir>/<experiment_name>/`: hparams.json, metrics.csv,
tensorboard/, checkpoints/, final_metrics.json, learning_curve.png and
model_state.npz; with --export_dir, also the SavedModel (experiments.export).
Running again with the same flags resumes after the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from absl import app, flags
import tensorflow as tf
import tensorflow_federated as tff

from experiments import common_flags, export_flags, logs
from tff_rec import experiment, runtime, tasks, training_loop
from tff_rec.data import silos
from tff_rec.federated import aggregation, fed_recon, lr_schedule, process, sampling
from tff_rec.models import als, reconstruction
from tff_rec.privacy import distributed, dp

ALGORITHMS = ('fed_recon', 'fed_als', 'fed_avg', 'fed_prox')
DEFAULT_USERS_PER_SHARD = 10  # Fastest on the demo (10-20 side by side; 1: 3x slower, 100: 4x).

# Algorithm.
_ALGORITHM = flags.DEFINE_enum(
    'algorithm', 'fed_recon', list(ALGORITHMS),
    'fed_recon: Federated Reconstruction, user parameters stay on clients (each user\'s row, on its device or, '
    'cross-silo, on its platform, which is one TFF client holding its users). fed_als: federated implicit ALS, '
    'each user solved exactly on its device, only its ALS statistics aggregated (private ALS with --dp; MF, '
    'implicit, cross-device). fed_avg / fed_prox: BASELINES with a global user table that every client receives and '
    'updates (every user\'s embedding leaves its client; no --dp).')
# Removed: every configuration runs on the one shard process. A flagfile that still sets it gets one line.
_ENGINE = flags.DEFINE_string('engine', None, 'Removed (every configuration runs on the one process, a TFF learning '
                              'process whose clients are shards of users); setting it is an error that says so.')
_USERS_PER_SHARD = flags.DEFINE_integer('users_per_shard', None, 'Users per TFF client (a shard\'s '
                                        'users are computed side by side; 1 is the deployment form, one TFF client '
                                        'per user). Any size gives the same model. Default: '
                                        f'{DEFAULT_USERS_PER_SHARD}, or the cohort if smaller. Cross-silo: each '
                                        'platform is one TFF client, whatever this says.')
_PROX = flags.DEFINE_float('proximal_strength', 0.01, 'FedProx mu (--algorithm=fed_prox).')
_ALS_ALPHA = flags.DEFINE_float('als_alpha', 5.0, 'fed_als: confidence of a rated item over an unrated one, minus 1 '
                                '(Hu et al. 2008).')
_ALS_REG = flags.DEFINE_float('als_regularization', 10.0, 'fed_als: lambda of the user and item ridge regressions.')
_ALS_PRIOR = flags.DEFINE_bool('als_item_prior', False, 'fed_als: centre each item\'s ridge regression on a linear '
                               'function of its public genres and release-year bucket, fitted by the server with the '
                               'items (Agarwal & Chen, KDD 2009); post-processing, free under DP.')
_ALS_PRIOR_REG = flags.DEFINE_float('als_prior_regularization', 3.0, 'fed_als --als_item_prior: ridge on the '
                                    'prior\'s coefficients, in units of --als_regularization.')
_ROUNDS = flags.DEFINE_integer('rounds', 100, 'Training rounds.')
_CLIENTS = flags.DEFINE_integer('clients_per_round', 100, 'Uniform sampling without replacement (0: use rate).')
_RATE = flags.DEFINE_float('client_sampling_rate', 0.0, 'Poisson sampling rate (with --clients_per_round=0).')
_LOCAL_EPOCHS = flags.DEFINE_integer('local_epochs', 1, 'Client epochs on the global parameters (after '
                                     'reconstruction for fed_recon; all of them for fed_avg / fed_prox).')
_RECON_EPOCHS = flags.DEFINE_integer('reconstruction_epochs', 1, 'Client epochs reconstructing the local user.')
_SPLIT = flags.DEFINE_bool('split_dataset', False, 'Alternate batches between reconstruction and training '
                           '(else both stages use all of a client\'s data).')
# Optimizers.
_SERVER_OPT = flags.DEFINE_enum('server_optimizer', 'sgd', list(fed_recon.SERVER_OPTIMIZERS), 'Server optimizer.')
_SERVER_LR = flags.DEFINE_float('server_learning_rate', 1.0, 'Server learning rate.')
_SERVER_SCHEDULE = flags.DEFINE_enum('server_lr_schedule', lr_schedule.CONSTANT, list(lr_schedule.SCHEDULES),
                                     'The server learning rate over the run: constant, or decayed (linear or cosine, '
                                     'Loshchilov & Hutter 2017) from --server_learning_rate at the first round to '
                                     '--server_lr_final_fraction of it by the end of --rounds (fed_recon, fed_avg, '
                                     'fed_prox).')
_SERVER_FINAL = flags.DEFINE_float('server_lr_final_fraction', 0.0, 'A decaying --server_lr_schedule\'s rate at the '
                                   'end of --rounds, as a fraction of --server_learning_rate.')
_SERVER_EPS = flags.DEFINE_float('server_epsilon', 1e-7, 'Server Adam/Yogi epsilon (a floor on the per-coordinate '
                                 'step normalisation; raise it under DP noise).')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 1.0, 'Client SGD learning rate (global parameters).')
_WEIGHTING = flags.DEFINE_enum('client_weighting', 'num_examples', list(fed_recon.CLIENT_WEIGHTINGS),
                               'How the server averages client updates (fed_recon, fed_avg, fed_prox): num_examples '
                               '(TFF\'s default) weighs each update by its examples, and an update is already a sum '
                               'over them, so a client with n examples counts n times over; uniform counts each '
                               'client once, each example once (as centralized SGD). DP and secure sum are uniform.')
# Privacy.
_DP = flags.DEFINE_enum('dp', dp.NONE, list(dp.MECHANISMS),
                        'User-level DP of the global update: gaussian_fixed (clip --clip_norm) or gaussian_adaptive '
                        '(clip follows --target_quantile of update norms, Andrew et al. 2021), or tree (DP-FTRL: '
                        'tree-aggregation noise restarted every epoch; needs --epoch_sampling), or distributed '
                        '(as tff.learning.ddp_secure_aggregator, per user: Skellam noise added on each user\'s device, '
                        'summed securely, TFF\'s adaptive clip; needs --clients_per_round; Federated '
                        'Reconstruction cross-device). Not with fed_avg / fed_prox, whose global user table releases '
                        'each user\'s row.')
_EPOCHS = flags.DEFINE_bool('epoch_sampling', False, 'With --clients_per_round: each epoch a seeded shuffle of all '
                            'clients cut into cohorts, so each client takes part at most once per epoch (--dp=tree).')
_NOISE = flags.DEFINE_float('noise_multiplier', 0.0, 'Gaussian noise stddev / clip (0 with --target_epsilon: '
                            'calibrated for --rounds).')
_CLIP = flags.DEFINE_float('clip_norm', 1.0, 'L2 clip of each client\'s update (adaptive: the initial clip).')
_QUANTILE = flags.DEFINE_float('target_quantile', 0.5, 'Adaptive clipping: target unclipped quantile.')
_CLIP_LR = flags.DEFINE_float('clip_learning_rate', 0.2, 'Adaptive clipping: learning rate of the clip.')
_WORKERS = flags.DEFINE_string('workers', '', 'host:port,host:port,...: run TFF\'s computations across these TFF '
                               'worker services (python -m experiments.tff_worker --port=P on each machine), each '
                               'round\'s shards split between them. Empty: the local runtime.')
_SECURE = flags.DEFINE_bool('secure_aggregation', False, 'Sum users\' updates with TFF\'s secure sum (as '
                            'tff.learning.secure_aggregator per user: bounded, quantised values; an unweighted mean), '
                            'each user\'s update bounded and quantised before its shard adds them. TFF\'s local '
                            'runtime simulates the protocol.')
_COMPRESSION = flags.DEFINE_bool('compression', False, 'Quantize each client\'s update to 8 bits (tensors over 20,000 '
                                  'values) before it leaves the client, stochastically rounded (seeded by run, round '
                                  'and user): each user sends only the rows it touched. Not with DP or secure '
                                  'aggregation.')
_DELTA = flags.DEFINE_float('target_delta', 1e-4, 'The delta epsilon is reported at.')
_EPSILON = flags.DEFINE_float('target_epsilon', 0.0, 'A privacy budget (> 0): calibrates --noise_multiplier=0, '
                              'and the run stops before any round that would exceed it.')
_ACCOUNTANT = flags.DEFINE_enum('accountant', dp.RDP, list(dp.ACCOUNTANTS), 'Whose epsilon --target_epsilon bounds '
                                '(calibration, the stop, the reported epsilon): rdp, or pld (privacy loss '
                                'distributions: tighter, so less noise for the same budget; Poisson-sampled '
                                'Gaussian DP only). Both are always reported where defined.')


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a run does, parsed once from flags."""

  data: tasks.DataConfig
  model: str
  objective: str
  embedding_dim: int
  l2: float
  init_stddev: float
  algorithm: str
  engine: str | None  # Removed; set only to say so.
  recon: fed_recon.ReconConfig
  proximal_strength: float
  dp: dp.DPConfig
  secure_aggregation: bool
  compression: bool
  sampling: sampling.SamplingConfig
  loop: training_loop.LoopConfig
  evaluation: reconstruction.EvalSettings
  output_dir: str
  seed: int
  export_dir: str | None = None
  top_k: int = 10
  workers: str = ''
  als: als.AlsConfig = als.AlsConfig()
  users_per_shard: int = DEFAULT_USERS_PER_SHARD

  def validate(self) -> None:
    """Contradictions that must fail before any training."""
    self.data.validate()
    runtime.parse_workers(self.workers)
    if self.algorithm == 'fed_als' and self.recon.server_lr_schedule.kind != lr_schedule.CONSTANT:
      raise ValueError('--server_lr_schedule schedules a server optimizer; --algorithm=fed_als has none (its server '
                       'solves the item step exactly)')
    if self.als.item_prior and self.algorithm != 'fed_als':
      raise ValueError(f'--als_item_prior is a prior of --algorithm=fed_als\'s item step, not of {self.algorithm}')
    if self.engine is not None:
      raise ValueError(f'--engine={self.engine} was removed: every configuration runs on the one process (a TFF '
                       'learning process whose clients are shards of users, tested equal to TFF\'s own); drop the flag')
    if self.algorithm == 'fed_als':
      self.als.validate()
      if (self.model != tasks.MF or self.objective != 'implicit' or self.data.view != 'cross_device'
          or self.dp.mechanism not in (dp.NONE, dp.GAUSSIAN_FIXED, dp.GAUSSIAN_ADAPTIVE)):
        raise ValueError('--algorithm=fed_als trains MF on implicit feedback cross-device, with '
                         '--dp=none|gaussian_fixed|gaussian_adaptive')
    if self.users_per_shard < 1:
      raise ValueError(f'--users_per_shard must be >= 1, got {self.users_per_shard}')
    cohort = self.sampling.clients_per_round
    if cohort and self.users_per_shard > cohort and not self.grouped:
      raise ValueError(f'--users_per_shard={self.users_per_shard} is larger than a round\'s cohort '
                       f'(--clients_per_round={cohort})')
    self.recon.validate()
    self.loop.validate()
    if self.model == tasks.TWO_TOWER and (self.algorithm != 'fed_recon' or self.data.view != 'cross_device'
                                          or self.objective != 'implicit'):
      raise ValueError('--model=two_tower trains with --algorithm=fed_recon --view=cross_device --objective=implicit')
    self.dp.validate()
    if self.dp.enabled:
      dp.check_sampling(self.dp, self.sampling)
    if self.dp.enabled and self.algorithm in ('fed_avg', 'fed_prox'):
      raise ValueError(f'--dp with --algorithm={self.algorithm}: its global user table holds a row per user that only '
                       'that user trains, so every release of the model releases each user\'s embedding; train '
                       'privately with --algorithm=fed_recon or fed_als (the user never leaves its device)')
    if self.silo_dp and (self.algorithm != 'fed_recon' or self.model != tasks.MF
                         or self.dp.mechanism in (dp.TREE, dp.DISTRIBUTED)):
      raise ValueError('--dp with --view=cross_silo clips each of a sampled platform\'s users\' updates (a platform '
                       'a TFF client): MF Federated Reconstruction with --dp=gaussian_fixed|gaussian_adaptive')
    if self.secure_aggregation and self.dp.enabled:
      raise ValueError('--secure_aggregation with --dp: use --dp=distributed (noise added on clients, summed '
                       'securely) instead of both')
    if self.dp.mechanism == dp.DISTRIBUTED and (self.algorithm != 'fed_recon' or self.data.view != 'cross_device'):
      raise ValueError('--dp=distributed runs Federated Reconstruction (MF or the two-tower) cross-device (got '
                       f'--algorithm={self.algorithm} --view={self.data.view})')
    if self.compression and (self.dp.enabled or self.secure_aggregation):
      raise ValueError('--compression is not composed with --dp or --secure_aggregation yet; use one of them')
    if self.algorithm == 'fed_prox' and self.proximal_strength <= 0:
      raise ValueError('--algorithm=fed_prox needs --proximal_strength > 0')
    self.evaluation.validate()
    if self.top_k < 1:
      raise ValueError(f'--top_k must be >= 1, got {self.top_k}')


  @property
  def grouped(self) -> bool:
    """Cross-silo: platforms are sampled, each a TFF client holding its users, each of whom computes its own update
    (a platform is a shard by nature)."""
    return self.data.view == 'cross_silo'

  @property
  def silo_dp(self) -> bool:
    """Cross-silo with user-level DP: each platform clips every one of its users' updates."""
    return self.grouped and self.dp.enabled

  @property
  def user_table(self) -> str | None:
    """How the task holds users: one local row each (None), or FedAvg's global table."""
    return tasks.GLOBAL if self.algorithm in ('fed_avg', 'fed_prox') else None


def config_from_flags() -> ExperimentConfig:
  evaluation = common_flags.eval_settings(common_flags.RECON_LR.value)
  if _ALGORITHM.value == 'fed_als':  # Users are solved exactly, at evaluation and serving too.
    evaluation = dataclasses.replace(evaluation, als_alpha=_ALS_ALPHA.value, als_regularization=_ALS_REG.value)
  return ExperimentConfig(
      data=common_flags.data_config(), **common_flags.model_kwargs(),
      algorithm=_ALGORITHM.value, engine=_ENGINE.value,
      recon=fed_recon.ReconConfig(_SERVER_OPT.value, _SERVER_LR.value, _CLIENT_LR.value,
                                  common_flags.RECON_LR.value, _RECON_EPOCHS.value, _LOCAL_EPOCHS.value,
                                  _SPLIT.value, _SERVER_EPS.value, _WEIGHTING.value, server_lr_schedule()),
      proximal_strength=_PROX.value,
      dp=dp.DPConfig(_DP.value, _NOISE.value, _CLIP.value, _QUANTILE.value, _CLIP_LR.value, _DELTA.value,
                     _EPSILON.value, _ACCOUNTANT.value),
      secure_aggregation=_SECURE.value,
      compression=_COMPRESSION.value,
      sampling=sampling.SamplingConfig(_CLIENTS.value, _RATE.value, _EPOCHS.value),
      loop=common_flags.loop_config(_ROUNDS.value),
      evaluation=evaluation,
      output_dir=common_flags.output_dir(), export_dir=export_flags.EXPORT_DIR.value, top_k=export_flags.TOP_K.value,
      workers=_WORKERS.value,
      als=als.AlsConfig(_ALS_ALPHA.value, _ALS_REG.value, _ALS_PRIOR.value, _ALS_PRIOR_REG.value),
      users_per_shard=users_per_shard())


def users_per_shard() -> int:
  """--users_per_shard as set, else the default or the fixed cohort if smaller."""
  if _USERS_PER_SHARD.value is not None:
    return _USERS_PER_SHARD.value
  return min(DEFAULT_USERS_PER_SHARD, _CLIENTS.value or DEFAULT_USERS_PER_SHARD)


def server_lr_schedule() -> lr_schedule.LrSchedule:
  """The server rate's schedule from flags: a decay spans the run's --rounds."""
  kind = _SERVER_SCHEDULE.value
  return lr_schedule.LrSchedule(kind, 0 if kind == lr_schedule.CONSTANT else _ROUNDS.value, _SERVER_FINAL.value)


def build_task(config: ExperimentConfig) -> tasks.RecommendationTask:
  """Validates `config` against the data and builds the task; raises before any training."""
  config.validate()
  # Cross-silo: every user of a platform computes its own update, from the users' view of the same examples.
  data = dataclasses.replace(config.data, view='cross_device') if config.grouped else config.data
  task = tasks.RecommendationTask(data, objective=config.objective, embedding_dim=config.embedding_dim,
                                  l2=config.l2, init_stddev=config.init_stddev, seed=config.seed,
                                  model=config.model,
                                  user_table=config.user_table)
  config.sampling.validate(len(platforms(task)) if config.grouped else len(task.train_data.client_ids))
  return task


def platforms(task: tasks.RecommendationTask) -> dict[str, list[str]]:
  """Each platform's training users (cross-silo samples platforms)."""
  return silos.members(os.path.join(task.data_config.data_dir, tasks.VIEWS['cross_silo']),
                       task.train_data.client_ids)


def update_variables(config: ExperimentConfig, task: tasks.RecommendationTask) -> list[tf.Variable]:
  """What a client's model update holds: the trainable global weights (Fed Recon: the item side)."""
  bundle = task.model_fn()
  if config.algorithm != 'fed_recon':
    return list(bundle.model.trainable_variables)
  return [v for layer in bundle.global_layers for v in layer.trainable_variables]


def update_type(config: ExperimentConfig, task: tasks.RecommendationTask) -> tff.Type:
  """The TFF type of a client's model update (what distributed DP noises)."""
  return tff.to_type([tff.TensorType(v.dtype.as_numpy_dtype, v.shape) for v in update_variables(config, task)])


def resolve_privacy(config: ExperimentConfig, population: int,
                    accounting: sampling.SamplingConfig | None = None,
                    value_type: tff.Type | None = None) -> ExperimentConfig:
  """Calibrates a zero noise multiplier to --target_epsilon over --rounds (dp_accounting, by --accountant).

  `value_type`: the TFF type of a client's update, which distributed DP's accounting needs.
  """
  if not config.dp.enabled or config.dp.noise_multiplier > 0:
    return config
  if config.dp.mechanism == dp.DISTRIBUTED:
    z = distributed.calibrate(config.dp.target_epsilon, config.sampling.clients_per_round, population,
                              config.loop.rounds, config.dp.target_delta, value_type)
  else:
    z = dp.calibrate_noise(config.dp.target_epsilon, accounting or config.sampling, population, config.loop.rounds,
                           config.dp.target_delta, config.dp.accountant)
  logging.info('Calibrated --noise_multiplier=%.4f for epsilon %s (%s) over %d rounds', z, config.dp.target_epsilon,
               config.dp.accountant.upper(), config.loop.rounds)
  return dataclasses.replace(config, dp=dataclasses.replace(config.dp, noise_multiplier=z))


def build_engine(config: ExperimentConfig, task: tasks.RecommendationTask) -> process.ShardEngine:
  """The one process for `config`: its client work (the algorithm) and its shard aggregator."""
  evaluation = dict(eval_learning_rate=config.evaluation.learning_rate, eval_epochs=config.evaluation.epochs)
  population = len(task.train_data.client_ids)
  clients = dp.expected_clients(config.sampling, population)
  if config.silo_dp:  # The DP mean is over users: the expected users of the sampled platforms.
    num_platforms = len(platforms(task))
    clients = dp.expected_clients(config.sampling, num_platforms) * population / num_platforms
  shard_aggregation = aggregation.MeanFactory
  if config.secure_aggregation:
    shard_aggregation = lambda dense: aggregation.SecureMeanFactory(dense, config.users_per_shard)
  if config.compression:
    shard_aggregation = lambda dense: aggregation.CompressedMeanFactory(dense, config.seed)
  if config.dp.mechanism == dp.DISTRIBUTED:  # Every user of the fixed cohort adds a share of the noise.
    shard_aggregation = lambda dense: aggregation.DistributedDPFactory(
        config.dp.noise_multiplier, config.sampling.clients_per_round, dense, config.seed)
  elif config.dp.enabled:
    dp_kwargs = {}
    if config.dp.mechanism == dp.TREE:  # The tree's records (the global update) and length (one epoch).
      dp_kwargs = dict(record_specs=tuple(tf.TensorSpec(v.shape, v.dtype) for v in update_variables(config, task)),
                       rounds_per_epoch=config.sampling.rounds_per_epoch(population), seed=config.seed)
    query = dp.dp_query(config.dp, clients, **dp_kwargs)
    shard_aggregation = lambda dense: aggregation.DPFactory(query, dense, config.seed)
  if config.algorithm == 'fed_als':  # Users solved exactly, at evaluation too; no server optimizer.
    return process.ShardEngine(task, fed_recon.ReconConfig(split_dataset=False),
                               users_per_shard=config.users_per_shard, eval_learning_rate=1.0, eval_epochs=1,
                               aggregation=shard_aggregation, algorithm='fed_als', als_config=config.als,
                               clients=clients)
  return process.ShardEngine(task, config.recon, users_per_shard=config.users_per_shard,
                             aggregation=shard_aggregation, algorithm=config.algorithm,
                             proximal_strength=config.proximal_strength if config.algorithm == 'fed_prox' else 0.0,
                             **evaluation)


def run(config: ExperimentConfig, task: tasks.RecommendationTask) -> dict[str, Any]:
  """Trains and evaluates; returns the final metrics (also in final_metrics.json).

  Raises:
    runtime.WorkerError: With --workers, a worker is unreachable or died (the
      checkpoints written so far stay; the same command resumes).
  """
  if not config.workers:
    return _run(config, task)
  runtime.install_workers_context(runtime.parse_workers(config.workers))
  try:
    return _run(config, task)
  finally:
    runtime.install_local_context()


def _run(config: ExperimentConfig, task: tasks.RecommendationTask) -> dict[str, Any]:
  population = len(task.train_data.client_ids)
  cohort_fn = lambda r: sampling.sample_clients(task.train_data.id_array, r, config.seed, config.sampling)
  unit, accounting, note, group_fn = 'one user', None, None, None
  if config.grouped:  # Sampled are platforms: a user takes part when its platform does.
    members = platforms(task)
    population = len(members)
    cohort_fn = lambda r: sampling.sample_silo_users(members, r, config.seed, config.sampling)
    group_fn = lambda ids: sampling.groups_of(ids, members)  # A platform is one TFF client.
  if config.silo_dp:
    unit = 'one user (cross-silo: platforms sampled; each clips every one of its users\' updates)'
    accounting = sampling.SamplingConfig(client_sampling_rate=1.0)
    note = ('no amplification by platform sampling: a platform\'s other users show whether it took part, so '
            'every round is counted as a Gaussian mechanism every user takes part in (an upper bound)')
  # Distributed DP's accounting reads the aggregator's parameters for the update's type: built once.
  value_type = update_type(config, task) if config.dp.mechanism == dp.DISTRIBUTED else None
  config = resolve_privacy(config, population, accounting, value_type)
  experiment.configure_determinism(True)  # Every random draw of the process is stateless under (seed, round).
  engine = build_engine(config, task)
  accountant = None
  if config.dp.mechanism == dp.DISTRIBUTED:  # Its own RDP analysis, checked against every round's parameters.
    accountant = distributed.Accountant(config.dp.noise_multiplier, config.sampling.clients_per_round, population,
                                        value_type)
    engine.round_check = lambda measurements: accountant.check(measurements['mean_value'])
  final = experiment.run(
      engine, task,
      cohort_fn=cohort_fn,
      seed=config.seed, loop=config.loop, output_dir=config.output_dir, hparams=dataclasses.asdict(config),
      loss_key='client_work/train/loss',
      eval_reconstruction=config.evaluation, export_to=(config.export_dir, config.top_k),
      privacy=(dp.PrivacyLedger(config.dp, config.sampling, population, unit, accounting, note, accountant)
               if config.dp.enabled else None), group_fn=group_fn)
  return final


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.configure_logging()
  config = config_from_flags()
  return experiment.main('train_federated', lambda: build_task(config), lambda task: run(config, task),
                         config.output_dir)


if __name__ == '__main__':
  app.run(main)
