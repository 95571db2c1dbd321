"""Secure aggregation gives the plain mean up to its quantisation."""

import numpy as np
import tensorflow_federated as tff

from tff_rec import tasks
from tff_rec.federated import fed_recon
from tff_rec.privacy import secure


def test_secure_sum_equals_plain_mean_within_quantisation(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8), embedding_dim=4)
  config = fed_recon.ReconConfig('sgd', 1.0, 0.5, 0.5, split_dataset=False)  # Server SGD, lr 1: step = mean.
  engines = [fed_recon.TffEngine(task, config, eval_learning_rate=0.5, eval_epochs=1, aggregator=aggregator)
             for aggregator in (secure.secure_mean(), tff.aggregators.UnweightedMeanFactory())]
  examples = task.train_examples(task.train_data.client_ids[:10], 0, seed=0)
  updates = []
  for engine in engines:
    state = engine.initialize()
    after = engine.next(state, examples).state
    updates.append([a - b for a, b in zip(engine.global_weights(state), engine.global_weights(after))])
  quantum = 2 * secure.INITIAL_BOUND / (2**32 - 1)
  float32_rounding = secure.INITIAL_BOUND * np.finfo(np.float32).eps  # Values are scaled to the bound and back.
  for got, plain in zip(*updates):
    assert np.abs(plain).max() > 1e-3  # A real update, not zeros.
    np.testing.assert_allclose(got, plain, rtol=0, atol=quantum + 2 * float32_rounding)
