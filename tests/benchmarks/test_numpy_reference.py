"""The benchmark's NumPy loop computes the engine's update: its speed is the speed of the same work."""

import numpy as np

from benchmarks import numpy_reference
from tff_rec import tasks
from tff_rec.federated import fed_recon, process


def test_numpy_loop_gives_the_shard_process_update(tiny_dataset):
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=tiny_dataset, batch_size=8, num_negatives=2),
                                  embedding_dim=4, l2=0.01, init_stddev=0.3)
  config = fed_recon.ReconConfig('sgd', 1.0, client_learning_rate=0.5, reconstruction_learning_rate=0.7,
                                 reconstruction_epochs=2, local_epochs=2, split_dataset=False,
                                 client_weighting='uniform')
  engine = process.ShardEngine(task, config, users_per_shard=3, eval_learning_rate=0.5, eval_epochs=1)
  examples = task.train_examples(task.train_data.client_ids[:7], 0, seed=0)
  state = engine.initialize()
  q, b = engine.global_weights(state)
  moved = [w0 - w1 for w0, w1 in zip((q, b), engine.global_weights(engine.next(state, examples).state))]
  sum_q, sum_b, count = numpy_reference.round_sum(
      q, b, examples, batch_size=8, l2=0.01, client_lr=0.5, recon_lr=0.7, recon_epochs=2, local_epochs=2)
  assert count == 2 * sum(len(x) for x, _ in examples)
  np.testing.assert_allclose(sum_q / len(examples), moved[0], atol=1e-6)  # Uniform mean, server SGD at rate 1.
  np.testing.assert_allclose(sum_b / len(examples), moved[1], atol=1e-6)
  assert np.abs(moved[0]).max() > 1e-3
