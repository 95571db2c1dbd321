r"""What a defence costs a clean round (issue 20 target: the default defence <= 1.10x), side by side in one run.

  .venv/bin/python -m benchmarks.defence_cost [--flagfile=configs/attack_sweep_mf.flags] \
      [--defences=none,row_bound] [--bench_rounds=30] [--data_dir=...]

(`--defences` as `experiments.attack_sweep`'s, `dp` aside.)

The flags' configuration without an attack, built once per defence
(`attack_sweep.defence_config`: each alone, with the flags' settings), the
engines taking turns round by round on the same cohorts (the flags' sampling
and seed), each going first in turn. Prints each defence's median round time over rounds 3..N (the first
two build and trace TFF's computations) and its ratio to `none`'s.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from absl import app, flags
import numpy as np

from benchmarks import turns
from experiments import attack_sweep, logs, train_federated
from tff_rec import attacks, experiment, runtime
from tff_rec.federated import assembly, sampling

_ROUNDS = flags.DEFINE_integer('bench_rounds', 30, 'Rounds of each engine (the first two left out).')


def main(argv):
  del argv
  logs.configure_logging()
  base = train_federated.config_from_flags()
  base = dataclasses.replace(base, attack=dataclasses.replace(base.attack, attack=attacks.NONE,
                                                              malicious_fraction=0.0))
  defences = list(dict.fromkeys(['none'] + attack_sweep.DEFENCES.value))
  timed = [d for d in attack_sweep.KNOWN if d != attack_sweep.DP]
  unknown = [d for d in defences if d not in timed]
  if unknown:
    print(f'defence_cost: error: --defences must be some of {", ".join(timed)}, got {unknown}', file=sys.stderr)
    return 2
  task = assembly.build_task(base)
  experiment.configure_determinism(True)
  engines = {d: assembly.build_engine(dataclasses.replace(base, defence=attack_sweep.defence_config(base.defence, d)),
                                      task) for d in defences}
  states = {d: engine.initialize() for d, engine in engines.items()}
  seconds: dict[str, list[float]] = {d: [] for d in defences}
  try:
    for r in range(1, _ROUNDS.value + 1):
      ids = sampling.sample_clients(task.train_data.id_array, r, base.seed, base.sampling)
      examples = task.train_examples(ids, r, base.seed)
      for d in turns.in_turn(defences, r):
        began = time.perf_counter()
        states[d] = engines[d].next(states[d], examples).state
        if r > 2:
          seconds[d].append(time.perf_counter() - began)
  finally:
    runtime.stop_all_workers()
  plain = float(np.median(seconds['none']))
  print(f'{len(task.train_data.client_ids)} users, {base.sampling.clients_per_round} a round, '
        f'{_ROUNDS.value - 2} timed rounds each, taking turns')
  for d in defences:
    median = float(np.median(seconds[d]))
    print(f'{d:13s} median round {median:.3f} s: ratio {median / plain:.3f}')


if __name__ == '__main__':
  given = sys.argv[1:]
  app.run(main, argv=[sys.argv[0]] + ([] if any(a.startswith('--flagfile') for a in given) else
                                      ['--flagfile=configs/attack_sweep_mf.flags']) + given)
