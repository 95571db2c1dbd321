"""A federated experiment: its configuration, checked once, and the one process it assembles and runs.

`experiments/train_federated.py` parses flags into an `ExperimentConfig` and
calls `build_task` and `run`; other binaries (the privacy sweep) and the tests
build configurations directly. Every configuration trains on the one process
(`tff_rec.federated.process.ShardEngine`: a TFF learning process whose clients
are shards of users); what differs is its client work (the algorithm and
model) and its shard aggregator (`tff_rec.federated.aggregation`), chosen here.
What is refused is a contradiction, and the error says why.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import types
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_rec import attacks, experiment, runtime, tasks, training_loop
from tff_rec.data import silos
from tff_rec.federated import aggregation, fed_recon, lr_schedule, process, sampling
from tff_rec.models import als, reconstruction, sequence
from tff_rec.privacy import distributed, dp

# Shards of alike users, at most 100 and at most 16,384 padded examples (`shard_math.size_shards`): 0.81-0.82x the
# round time of shards of 10 users on the demo's cohorts, side by side (docs/performance.md, 2026-12-01).
DEFAULT_USERS_PER_SHARD = 100
DEFAULT_SHARD_EXAMPLES = 16_384
# `process.ShardEngine`'s sharding arguments at those defaults (what the benchmarks build engines with).
DEFAULT_SHARDING = types.MappingProxyType(dict(users_per_shard=DEFAULT_USERS_PER_SHARD,
                                                shard_examples=DEFAULT_SHARD_EXAMPLES))
CROSS_DEVICE, CROSS_SILO = 'cross_device', 'cross_silo'
_CENTRAL = (dp.NONE, dp.GAUSSIAN_FIXED, dp.GAUSSIAN_ADAPTIVE)


@dataclasses.dataclass(frozen=True)
class ClientWork:
  """What one algorithm's client work trains and composes with on the one process.

  `dp` and `silo_dp`: the mechanisms it takes cross-device and cross-silo (a
  platform clips each of its users); `why_not`: the contradiction behind a
  refused mechanism, said in the error.
  """

  description: str
  models: tuple[str, ...]
  objectives: tuple[str, ...]
  views: tuple[str, ...]
  dp: tuple[str, ...]
  silo_dp: tuple[str, ...] = ()
  why_not: str = ''


_FED_AVG_NO_DP = ('its global user table holds a row per user that only that user trains, so every release of the '
                  'model releases each user\'s embedding; train privately with --algorithm=fed_recon or fed_als (the '
                  'user never leaves its device)')
_SILO_DP = ('a platform clips each of its users\' updates, and platform sampling gives no amplification: '
            '--dp=gaussian_fixed|gaussian_adaptive (tree aggregation needs users once per epoch; distributed DP, '
            'fixed cohorts of users)')
CLIENT_WORKS = {
    'fed_recon': ClientWork('Federated Reconstruction (the user local)', (tasks.MF, tasks.TWO_TOWER),
                            ('implicit', 'rating'), (CROSS_DEVICE, CROSS_SILO), dp.MECHANISMS, _CENTRAL, _SILO_DP),
    'fed_als': ClientWork('federated implicit ALS', (tasks.MF,), ('implicit',), (CROSS_DEVICE,), _CENTRAL,
                          why_not='its statistics are clipped and noised by a central Gaussian query'),
    'fed_avg': ClientWork('FedAvg with a global user table', (tasks.MF, tasks.SEQUENCE), ('implicit', 'rating'),
                          (CROSS_DEVICE, CROSS_SILO), (dp.NONE,), (dp.NONE,), _FED_AVG_NO_DP),
    'fed_prox': ClientWork('FedProx with a global user table', (tasks.MF,), ('implicit', 'rating'),
                           (CROSS_DEVICE, CROSS_SILO), (dp.NONE,), (dp.NONE,), _FED_AVG_NO_DP),
}
ALGORITHMS = tuple(CLIENT_WORKS)
# What a model takes (views, objectives): the two-tower is a retrieval model of one user's implicit feedback.
MODEL_DATA = {tasks.MF: ((CROSS_DEVICE, CROSS_SILO), ('implicit', 'rating')),
              tasks.TWO_TOWER: ((CROSS_DEVICE,), ('implicit',)), tasks.SEQUENCE: ((CROSS_DEVICE,), ('implicit',))}
# The sequence two-tower has no per-user parameters (FedAvg of the whole model): central DP applies.
SEQUENCE_DP = _CENTRAL


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a run does, built once (`experiments/train_federated.py` parses it from flags)."""

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
  shard_examples: int = DEFAULT_SHARD_EXAMPLES  # 0: shards of `users_per_shard` users, whatever their size.
  group_metrics: str = 'all'  # `groups.parse`: the attributes every evaluation reports groups of.
  item_text_features: bool = False  # Title vectors (`tff_rec.data.text`) in the two-tower's candidate tower / ALS prior.
  sequence: dict = dataclasses.field(default_factory=dict)  # `sequence.SequenceConfig` settings (sequence_two_tower).
  attack: attacks.AttackConfig = attacks.AttackConfig()  # Malicious clients, and the targets ER@10 is measured of.
  defence: attacks.DefenceConfig = attacks.DefenceConfig()  # Per-user norm bounding.

  def validate(self) -> None:
    """Contradictions that must fail before any training."""
    self.data.validate()
    runtime.parse_workers(self.workers)
    if self.algorithm == 'fed_als' and self.recon.server_lr_schedule.kind != lr_schedule.CONSTANT:
      raise ValueError('--server_lr_schedule schedules a server optimizer; --algorithm=fed_als has none (its server '
                       'solves the item step exactly)')
    if self.als.item_prior and self.algorithm != 'fed_als':
      raise ValueError(f'--als_item_prior is a prior of --algorithm=fed_als\'s item step, not of {self.algorithm}')
    if self.item_text_features and self.model == tasks.MF and not self.als.item_prior:
      raise ValueError('--item_text_features feeds the item titles\' vectors to the two-tower models\' candidate tower '
                       'or to --algorithm=fed_als\'s --als_item_prior; this run has neither')
    if self.engine is not None:
      raise ValueError(f'--engine={self.engine} was removed: every configuration runs on the one process (a TFF '
                       'learning process whose clients are shards of users, tested equal to TFF\'s own); drop the flag')
    self.check_supported()
    if self.algorithm == 'fed_als':
      self.als.validate()
    if self.users_per_shard < 1:
      raise ValueError(f'--users_per_shard must be >= 1, got {self.users_per_shard}')
    if self.shard_examples < 0:
      raise ValueError(f'--shard_examples must be >= 0 (0: shards of --users_per_shard users), got '
                       f'{self.shard_examples}')
    cohort = self.sampling.clients_per_round
    if cohort and self.users_per_shard > cohort and not self.grouped:
      raise ValueError(f'--users_per_shard={self.users_per_shard} is larger than a round\'s cohort '
                       f'(--clients_per_round={cohort})')
    self.recon.validate()
    self.loop.validate()
    self.dp.validate()
    if self.dp.enabled:
      dp.check_sampling(self.dp, self.sampling)
    if self.secure_aggregation and self.dp.enabled:
      raise ValueError('--secure_aggregation with --dp: use --dp=distributed (noise added on clients, summed '
                       'securely) instead of both')
    if self.compression and (self.dp.enabled or self.secure_aggregation):
      raise ValueError('--compression is not composed with --dp or --secure_aggregation yet; use one of them')
    if self.algorithm == 'fed_prox' and self.proximal_strength <= 0:
      raise ValueError('--algorithm=fed_prox needs --proximal_strength > 0')
    self.evaluation.validate()
    self.check_attack()
    if self.top_k < 1:
      raise ValueError(f'--top_k must be >= 1, got {self.top_k}')


  def check_supported(self) -> None:
    """The algorithm's client work (`CLIENT_WORKS`) and the model (`MODEL_DATA`) take this model, objective,
    view and DP mechanism, or the error says what they take and why."""
    work = CLIENT_WORKS[self.algorithm]
    got = f'--model={self.model} --objective={self.objective} --view={self.data.view}'
    if self.model not in work.models or self.objective not in work.objectives or self.data.view not in work.views:
      raise ValueError(f'--algorithm={self.algorithm} ({work.description}) trains --model={"|".join(work.models)} '
                       f'--objective={"|".join(work.objectives)} --view={"|".join(work.views)} (got {got})')
    views, objectives = MODEL_DATA[self.model]
    if self.data.view not in views or self.objective not in objectives:
      raise ValueError(f'--model={self.model} trains --objective={"|".join(objectives)} --view={"|".join(views)} '
                       f'(got {got})')
    allowed, why_not = (work.silo_dp if self.grouped else work.dp), work.why_not
    if self.model == tasks.SEQUENCE:
      allowed, why_not = SEQUENCE_DP, 'the sequence two-tower takes central DP (tree and distributed DP not yet)'
    if self.dp.mechanism not in allowed:
      raise ValueError(f'--dp={self.dp.mechanism} with --algorithm={self.algorithm} --view={self.data.view}: '
                       f'{why_not or "no"}; it takes --dp={"|".join(allowed)}')

  def check_attack(self) -> None:
    """The attack and the defence apply to this configuration, or the error says why not."""
    a, d = self.attack, self.defence
    a.validate()
    d.validate()
    if a.attack != attacks.NONE and (self.grouped or self.user_table is not None):
      raise ValueError(f'--attack={a.attack} joins malicious users with their own local parameters to a per-user '
                       f'population: not --view=cross_silo or --algorithm={self.algorithm}\'s global user table')
    if a.attack == attacks.MODEL_POISONING:
      if self.algorithm == 'fed_als':
        raise ValueError('--attack=model_poisoning crafts updates of the model\'s weights; --algorithm=fed_als '
                         'uploads ALS statistics (use --attack=fake_profiles)')
      if a.poison_boost == 0 and (self.model != tasks.MF or self.algorithm != 'fed_recon'):
        raise ValueError(f'--attack=model_poisoning crafts MF\'s item rows (--model=mf --algorithm=fed_recon); for '
                         f'--model={self.model} --algorithm={self.algorithm} use its explicit boosting variant '
                         '(--poison_boost > 0)')
    if d.robust_mean != attacks.NONE:
      if self.dp.enabled or self.secure_aggregation or self.compression:
        raise ValueError(f'--robust_mean={d.robust_mean} needs every user\'s update at the server: not with --dp, '
                         '--secure_aggregation (the server sees only sums) or --compression')
      if self.sampling.clients_per_round < 1 or self.grouped:
        raise ValueError(f'--robust_mean={d.robust_mean} collects a fixed cohort of users: it takes '
                         '--clients_per_round, cross-device')
    if d.norm_bound > 0 and (self.dp.enabled or self.secure_aggregation or self.compression):
      raise ValueError('--norm_bound is DP\'s clip without noise: with --dp the DP clip bounds every user already '
                       '(--clip_norm); with --secure_aggregation or --compression it is not composed (the row bound, '
                       '--row_norm_bound, is)')

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
    if self.model == tasks.SEQUENCE:  # No per-user parameters at all.
      return None
    return tasks.GLOBAL if self.algorithm in ('fed_avg', 'fed_prox') else None


