r"""Peak memory of training rounds on a large catalogue: does a round cost O(examples x dim), not O(users x items x dim)?

  .venv/bin/python -m benchmarks.catalogue_memory [--num_items=50000] [--embedding_dim=64] [--rounds=5]

Prepares a synthetic population (--num_users users, --num_items items; kept
in --data_dir) and runs --rounds rounds of MF Federated Reconstruction with 100
users a round on the shard process (each user's item side holds only the rows
its examples touch), in a fresh subprocess. (The vectorized engine, each user
with a dense copy of the whole item table, took 3,966 MB here on 2026-11-29
against the shard process's 1,973 MB, before it was deleted.) The peak is the
largest RSS of the whole process tree (the shard process's
computations run in TFF's worker child), sampled every 20 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from absl import app, flags
import psutil

from tff_rec import runtime, tasks
from tff_rec.data import pipeline
from tff_rec.data.synthetic import SyntheticConfig
from tff_rec.federated import assembly, fed_recon, process, sampling

_MEASURE = flags.DEFINE_bool('measure', False, 'Measure in this process (what the parent runs in a child).')
_ITEMS = flags.DEFINE_integer('num_items', 50_000, 'Catalogue size.')
_USERS = flags.DEFINE_integer('num_users', 2_000, 'Population.')
_DIM = flags.DEFINE_integer('embedding_dim', 64, 'Embedding dimension.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds per engine.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Where the synthetic population is prepared (once).')


class PeakRss:
  """The largest RSS of this process and its children, sampled in a background thread."""

  def __init__(self, interval_s: float = 0.02):
    self.peak, self._interval, self._stop = 0, interval_s, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    me = psutil.Process()
    while not self._stop.is_set():
      try:
        self.peak = max(self.peak, sum(p.memory_info().rss for p in [me] + me.children(recursive=True)))
      except psutil.Error:  # A child ended between the listing and the read.
        pass
      time.sleep(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def data_dir() -> str:
  out = os.path.join(_DATA_DIR.value, f'synthetic_u{_USERS.value}_i{_ITEMS.value}_s0')
  if not os.path.exists(os.path.join(out, 'clients.sqlite')):
    pipeline.prepare_synthetic(SyntheticConfig(num_users=_USERS.value, num_items=_ITEMS.value, seed=0), out,
                               pipeline.PrepareOptions(seed=0), num_platforms=2, progress=False)
  return out


def measure(engine_name: str, path: str) -> dict[str, float]:
  """Rounds of `engine_name` on the population at `path`; the peak RSS (MB) and the mean round time (s)."""
  task = tasks.RecommendationTask(tasks.DataConfig(path, batch_size=64, num_negatives=8), embedding_dim=_DIM.value,
                                  init_stddev=0.3, l2=0.003)
  config = fed_recon.ReconConfig('sgd', 150.0, 1.0, 2.0, reconstruction_epochs=3, split_dataset=False,
                                 client_weighting='uniform')
  with PeakRss() as rss:
    engine = process.ShardEngine(task, config, **assembly.DEFAULT_SHARDING, eval_learning_rate=2.0, eval_epochs=1)
    state = engine.initialize()
    began = time.perf_counter()
    for r in range(1, _ROUNDS.value + 1):
      ids = sampling.sample_clients(task.train_data.client_ids, r, 0, sampling.SamplingConfig(100))
      state = engine.next(state, task.train_examples(ids, r, 0)).state
    seconds = (time.perf_counter() - began) / _ROUNDS.value
    runtime.stop_all_workers()
  return {'engine': engine_name, 'peak_rss_mb': rss.peak / 2**20, 'round_seconds': seconds}


def main(argv):
  del argv
  path = data_dir()
  if _MEASURE.value:
    print(json.dumps(measure('shards', path)))
    return
  print(f'{_ITEMS.value:,}-item catalogue, embedding {_DIM.value}, 100 users a round, {_ROUNDS.value} rounds '
        f'({_USERS.value:,} users in {path})')
  out = subprocess.run([sys.executable, '-m', 'benchmarks.catalogue_memory', '--measure',
                        *[f'--{f}={flags.FLAGS[f].value}' for f in ('num_items', 'num_users', 'embedding_dim',
                                                                    'rounds', 'data_dir')]],
                       check=True, capture_output=True, text=True,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}).stdout
  result = json.loads(out.strip().splitlines()[-1])
  print(f'shard process: peak RSS {result["peak_rss_mb"]:,.0f} MB (target <= 2,048), '
        f'{1000 * result["round_seconds"]:,.0f} ms a round')

if __name__ == '__main__':
  app.run(main)
