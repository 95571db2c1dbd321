r"""R5: round time with a 1,000,000-user population / with a 1,000-user one, at the same cohort size (issue 6).

  .venv/bin/python -m experiments.prepare_data --flagfile=configs/prepare_synthetic_1m.flags   # once, ~12 min
  .venv/bin/python -m benchmarks.population_scaling

Both populations come from the same synthetic generator (2,000 items, ~20
ratings per user); the 1,000-user one is prepared here if absent. A round is
what the training loop does: sample the cohort from the whole population, read
its clients' rows from SQLite, build their examples (`training_loop.RoundData`:
the next round's while this one computes; a read that outlasts the round is
counted), and run the Fed Recon round on the shard process. The two populations take turns round by round, each
first in turn, so machine noise hits both alike.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from benchmarks import turns
from tff_rec import runtime, tasks, training_loop
from tff_rec.data import pipeline
from tff_rec.data.synthetic import SyntheticConfig
from tff_rec.federated import assembly, fed_recon, process, sampling

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
  config = sampling.SamplingConfig(_CLIENTS.value)
  runs = []
  for path in (_LARGE.value, _SMALL.value):
    task = tasks.RecommendationTask(tasks.DataConfig(path, batch_size=64), embedding_dim=32, init_stddev=0.3)
    engine = process.ShardEngine(task, CONFIG, **assembly.DEFAULT_SHARDING, eval_learning_rate=2.0, eval_epochs=1)
    data = training_loop.RoundData(
        lambda r, task=task: sampling.sample_clients(task.train_data.id_array, r, 0, config),
        lambda ids, r, task=task: task.train_examples(ids, r, 0), _ROUNDS.value)
    runs.append([data, engine, engine.initialize(), 0.0, len(task.train_data.client_ids)])
  print(f'set-up (loading both populations\' client lists): {time.perf_counter() - began:.1f} s; '
        f'populations {runs[0][4]:,} and {runs[1][4]:,}')
  try:
    for r in range(1, _ROUNDS.value + 1):
      for run in turns.in_turn(runs, r):
        data, engine, state = run[:3]
        began = time.perf_counter()
        _, examples = data.get(r)  # As the training loop: the next round's read starts in the background ...
        run[2] = engine.next(state, examples).state
        data.wait()  # ... and a read that outlasts this round's compute is this population's cost.
        if r >= 3:
          run[3] += time.perf_counter() - began
  finally:
    for run in runs:
      run[0].close()
    runtime.stop_all_workers()
  large, small = (run[3] / (_ROUNDS.value - 2) for run in runs)
  print(f'R5 round time: 1M users {1000 * large:.0f} ms, 1k users {1000 * small:.0f} ms  ratio {large / small:.2f} '
        '(target <= 1.2)')


if __name__ == '__main__':
  app.run(main)
