"""Flags every training binary shares (data, model, evaluation, output), defined once.

Only the binaries in experiments/ read flags; each builds its frozen config
from these and its own.
"""

from __future__ import annotations

import os

from absl import flags

from tff_rec import tasks, training_loop
from tff_rec.models import mf, reconstruction

# Data.
DATA_DIR = flags.DEFINE_string('data_dir', 'data/movielens_100k', 'A prepared dataset directory.')
VIEW = flags.DEFINE_enum('view', 'cross_device', sorted(tasks.VIEWS), 'Client = user, or client = platform.')
BATCH = flags.DEFINE_integer('batch_size', 64, 'Client batch size.')
NEGATIVES = flags.DEFINE_integer('num_negatives', 4, 'Implicit objective: sampled negatives per positive.')
# Model.
OBJECTIVE = flags.DEFINE_enum('objective', mf.IMPLICIT, list(mf.OBJECTIVES),
                               'implicit: ranking (HR/NDCG, LOO-99); rating: explicit ratings (RMSE/MAE).')
MODEL = flags.DEFINE_enum('model', tasks.MF, list(tasks.MODELS),
                          'mf: matrix factorization; two_tower: TFRS retrieval towers with item genre/year features '
                          '(implicit objective, cross-device Federated Reconstruction); sequence_two_tower: a causal '
                          'self-attention query tower over the user\'s history (implicit, cross-device, fed_avg).')
MAX_HISTORY = flags.DEFINE_integer('max_history', 50, '--model=sequence_two_tower: positions of the query tower (a '
                                   'longer history is truncated to its most recent items).', lower_bound=1)
BLOCKS = flags.DEFINE_integer('num_blocks', 2, '--model=sequence_two_tower: Transformer blocks.', lower_bound=1)
DROPOUT = flags.DEFINE_float('dropout', 0.2, '--model=sequence_two_tower: dropout rate in training.',
                             lower_bound=0.0, upper_bound=0.99)
DIM = flags.DEFINE_integer('embedding_dim', 32, 'Embedding dimension.')
L2 = flags.DEFINE_float('l2', 0.0, 'L2 regularization of the embeddings a batch touches.')
INIT = flags.DEFINE_float('init_stddev', 0.1, 'Stddev of the item-embedding initializer.')
RECON_LR = flags.DEFINE_float('reconstruction_learning_rate', 1.0,
                               'SGD learning rate of a client reconstructing its user (training and evaluation).')
# Evaluation.
EVAL_EVERY = flags.DEFINE_integer('eval_every', 10, 'Validate every this many rounds.')
EVAL_USERS = flags.DEFINE_integer('eval_users', 0, 'Evaluate (validation, test, held-out users, the membership '
                                  'audit) on a seeded uniform sample of this many users of each split; 0: every '
                                  'user. For populations where evaluating everyone takes longer than training.')
EVAL_RECON_EPOCHS = flags.DEFINE_integer('eval_reconstruction_epochs', 3, 'Reconstruction epochs at evaluation.')
EVAL_RECENT_ITEMS = flags.DEFINE_integer('eval_recent_items', 0, 'Recency emphasis of evaluation (and serving): the '
                                         'user\'s last this many items are revisited at the end of reconstruction.')
EVAL_RECENT_REPEATS = flags.DEFINE_integer('eval_recent_repeats', 0, 'Recency emphasis: how many more times '
                                           '(0: none).')
GROUP_METRICS = flags.DEFINE_string(
    'group_metrics', 'all', 'Metrics by group of users in every evaluation: all (every attribute the data has), '
    'none, or a comma-separated list of activity, item_popularity, gender, age, occupation, platform.')
# Output.
ROOT = flags.DEFINE_string('root_output_dir', 'runs', 'Root of all experiment outputs.')
NAME = flags.DEFINE_string('experiment_name', None, 'Output subdirectory (required).')
CHECKPOINT_EVERY = flags.DEFINE_integer('checkpoint_every', 10, 'Checkpoint every this many rounds.')
PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
SEED = flags.DEFINE_integer('seed', 0, 'Seed of initialization, sampling, negatives and shuffling.')


flags.mark_flag_as_required('experiment_name')


def data_config() -> tasks.DataConfig:
  return tasks.DataConfig(DATA_DIR.value, VIEW.value, BATCH.value, NEGATIVES.value)


def model_kwargs() -> dict:
  """Keyword arguments of `tasks.RecommendationTask` besides the data."""
  return dict(model=MODEL.value, objective=OBJECTIVE.value, embedding_dim=DIM.value, l2=L2.value,
              init_stddev=INIT.value, seed=SEED.value)


def sequence_settings() -> dict:
  """`tff_rec.models.sequence.SequenceConfig` settings of --model=sequence_two_tower."""
  return dict(max_history=MAX_HISTORY.value, num_blocks=BLOCKS.value, dropout=DROPOUT.value)


def loop_config(rounds: int) -> training_loop.LoopConfig:
  return training_loop.LoopConfig(rounds, EVAL_EVERY.value, CHECKPOINT_EVERY.value, PROGRESS.value,
                                  EVAL_USERS.value)


def eval_settings(learning_rate: float) -> reconstruction.EvalSettings:
  """How evaluation reconstructs users (with the training's reconstruction learning rate)."""
  return reconstruction.EvalSettings(learning_rate, EVAL_RECON_EPOCHS.value, EVAL_RECENT_ITEMS.value,
                                     EVAL_RECENT_REPEATS.value)


def output_dir() -> str:
  return os.path.join(ROOT.value, NAME.value)