def build_task(config: ExperimentConfig) -> tasks.RecommendationTask:
  """Validates `config` against the data and builds the task; raises before any training."""
  config.validate()
  # Cross-silo: every user of a platform computes its own update, from the users' view of the same examples.
  data = dataclasses.replace(config.data, view='cross_device') if config.grouped else config.data
  task = tasks.RecommendationTask(data, objective=config.objective, embedding_dim=config.embedding_dim,
                                  l2=config.l2, init_stddev=config.init_stddev, seed=config.seed,
                                  model=config.model, user_table=config.user_table,
                                  item_text_features=config.item_text_features,
                                  sequence_settings=config.sequence if config.model == tasks.SEQUENCE else None)
  task.join_attack(config.attack, config.seed)
  config.sampling.validate(len(platforms(task)) if config.grouped else len(task.train_data.client_ids))
  task.group_attributes(config.group_metrics)  # A group attribute the data does not have fails here.
  return task


def platforms(task: tasks.RecommendationTask) -> dict[str, list[str]]:
  """Each platform's training users (cross-silo samples platforms)."""
  return silos.members(os.path.join(task.data_config.data_dir, tasks.VIEWS['cross_silo']),
                       task.train_data.client_ids)


def update_variables(config: ExperimentConfig, task: tasks.RecommendationTask) -> list[tf.Variable]:
  """What a client's model update holds: the trainable global weights (Fed Recon: the item side)."""
  if config.model == tasks.SEQUENCE:
    return [tf.TensorSpec(w.shape, tf.float32) for w in sequence.initial_weights(task.sequence_config)]
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


