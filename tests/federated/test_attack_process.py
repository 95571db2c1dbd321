"""Malicious users on the shard process: what they upload reaches the server whatever their shard; a norm bound
clips it."""

import numpy as np
import pytest

from tff_rec import attacks, tasks
from tff_rec.data import arrays
from tff_rec.federated import aggregation, fed_recon, process
from tff_rec.privacy import dp

CONFIG = fed_recon.ReconConfig(server_optimizer='sgd', server_learning_rate=1.0, client_learning_rate=0.5,
                               reconstruction_learning_rate=0.5, reconstruction_epochs=1, local_epochs=1,
                               split_dataset=False, client_weighting='uniform')
TARGET, POPULAR = 7, (1, 2, 3)


@pytest.fixture(scope='module')
def task(tiny_dataset):
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, init_stddev=0.5)


def _malicious_cohort(task):
  """Two malicious users' examples (fake profiles holding the target), flagged."""
  profiles = attacks.fake_profiles(2, np.array([TARGET]), np.arange(1, 20), filler=5, seed=0)
  examples = [task.examples(arrays.ClientArrays(p, np.full(len(p), 5.0, np.float32)), seed=u)
              for u, p in enumerate(profiles)]
  return attacks.CohortExamples(examples, np.ones(2, bool))


def _round(task, users_per_shard, poison, **kwargs):
  engine = process.ShardEngine(task, CONFIG, users_per_shard=users_per_shard, eval_learning_rate=0.5,
                               eval_epochs=1, poison=poison, **kwargs)
  state = engine.initialize()
  before = engine.global_weights(state)
  return before, engine.global_weights(engine.next(state, _malicious_cohort(task)).state)


@pytest.mark.parametrize('users_per_shard', [1, 2])
def test_malicious_users_upload_the_crafted_update_whatever_their_shard(task, users_per_shard):
  poison = attacks.Poison(targets=(TARGET,), popular=POPULAR, norm=2.0)
  before, after = _round(task, users_per_shard, poison)
  embedding, bias = before
  direction = np.append(embedding[list(POPULAR)].mean(axis=0), 1.0)
  step = 2.0 * direction / np.linalg.norm(direction)  # Each user's crafted update, the same for both: the mean.
  np.testing.assert_allclose(after[0][TARGET] - embedding[TARGET], step[:-1], atol=1e-5)
  np.testing.assert_allclose(after[1][TARGET] - bias[TARGET], step[-1:], atol=1e-5)
  others = np.arange(len(embedding)) != TARGET
  np.testing.assert_array_equal(after[0][others], embedding[others])  # Nothing else moved.
  np.testing.assert_array_equal(after[1][others], bias[others])


def test_a_norm_bound_clips_each_malicious_update(task):
  poison = attacks.Poison(targets=(TARGET,), popular=POPULAR, norm=10.0)
  query = dp.dp_query(dp.DPConfig(dp.GAUSSIAN_FIXED, noise_multiplier=0.0, clip_norm=0.5), clients=2.0)
  before, after = _round(task, 1, poison, aggregation=lambda dense: aggregation.DPFactory(query, dense, 0))
  moved = np.append(after[0][TARGET] - before[0][TARGET], after[1][TARGET] - before[1][TARGET])
  assert np.linalg.norm(moved) == pytest.approx(0.5, rel=1e-5)  # Two updates of norm 10 clipped to 0.5, mean.


def test_a_row_bound_clips_each_row_of_each_update(task):
  poison = attacks.Poison(targets=(TARGET,), popular=POPULAR, norm=10.0)
  before, after = _round(task, 2, poison, aggregation=lambda dense: aggregation.MeanFactory(dense, row_bound=0.3))
  embedding_step = after[0][TARGET] - before[0][TARGET]
  direction = before[0][list(POPULAR)].mean(axis=0)
  np.testing.assert_allclose(embedding_step, 0.3 * direction / np.linalg.norm(direction), atol=1e-5)
  np.testing.assert_allclose(after[1][TARGET] - before[1][TARGET], [0.3], atol=1e-5)  # The bias row: clipped too.
