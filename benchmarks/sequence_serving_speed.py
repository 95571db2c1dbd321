r"""Serving latency of the sequence two-tower (issue 16 item 4), beside the demo's MF model, in one process.

  .venv/bin/python -m benchmarks.sequence_serving_speed --history=200 --calls=1000

Both models are exported as SavedModels of the MovieLens-100K shape (1,682
items) with random weights (latency depends on shapes, not values) and
reloaded; `recommend` is called for one user with `--history` items, the two
models taking turns in blocks of 100 calls, and the p50 and p99 of each are
printed with their ratio. The sequence model has the shape of
`configs/fedavg_sequence_two_tower.flags` (`--max_history`, `--num_blocks`,
`--embedding_dim`). Targets (issue 16): p50 <= 5 ms, p99 <= 20 ms at 200 items.
"""

from __future__ import annotations

import tempfile
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from benchmarks import serving_speed
from experiments import logs
from tff_rec.models import sequence, two_tower
from tff_rec.serving import export
from tff_rec.serving.sequence_export import SequenceRecommender

FLAGS = flags.FLAGS  # --history and --calls: benchmarks.serving_speed's flags.
_MAX_HISTORY = flags.DEFINE_integer('max_history', 100, 'The sequence model\'s positions.')
_BLOCKS = flags.DEFINE_integer('num_blocks', 2, 'The sequence model\'s Transformer blocks.')
_DIM = flags.DEFINE_integer('embedding_dim', 50, 'The sequence model\'s embedding dimension.')

NUM_ITEMS = serving_speed.NUM_ITEMS


def sequence_shaped_model(path: str, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  genres = (rng.random((NUM_ITEMS + 1, 19)) < 0.1).astype(np.float32)
  features = two_tower.ItemFeatures(genres, rng.integers(0, two_tower.NUM_YEAR_BUCKETS, NUM_ITEMS + 1))
  config = sequence.SequenceConfig(NUM_ITEMS, 19, _DIM.value, _MAX_HISTORY.value, _BLOCKS.value, seed=seed)
  vocabulary = [str(i) for i in range(1, NUM_ITEMS + 1)]
  module = SequenceRecommender(config, vocabulary, sequence.initial_weights(config), features, top_k=10)
  export.save(module, path, {'benchmark': True})


def main(argv):
  del argv
  logs.configure_logging()
  with tempfile.TemporaryDirectory() as root:
    serving_speed.demo_shaped_model(f'{root}/mf')
    sequence_shaped_model(f'{root}/sequence')
    models = {name: tf.saved_model.load(f'{root}/{name}').signatures['recommend'] for name in ('mf', 'sequence')}
    rows = serving_speed.request_rows(NUM_ITEMS, 1, FLAGS.history, seed=1)
    request = dict(history_item_ids=tf.constant(rows['history_item_ids']),
                   history_ratings=tf.constant(rows['history_ratings'], tf.float32))
    times = {name: [] for name in models}
    for fn in models.values():  # Warm-up (tracing, first-call allocations).
      for _ in range(50):
        fn(**request)
    for _ in range(FLAGS.calls // 100):
      for name, fn in models.items():
        for _ in range(100):
          start = time.perf_counter()
          fn(**request)
          times[name].append(time.perf_counter() - start)
  p = {name: (np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3) for name, t in times.items()}
  print(f'recommend, one user, {FLAGS.history} history items, {NUM_ITEMS} items, {FLAGS.calls} calls each '
        '(in-process, turns of 100 calls)')
  for name, (p50, p99) in p.items():
    print(f'  {name:9s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms')
  print(f'  sequence / mf: p50 {p["sequence"][0] / p["mf"][0]:.2f}x, p99 {p["sequence"][1] / p["mf"][1]:.2f}x '
        '(targets for the sequence model: p50 <= 5 ms, p99 <= 20 ms)')


if __name__ == '__main__':
  app.run(main)
