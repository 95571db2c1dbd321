r"""Trains a federated recommender and evaluates it.

  python -m experiments.train_federated --flagfile=configs/fedrecon_mf_movielens.flags

Writes to `<root_output_dir>/<experiment_name>/`: hparams.json, metrics.csv,
tensorboard/, checkpoints/, final_metrics.json, learning_curve.png and
model_state.npz; with --export_dir, also the SavedModel (experiments.export).
Running again with the same flags resumes after the last checkpoint.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common_flags, export_flags, logs
from tff_rec import attacks, experiment
from tff_rec.federated import fed_recon, lr_schedule, sampling
from tff_rec.federated.assembly import (ALGORITHMS, DEFAULT_SHARD_EXAMPLES, DEFAULT_USERS_PER_SHARD,  # noqa: F401
                                        ExperimentConfig, build_task, run)
from tff_rec.models import als
from tff_rec.privacy import dp

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
_USERS_PER_SHARD = flags.DEFINE_integer('users_per_shard', None, 'Most users per TFF client (a shard\'s '
                                        'users are computed side by side; 1 is the deployment form, one TFF client '
                                        'per user). Any size gives the same model. Default: '
                                        f'{DEFAULT_USERS_PER_SHARD}, or the cohort if smaller. Cross-silo: each '
                                        'platform is one TFF client, whatever this says.')
_SHARD_EXAMPLES = flags.DEFINE_integer('shard_examples', DEFAULT_SHARD_EXAMPLES, 'Most examples a shard pads to: '
                                       'its users x its largest user\'s examples (users are grouped by size, so '
                                       'many light users share a shard and a heavy one may run alone). 0: shards of '
                                       '--users_per_shard users whatever their size. Any value gives the same model.')
_PROX = flags.DEFINE_float('proximal_strength', 0.01, 'FedProx mu (--algorithm=fed_prox).')
_ALS_ALPHA = flags.DEFINE_float('als_alpha', 5.0, 'fed_als: confidence of a rated item over an unrated one, minus 1 '
                                '(Hu et al. 2008).')
_ALS_REG = flags.DEFINE_float('als_regularization', 10.0, 'fed_als: lambda of the user and item ridge regressions.')
_ALS_PRIOR = flags.DEFINE_bool('als_item_prior', False, 'fed_als: centre each item\'s ridge regression on a linear '
                               'function of its public genres and release-year bucket, fitted by the server with the '
                               'items (Agarwal & Chen, KDD 2009); post-processing, free under DP.')
_ALS_PRIOR_REG = flags.DEFINE_float('als_prior_regularization', 3.0, 'fed_als --als_item_prior: ridge on the '
                                    'prior\'s coefficients, in units of --als_regularization.')
_TEXT = flags.DEFINE_bool('item_text_features', False, 'Items\' title vectors (pretrained GloVe word vectors, '
                          'stored by prepare_data --item_text_encoder=glove) join their public features: in '
                          '--model=two_tower\'s candidate tower and in --als_item_prior. Public, free under DP.')
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

_ATTACK = flags.DEFINE_enum('attack', attacks.NONE, list(attacks.ATTACKS), 'Malicious clients promoting the target '
                            'items (docs/security.md): fake_profiles (Sybil users training honestly on fake '
                            'profiles: the targets and popular filler items) or model_poisoning (they upload '
                            'crafted updates instead).')
_MALICIOUS = flags.DEFINE_float('malicious_fraction', 0.0, 'Share of the population that is malicious (they join it '
                                'and are sampled like everyone else), in [0, 1).')
_TARGETS = flags.DEFINE_list('target_items', [], 'Catalogue ids of the items the attack promotes; their exposure '
                             '(er@10) is reported by every evaluation, also without an attack.')
_NUM_TARGETS = flags.DEFINE_integer('num_target_items', 0, 'Or this many target items, drawn by --seed among the '
                                    'items rated less than the median one.')
_FILLER = flags.DEFINE_integer('filler_items', 30, 'Popular items in each fake profile beside the targets.')
_POPULAR = flags.DEFINE_integer('popular_items', 50, 'The most-rated items: the filler\'s pool and what '
                                'model_poisoning estimates the users from.')
_POISON_NORM = flags.DEFINE_float('poison_norm', 10.0, 'model_poisoning: L2 norm of each crafted update.')
_POISON_BOOST = flags.DEFINE_float('poison_boost', 0.0, 'model_poisoning: > 0, upload the honest update on the fake '
                                   'profile times this instead (explicit boosting; any model).')
_NORM_BOUND = flags.DEFINE_float('norm_bound', 0.0, 'Defence: clip each user\'s whole update to this L2 norm before '
                                 'the mean (0: none; DP\'s clip without its noise).')
_ADAPTIVE_BOUND = flags.DEFINE_bool('adaptive_norm_bound', False, 'Defence: the bound tracks the '
                                    '--norm_bound_quantile of users\' update norms, from --norm_bound.')
_BOUND_QUANTILE = flags.DEFINE_float('norm_bound_quantile', 0.5, 'Defence: the adaptive bound\'s target quantile.')
_ROW_BOUND = flags.DEFINE_float('row_norm_bound', 0.0, 'Defence: clip each row of a user\'s update (one item\'s '
                                'embedding row, its bias) to this L2 norm before the mean (0: none).')
_ROBUST_MEAN = flags.DEFINE_enum('robust_mean', attacks.NONE, attacks.ROBUST_MEANS, 'Defence: the coordinate-wise '
                                 'trimmed mean or median of users\' updates in place of the mean (needs every '
                                 'user\'s update at the server: not with --secure_aggregation, --dp or '
                                 '--compression).')
_TRIM = flags.DEFINE_float('trim_fraction', 0.1, 'Defence: --robust_mean=trimmed_mean drops this fraction of the '
                           'users at each end of every coordinate.')
_ROBUST_OVER = flags.DEFINE_enum('robust_mean_over', attacks.EVERY_USER, attacks.ROBUST_OVER, 'Defence: the robust '
                                 'mean of each item row over every user taking part (an untouched row counting as '
                                 '0), or over the users whose update touches the row.')


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
      users_per_shard=users_per_shard(), shard_examples=_SHARD_EXAMPLES.value,
      group_metrics=common_flags.GROUP_METRICS.value,
      item_text_features=_TEXT.value,
      sequence=common_flags.sequence_settings(),
      attack=attacks.AttackConfig(_ATTACK.value, _MALICIOUS.value, tuple(_TARGETS.value), _NUM_TARGETS.value,
                                  _FILLER.value, _POPULAR.value, _POISON_NORM.value, _POISON_BOOST.value),
      defence=attacks.DefenceConfig(_NORM_BOUND.value, _ADAPTIVE_BOUND.value, _BOUND_QUANTILE.value,
                                    row_bound=_ROW_BOUND.value, robust_mean=_ROBUST_MEAN.value,
                                    trim_fraction=_TRIM.value, robust_over=_ROBUST_OVER.value))


def users_per_shard() -> int:
  """--users_per_shard as set, else the default or the fixed cohort if smaller."""
  if _USERS_PER_SHARD.value is not None:
    return _USERS_PER_SHARD.value
  return min(DEFAULT_USERS_PER_SHARD, _CLIENTS.value or DEFAULT_USERS_PER_SHARD)


def server_lr_schedule() -> lr_schedule.LrSchedule:
  """The server rate's schedule from flags: a decay spans the run's --rounds."""
  kind = _SERVER_SCHEDULE.value
  return lr_schedule.LrSchedule(kind, 0 if kind == lr_schedule.CONSTANT else _ROUNDS.value, _SERVER_FINAL.value)


def main(argv):
  logs.start(argv)
  config = config_from_flags()
  return experiment.main('train_federated', lambda: build_task(config), lambda task: run(config, task),
                         config.output_dir)


if __name__ == '__main__':
  app.run(main)
