r"""R5: round time with a 1,000,000-user population / with a 1,000-user one, at the same cohort size (issue 6).

  .venv/bin/python -m experiments.prepare_data --flagfile=configs/prepare_synthetic_1m.flags   # once, ~12 min
  .venv/bin/python -m benchmarks.population_scaling

Both populations come from the same synthetic generator (2,000 items, ~20
ratings per user); the 1,000-user one is prepared here if absent. A round is
what the training loop does: sample the cohort from the whole population, read
its clients' rows from SQLite, build their examples, and run the vectorized
Fed Recon round. The two populations take turns round by round, so machine
noise hits both alike.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from tff_rec import runtime, tasks
from tff_rec.data import pipeline
from tff_rec.data.synthetic import SyntheticConfig
from tff_rec.federated import fed_recon, sampling, vectorized

_LARGE = flags.DEFINE_string('large_dir', 'data/synthetic_u1000000_i2000_s0', 'The 1M-user prepared dataset.')
_SMALL = flags.DEFINE_string('small_dir', 'data/synthetic_u1000_i2000_s0', 'The 1k-user dataset (made if absent).')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Rounds per population (the first two are warm-up).')
_CLIENTS = flags.DEFINE_integer('clients_per_round', 100, 'Cohort size.')

CONFIG = fed_recon.ReconConfig(server_optimizer='adam', server_learning_rate=0.05, client_learning_rate=1.0,
                               reconstruction_learning_rate=2.0, reconstruction_epochs=1, split_dataset=False)


def main(argv):
  del argv
  if not os.path.exists(os.path.join(_LARGE.value, 'clients.sqlite')):
    raise app.UsageError(f'{_LARGE.value} is missing: python -m experiments.prepare_data '
                         '--flagfile=configs/prepare_synthetic_1m.flags')
  if not os.path.exists(os.path.join(_SMALL.value, 'clients.sqlite')):
    pipeline.prepare_synthetic(SyntheticConfig(num_users=1000, num_items=2000, seed=0), _SMALL.value,
                               pipeline.PrepareOptions(seed=0), num_platforms=5, progress=False)
  began = time.perf_counter()
  runs = []
  for path in (_LARGE.value, _SMALL.value):
    task = tasks.RecommendationTask(tasks.DataConfig(path, batch_size=64), embedding_dim=32, init_stddev=0.3)
    engine = vectorized.VectorizedEngine(task, CONFIG, eval_learning_rate=2.0, eval_epochs=1)
    runs.append([task, engine, engine.initialize(), 0.0])
  print(f'set-up (loading both populations\' client lists): {time.perf_counter() - began:.1f} s; '
        f'populations {len(runs[0][0].train_data.client_ids):,} and {len(runs[1][0].train_data.client_ids):,}')
  config = sampling.SamplingConfig(_CLIENTS.value)
  try:
    for r in range(1, _ROUNDS.value + 1):
      for run in runs:
        task, engine, state, _ = run
        began = time.perf_counter()
        ids = sampling.sample_clients(task.train_data.id_array, r, 0, config)
        run[2] = engine.next(state, task.train_examples(ids, r, 0)).state
        if r >= 3:
          run[3] += time.perf_counter() - began
  finally:
    runtime.stop_all_workers()
  large, small = (run[3] / (_ROUNDS.value - 2) for run in runs)
  print(f'R5 round time: 1M users {1000 * large:.0f} ms, 1k users {1000 * small:.0f} ms  ratio {large / small:.2f} '
        '(target <= 1.2)')


if __name__ == '__main__':
  app.run(main)