def _shard_aggregation(config: ExperimentConfig, task: tasks.RecommendationTask, clients: float, population: int,
                       dense: list[tf.TensorSpec]) -> tff.aggregators.UnweightedAggregationFactory:
  """The shard aggregator of `config` for the dense update weights `dense`: the first that applies of distributed
  DP, a robust mean, a norm bound, central DP, compression, secure aggregation, and the plain mean. Each takes the
  row bound (0: none); `validate` has refused the combinations that contradict."""
  row_bound = config.defence.row_bound
  if config.dp.mechanism == dp.DISTRIBUTED:  # Every user of the fixed cohort adds a share of the noise.
    return aggregation.DistributedDPFactory(config.dp.noise_multiplier, config.sampling.clients_per_round, dense,
                                            config.seed, row_bound=row_bound)
  if config.defence.robust_mean != attacks.NONE:
    return aggregation.RobustMeanFactory(dense, config.sampling.clients_per_round, config.defence.trim, row_bound,
                                         over=config.defence.robust_over)
  if config.defence.norm_bound > 0:  # Norm bounding: DP's per-user clip (fixed or adaptive) with no noise.
    d = config.defence
    bound = dp.DPConfig(dp.GAUSSIAN_ADAPTIVE if d.adaptive else dp.GAUSSIAN_FIXED, noise_multiplier=0.0,
                        clip_norm=d.norm_bound, target_quantile=d.target_quantile,
                        clip_learning_rate=d.clip_learning_rate)
    return aggregation.DPFactory(dp.dp_query(bound, clients), dense, config.seed, row_bound)
  if config.dp.enabled:
    dp_kwargs = {}
    if config.dp.mechanism == dp.TREE:  # The tree's records (the global update) and length (one epoch).
      dp_kwargs = dict(record_specs=tuple(tf.TensorSpec(v.shape, v.dtype) for v in update_variables(config, task)),
                       rounds_per_epoch=config.sampling.rounds_per_epoch(population), seed=config.seed)
    return aggregation.DPFactory(dp.dp_query(config.dp, clients, **dp_kwargs), dense, config.seed, row_bound)
  if config.compression:
    return aggregation.CompressedMeanFactory(dense, config.seed, row_bound=row_bound)
  if config.secure_aggregation:
    return aggregation.SecureMeanFactory(dense, config.users_per_shard, row_bound)
  return aggregation.MeanFactory(dense, row_bound)


