"""Run by test_distributed.py in a process with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (see
`distributed.check_protobuf`): a Fed Recon round through TFF's distributed-DP secure mean.

Usage: python ddp_round_check.py DATA_DIR. Exits non-zero (an assertion) on any failure.
"""

import sys

import numpy as np
import tensorflow_federated as tff

from tests.privacy.test_data_flow import AGGREGATIONS, client_to_server_intrinsics
from tff_rec import tasks
from tff_rec.federated import fed_recon
from tff_rec.privacy import distributed


def main(data_dir: str) -> None:
  distributed.check_protobuf()
  task = tasks.RecommendationTask(tasks.DataConfig(data_dir=data_dir, batch_size=8), embedding_dim=4)
  # Server SGD at lr 1 (the step is the mean); a small client rate keeps every update under the initial clip.
  config = fed_recon.ReconConfig('sgd', 1.0, 0.02, 0.5, split_dataset=False)
  clients = 10
  engines = [fed_recon.TffEngine(task, config, eval_learning_rate=0.5, eval_epochs=1, aggregator=aggregator)
             for aggregator in (distributed.aggregator(0.0, clients), tff.aggregators.UnweightedMeanFactory())]

  # What leaves a client: only aggregates, and the update through the secure sum.
  moved = client_to_server_intrinsics(engines[0].process.next)
  assert set(moved) <= AGGREGATIONS, moved
  assert 'federated_secure_sum_bitwidth' in moved, moved

  # Without noise, the securely summed mean is the plain mean up to the rounding to the integer grid: each
  # coordinate of the rotated, scaled update is rounded to an integer (error < 1 / scale per client), and the
  # inverse rotation keeps the error's L2 norm.
  examples = task.train_examples(task.train_data.client_ids[:clients], 0, seed=0)
  updates, measurements = [], None
  for engine in engines:
    state = engine.initialize()
    output = engine.next(state, examples)
    measurements = measurements or output.metrics['aggregator']['mean_value']
    updates.append(np.concatenate([(a - b).ravel() for a, b in zip(engine.global_weights(state),
                                                                   engine.global_weights(output.state))]))
  got, plain = updates
  assert np.abs(plain).max() > 1e-5, 'a real update, not zeros'
  assert np.linalg.norm(plain) < distributed.INITIAL_CLIP, 'unclipped, so the means agree'
  scale = float(measurements['scale_factor'])
  bound = np.sqrt(measurements['padded_dim']) / scale  # Per client; the mean of the errors is no larger.
  error = np.linalg.norm(got - plain)
  assert error <= bound + 1e-6, (error, bound)
  assert int(measurements['actual_num_clients']) == clients

  # An empty client in the cohort (distributed DP keeps it: every sampled client adds its noise share): the round
  # runs, every client is counted as a noise share, the empty one is reported, and the update stays finite.
  engine = engines[0]
  engine.keep_empty_clients = True
  items, labels = examples[0]
  with_empty = [(items[:0], labels[:0])] + list(examples[1:])
  state = engine.initialize()
  output = engine.next(state, with_empty)
  assert int(output.metrics['aggregator']['mean_value']['actual_num_clients']) == clients
  assert output.metrics['client_work/empty_clients'] == 1
  assert all(np.isfinite(w).all() for w in engine.global_weights(output.state))
  print('ok', error, bound)


if __name__ == '__main__':
  main(sys.argv[1])
