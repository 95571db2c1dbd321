r"""What metrics by group cost an evaluation (issue 19 target: <= 5% of evaluation time), side by side in one run.

  .venv/bin/python -m benchmarks.group_metrics_cost [--flagfile=configs/demo_fedrecon_mf.flags] [--repeats=3]

The demo's model (its engine, freshly initialised: the cost does not depend on
the weights) evaluated on the MovieLens-100K test split with every group
attribute the data has (`--group_metrics=all`) and without (`none`), taking
turns, each first in turn: the wall time of building the evaluation's clients (reading their data,
and with groups marking each query) plus the federated evaluation itself.
Prints each part's ratio of the medians; the first evaluation of each kind (its
TFF computation built and traced) is left out.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags
import numpy as np

from benchmarks import turns
from experiments import logs, train_federated
from tff_rec import experiment, runtime
from tff_rec.data import schema
from tff_rec.federated import assembly

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed evaluations of each kind.')


def main(argv):
  del argv
  logs.configure_logging()
  config = train_federated.config_from_flags()
  task = assembly.build_task(config)
  experiment.configure_determinism(True)
  engine = assembly.build_engine(config, task)
  state = engine.initialize()
  attributes = {'none': (), 'all': task.group_attributes('all')}
  times: dict[str, dict[str, list[float]]] = {k: {'clients': [], 'evaluate': []} for k in attributes}
  results = {}
  try:
    for repeat in range(_REPEATS.value + 1):
      for kind, chosen in turns.in_turn(list(attributes.items()), repeat):
        began = time.perf_counter()
        clients = task.eval_clients(schema.TEST, seed=config.seed, recent_items=config.evaluation.recent_items,
                                    recent_repeats=config.evaluation.recent_repeats, group_metrics=chosen)
        built = time.perf_counter()
        results[kind] = engine.evaluate(state, clients)
        done = time.perf_counter()
        if repeat:  # The first: TFF computations built and traced.
          times[kind]['clients'].append(built - began)
          times[kind]['evaluate'].append(done - built)
  finally:
    runtime.stop_all_workers()
  same = all(np.isclose(results['all'][k], results['none'][k]) for k in results['none'])
  print(f'{len(clients.client_ids)} test users, {len(clients.group_names)} groups of {list(attributes["all"])}; '
        f'overall sums unchanged by the groups: {same}')
  for part in ('clients', 'evaluate'):
    plain, grouped = np.median(times['none'][part]), np.median(times['all'][part])
    print(f'{part}: without groups {plain:.2f} s, with {grouped:.2f} s: ratio {grouped / plain:.3f}')
  plain = np.median(np.add(times['none']['clients'], times['none']['evaluate']))
  grouped = np.median(np.add(times['all']['clients'], times['all']['evaluate']))
  print(f'evaluation in all: ratio {grouped / plain:.3f} (target <= 1.05: {"met" if grouped <= 1.05 * plain else "NOT met"})')


if __name__ == '__main__':
  given = sys.argv[1:]
  app.run(main, argv=[sys.argv[0]] + ([] if any(a.startswith('--flagfile') for a in given) else
                                      ['--flagfile=configs/demo_fedrecon_mf.flags']) + given)
