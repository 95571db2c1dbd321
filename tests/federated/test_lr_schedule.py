"""Server learning-rate schedules: the maths, the optimizer they wrap, and both Fed Recon engines following them."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import tasks
from tff_rec.federated import fed_recon, lr_schedule, process

COSINE = lr_schedule.LrSchedule(lr_schedule.COSINE, rounds=4)


def test_multiplier_by_hand():
  linear = lr_schedule.LrSchedule(lr_schedule.LINEAR, rounds=10, final_fraction=0.1)
  assert [float(lr_schedule.multiplier(linear, t)) for t in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
  cosine = [float(lr_schedule.multiplier(COSINE, t)) for t in range(6)]
  assert cosine == pytest.approx([1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0, 0.0], abs=1e-6)
  assert float(lr_schedule.multiplier(lr_schedule.LrSchedule(), 7)) == 1.0


def test_scheduled_sgd_steps_follow_the_schedule():
  optimizer = fed_recon.server_optimizer('sgd', 2.0, schedule=COSINE)
  weights, gradient = (tf.constant([1.0, -1.0]),), (tf.constant([0.5, 0.25]),)
  state = optimizer.initialize((tf.TensorSpec([2], tf.float32),))
  for _ in range(2):
    state, weights = optimizer.next(state, weights, gradient)
  np.testing.assert_allclose(weights[0], [1.0, -1.0] - 2.0 * (1 + (1 + math.sqrt(0.5)) / 2) * np.array([0.5, 0.25]),
                             rtol=1e-6)
  constant = fed_recon.server_optimizer('sgd', 2.0)
  assert 'round_num' not in constant.initialize((tf.TensorSpec([2], tf.float32),))  # Unwrapped when constant.


@pytest.fixture(scope='module')
def task(tiny_dataset):
  return tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01)


BASE = fed_recon.ReconConfig('sgd', 1.0, 0.5, 0.5, reconstruction_epochs=2, split_dataset=False)


def _cohort(task, round_num):
  return task.train_examples(task.train_data.client_ids[:6], round_num, seed=0)


def _shards(task, config):
  return process.ShardEngine(task, config, users_per_shard=3, eval_learning_rate=0.5, eval_epochs=2)


def test_shard_round_steps_at_the_scheduled_rate_and_resumes(task):
  """Round 2 of a cosine run is the constant-rate step at rate x multiplier(1) from round 1's model; a new engine
  given round 2's (checkpointed) state takes round 3 as the same engine would."""
  scheduled = _shards(task, dataclasses.replace(BASE, server_lr_schedule=COSINE))
  state = scheduled.initialize()
  first = scheduled.next(state, _cohort(task, 0)).state
  second = scheduled.next(first, _cohort(task, 1)).state
  rate = float(lr_schedule.multiplier(COSINE, 1))
  constant = _shards(task, dataclasses.replace(BASE, server_learning_rate=rate))
  plain = constant.process.set_model_weights(constant.initialize(), scheduled.process.get_model_weights(first))
  for a, b in zip(scheduled.global_weights(second), constant.global_weights(constant.next(plain, _cohort(task, 1)).state)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert not np.allclose(scheduled.global_weights(first)[0], scheduled.global_weights(second)[0])
  checkpointed = tf.nest.map_structure(np.asarray, second)
  restarted = _shards(task, dataclasses.replace(BASE, server_lr_schedule=COSINE))
  for a, b in zip(scheduled.global_weights(scheduled.next(second, _cohort(task, 2)).state),
                  restarted.global_weights(restarted.next(checkpointed, _cohort(task, 2)).state)):
    np.testing.assert_array_equal(a, b)


def test_tff_process_follows_the_same_schedule(task):
  config = dataclasses.replace(BASE, server_lr_schedule=COSINE)
  reference = fed_recon.TffEngine(task, config, eval_learning_rate=0.5, eval_epochs=2)
  fast = _shards(task, config)
  ref_state, fast_state = reference.initialize(), fast.initialize()
  for round_num in range(3):
    ref_state = reference.next(ref_state, _cohort(task, round_num)).state
    fast_state = fast.next(fast_state, _cohort(task, round_num)).state
  for a, b in zip(reference.global_weights(ref_state), fast.global_weights(fast_state)):
    np.testing.assert_allclose(a, b, atol=5e-5)


@pytest.mark.parametrize('schedule, message', [
    (lr_schedule.LrSchedule('step'), "--server_lr_schedule must be one of .*got 'step'"),
    (lr_schedule.LrSchedule(lr_schedule.COSINE, rounds=0), 'needs rounds >= 1'),
    (lr_schedule.LrSchedule(lr_schedule.LINEAR, rounds=5, final_fraction=1.5), r'must be in \[0, 1\], got 1.5'),
    (lr_schedule.LrSchedule(final_fraction=0.1), 'not of a constant rate'),
])
def test_bad_schedules_are_clear_errors(schedule, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, server_lr_schedule=schedule).validate()
