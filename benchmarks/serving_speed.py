r"""Serving speed of an exported model (issue 5): in-process latency and REST throughput.

  .venv/bin/python -m benchmarks.serving_speed [--export_dir=DIR] [--seconds=5]

Latency: the `recommend` signature of a reloaded SavedModel for one user with
100 history items over the 1,682-item MovieLens-100K catalogue, called
in-process; p50 and p99 over `--calls` calls after warm-up. Targets: p50 <= 2 ms,
p99 <= 10 ms on 2 cores.

Throughput: `experiments.serve` in its own process, and `--concurrency`
client threads posting TF Serving predict requests over keep-alive
connections for `--seconds` each: requests/s (and users/s) at batch 1 and 32.

Without --export_dir the model is the demo's shape (embedding 32, 8
negatives, batch 64, 3 reconstruction epochs, lr 2.0) with random weights:
latency depends on shapes, not values.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from experiments import logs
from tff_rec.models import mf
from tff_rec.serving import export

_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'An exported model (default: the demo shape, random weights).')
_CALLS = flags.DEFINE_integer('calls', 2000, 'Latency: timed calls.')
_HISTORY = flags.DEFINE_integer('history', 100, 'Latency: history items per request.')
_SECONDS = flags.DEFINE_float('seconds', 5.0, 'Throughput: seconds per batch size.')
_CONCURRENCY = flags.DEFINE_integer('concurrency', 4, 'Throughput: concurrent client connections.')

NUM_ITEMS = 1682


def demo_shaped_model(path: str) -> None:
  rng = np.random.default_rng(0)
  weights = [rng.normal(0, 0.3, size=(NUM_ITEMS + 1, 32)).astype(np.float32),
             rng.normal(0, 0.1, size=(NUM_ITEMS + 1, 1)).astype(np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, l2=0.003, batch_size=64, num_negatives=8, learning_rate=2.0,
                                epochs=3, seed=0)
  vocabulary = [str(i) for i in range(1, NUM_ITEMS + 1)]
  export.save(export.Recommender(config, vocabulary, weights, top_k=10), path, {'benchmark': True})


def request_rows(vocabulary_size: int, batch: int, history: int, seed: int) -> dict[str, list]:
  rng = np.random.default_rng(seed)
  ids = [[str(i) for i in rng.choice(np.arange(1, vocabulary_size + 1), history, replace=False)] for _ in range(batch)]
  return {'history_item_ids': ids, 'history_ratings': rng.integers(1, 6, size=(batch, history)).astype(float).tolist()}


def predict_body(rows: dict[str, list]) -> str:
  """TF Serving's row format: one object per user."""
  return json.dumps({'instances': [{'history_item_ids': ids, 'history_ratings': ratings}
                                   for ids, ratings in zip(rows['history_item_ids'], rows['history_ratings'])]})


def latency(export_dir: str, vocabulary_size: int) -> tuple[float, float]:
  recommend = tf.saved_model.load(export_dir).signatures['recommend']
  rows = request_rows(vocabulary_size, 1, _HISTORY.value, 0)
  ids, ratings = tf.constant(rows['history_item_ids']), tf.constant(rows['history_ratings'], tf.float32)
  for _ in range(50):
    recommend(history_item_ids=ids, history_ratings=ratings)
  times = []
  for _ in range(_CALLS.value):
    began = time.perf_counter()
    recommend(history_item_ids=ids, history_ratings=ratings)['item_ids'].numpy()
    times.append(time.perf_counter() - began)
  return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def throughput(port: int, vocabulary_size: int, batch: int) -> float:
  bodies = [predict_body(request_rows(vocabulary_size, batch, _HISTORY.value, seed)) for seed in range(8)]
  stop = time.monotonic() + _SECONDS.value
  counts = [0] * _CONCURRENCY.value
  errors = []

  def client(worker: int) -> None:
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    while time.monotonic() < stop:
      connection.request('POST', '/v1/models/recommender:predict', body=bodies[counts[worker] % len(bodies)],
                         headers={'Content-Type': 'application/json'})
      response = connection.getresponse()
      body = response.read()
      if response.status != 200:
        errors.append(body)
        return
      counts[worker] += 1
    connection.close()

  began = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(_CONCURRENCY.value) as pool:
    list(pool.map(client, range(_CONCURRENCY.value)))
  if errors:
    raise RuntimeError(f'server errors: {errors[:1]}')
  return sum(counts) / (time.monotonic() - began)


def start_server(export_dir: str) -> tuple[subprocess.Popen, int]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.Popen([sys.executable, '-m', 'experiments.serve', f'--export_dir={export_dir}', '--port=0',
                              '--threads=4'], cwd=root, stdout=subprocess.PIPE, text=True)
  line = process.stdout.readline()
  found = re.search(r':(\d+)/v1/models/', line)
  if not found:
    process.kill()
    raise RuntimeError(f'the server did not start: {line!r}')
  threading.Thread(target=process.stdout.read, daemon=True).start()
  return process, int(found.group(1))


def main(argv):
  del argv
  logs.configure_logging()
  with tempfile.TemporaryDirectory() as scratch:
    export_dir = _EXPORT_DIR.value
    if not export_dir:
      export_dir = os.path.join(scratch, 'model')
      demo_shaped_model(export_dir)
    vocabulary_size = json.load(open(os.path.join(export_dir, export.METADATA))).get('item_vocabulary_size',
                                                                                      NUM_ITEMS)
    p50, p99 = latency(export_dir, vocabulary_size)
    print(f'recommend, 1 user x {_HISTORY.value} history items, {vocabulary_size} items, in-process: '
          f'p50 {p50:.2f} ms (target <= 2: {"met" if p50 <= 2 else "NOT met"}), '
          f'p99 {p99:.2f} ms (target <= 10: {"met" if p99 <= 10 else "NOT met"})', flush=True)
    process, port = start_server(export_dir)
    try:
      for batch in (1, 32):
        rate = throughput(port, vocabulary_size, batch)
        print(f'REST predict, batch {batch}, {_CONCURRENCY.value} concurrent clients: {rate:.0f} requests/s '
              f'({rate * batch:.0f} users/s)', flush=True)
    finally:
      process.terminate()
      process.wait(timeout=30)


if __name__ == '__main__':
  app.run(main)
