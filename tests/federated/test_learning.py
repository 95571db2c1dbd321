"""Federated MF learns a synthetic low-rank rating matrix."""

import numpy as np
import pytest

from tff_rec import tasks
from tff_rec.data import pipeline
from tff_rec.data.synthetic import SyntheticConfig
from tff_rec.evaluation import client_eval
from tff_rec.federated import fed_recon, process, sampling


@pytest.fixture(scope='module')
def low_rank_dataset(tmp_path_factory) -> str:
  """300 users x 150 items, rank 2, noise 0.3 (ratings rounded to 1..5)."""
  out = str(tmp_path_factory.mktemp('low_rank'))
  pipeline.prepare_synthetic(SyntheticConfig(num_users=300, num_items=150, seed=0, mean_ratings_per_user=25, rank=2,
                                             noise_stddev=0.3), out, pipeline.PrepareOptions(seed=0),
                             num_platforms=2, progress=False)
  return out


def test_federated_mf_reduces_rmse_below_bound(low_rank_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(low_rank_dataset, batch_size=16), objective='rating',
                                  embedding_dim=4, l2=0.03, init_stddev=0.1)
  config = fed_recon.ReconConfig('adam', 0.02, 0.5, 0.5, reconstruction_epochs=3, split_dataset=False)
  engine = process.ShardEngine(task, config, users_per_shard=10, eval_learning_rate=0.5, eval_epochs=5)
  test = task.eval_clients('test')
  train_mean = np.concatenate([c.ratings for c in task.train_data.get(task.train_data.client_ids)]).mean()
  constant_rmse = float(np.sqrt(np.mean(np.concatenate([(r - train_mean) ** 2 for _, r in test.queries]))))
  state = engine.initialize()
  initial = client_eval.finalize(engine.evaluate(state, test), 'rating')['rmse']
  for round_num in range(1, 101):
    ids = sampling.sample_clients(task.train_data.client_ids, round_num, 0, sampling.SamplingConfig(50))
    state = engine.next(state, task.train_examples(ids, round_num, 0)).state
  final = client_eval.finalize(engine.evaluate(state, test), 'rating')['rmse']
  # The stated bound: 80% of the best constant predictor's RMSE (the noise floor is about 0.42).
  assert final < 0.8 * constant_rmse < initial, (final, constant_rmse, initial)