def build_engine(config: ExperimentConfig, task: tasks.RecommendationTask) -> process.ShardEngine:
  """The one process for `config`: its client work (the algorithm) and its shard aggregator."""
  evaluation = dict(eval_learning_rate=config.evaluation.learning_rate, eval_epochs=config.evaluation.epochs)
  population = len(task.train_data.client_ids)
  clients = dp.expected_clients(config.sampling, population)
  if config.silo_dp:  # The DP mean is over users: the expected users of the sampled platforms.
    num_platforms = len(platforms(task))
    clients = dp.expected_clients(config.sampling, num_platforms) * population / num_platforms
  shard_aggregation = functools.partial(_shard_aggregation, config, task, clients, population)
  if config.algorithm == 'fed_als':  # Users solved exactly, at evaluation too; no server optimizer.
    return process.ShardEngine(task, fed_recon.ReconConfig(split_dataset=False),
                               users_per_shard=config.users_per_shard, shard_examples=config.shard_examples,
                               eval_learning_rate=1.0, eval_epochs=1,
                               aggregation=shard_aggregation, algorithm='fed_als', als_config=config.als,
                               clients=clients)
  poison = None
  if config.attack.attack == attacks.MODEL_POISONING:
    a = config.attack
    poison = attacks.Poison(tuple(int(t) for t in task.targets), tuple(int(p) for p in task.popular),
                            a.poison_norm, a.poison_boost)
  return process.ShardEngine(task, config.recon, users_per_shard=config.users_per_shard,
                             shard_examples=config.shard_examples, poison=poison,
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
               if config.dp.enabled else None), group_fn=group_fn,
      group_metrics=task.group_attributes(config.group_metrics))
  return final
