r"""On-device models: quality, size, latency and memory of each TFLite quantisation against the float SavedModel.

  .venv/bin/python -m benchmarks.on_device --run_dir=runs/demo_fedrecon_mf [--data_dir=data/movielens_100k]

Exports the run as a SavedModel and as TFLite with every `--quantize`, then for each:
  * HR@10 / NDCG@10 on the full leave-one-out test (each test user's history = its training and validation
    items, oldest first; its test item ranked among its 99 sampled negatives by the `score` signature), through
    the TFLite interpreter, one user per call as on a phone;
  * the model file's size against the SavedModel's variables;
  * p50 / p99 latency of `recommend` for one user with 100 history items, and the peak RSS, in a fresh child
    process that loads only `tflite_runtime` (no TensorFlow: what an app holds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

_RUN_DIR = flags.DEFINE_string('run_dir', 'runs/demo_fedrecon_mf', 'A finished training run.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Its prepared data (default: the run\'s).')
_CALLS = flags.DEFINE_integer('calls', 500, 'Latency: timed calls.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: time this model on the request in --request.')
_REQUEST = flags.DEFINE_string('request', None, 'Internal: the JSON request the child times.')


def _child(path: str, request: str) -> None:
  """Latency and peak RSS with tflite_runtime only."""
  from tflite_runtime.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  with open(request) as f:
    history = json.load(f)
  runner = Interpreter(model_path=path).get_signature_runner('recommend')
  inputs = {'history_item_ids': np.array([[i.encode() for i in history['items']]], dtype=object),
            'history_ratings': np.array([history['ratings']], np.float32)}
  for _ in range(20):
    runner(**inputs)
  times = []
  for _ in range(_CALLS.value):
    began = time.perf_counter()
    runner(**inputs)
    times.append(time.perf_counter() - began)
  with open('/proc/self/status') as f:  # VmHWM: this process's own peak (ru_maxrss would count the parent's fork).
    peak_kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
  print(json.dumps({'p50_ms': float(np.percentile(times, 50) * 1e3), 'p99_ms': float(np.percentile(times, 99) * 1e3),
                    'peak_rss_mb': peak_kb / 1024}))


def _test_users(data_dir: str):
  """(history items, history ratings, test item, 99 negatives) of every test user, histories oldest first."""
  import sqlite3  # pylint: disable=g-import-not-at-top
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  from tff_rec.data import schema  # pylint: disable=g-import-not-at-top
  con = sqlite3.connect(os.path.join(data_dir, schema.CLIENTS_DB))
  rows = {}
  support = (schema.split_name(schema.RANKING, schema.TRAIN), schema.split_name(schema.RANKING, schema.VAL))
  test = schema.split_name(schema.RANKING, schema.TEST)
  for split, client, blob in con.execute('SELECT split_name, client_id, serialized_example_proto FROM examples '
                                         'WHERE split_name IN (?, ?, ?) ORDER BY rowid', (*support, test)):
    f = example_pb2.Example.FromString(blob).features.feature
    user = rows.setdefault(client, {'history': [], 'test': None})
    item = f['item_id'].bytes_list.value[0].decode()
    if split == test:
      user['test'] = (item, [n.decode() for n in f['negative_item_ids'].bytes_list.value])
    else:
      user['history'].append((f['timestamp'].int64_list.value[0], item, f['rating'].float_list.value[0]))
  con.close()
  users = []
  for client in sorted(rows):
    if rows[client]['test'] is None:
      continue
    history = sorted(rows[client]['history'])
    users.append(([h[1] for h in history], np.array([h[2] for h in history], np.float32), *rows[client]['test']))
  return users


def _metrics(score_fn, users) -> dict[str, float]:
  """HR@10 / NDCG@10: the test item's rank among itself and its negatives (ties count against it)."""
  hits, gains = [], []
  for items, ratings, target, negatives in users:
    scores = score_fn(items, ratings, [target, *negatives])
    rank = int(np.sum(scores[1:] >= scores[0]))
    hits.append(rank < 10)
    gains.append(1.0 / np.log2(rank + 2) if rank < 10 else 0.0)
  return {'hr@10': float(np.mean(hits)), 'ndcg@10': float(np.mean(gains))}


def main(argv):
  del argv
  if _CHILD.value:
    _child(_CHILD.value, _REQUEST.value)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tff_rec.serving import export, tflite  # pylint: disable=g-import-not-at-top
  hparams = json.load(open(os.path.join(_RUN_DIR.value, 'hparams.json')))
  data_dir = _DATA_DIR.value or hparams['data']['data_dir']
  users = _test_users(data_dir)
  request = next(u for u in users if len(u[0]) >= 100)
  with tempfile.TemporaryDirectory() as scratch:
    saved_model = os.path.join(scratch, 'saved_model')
    export.export_run(_RUN_DIR.value, saved_model)
    variables = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                    os.walk(os.path.join(saved_model, 'variables')) for f in files)
    score = tf.saved_model.load(saved_model).signatures['score']

    def saved_model_scores(items, ratings, candidates):
      return score(history_item_ids=tf.constant([items]), history_ratings=tf.constant([ratings]),
                   candidate_item_ids=tf.constant([candidates]))['scores'].numpy()[0]

    reference = _metrics(saved_model_scores, users)
    print(f'{len(users)} test users; float SavedModel: HR@10 {reference["hr@10"]:.4f}, NDCG@10 '
          f'{reference["ndcg@10"]:.4f}, variables {variables / 1e6:.3f} MB')
    request_path = os.path.join(scratch, 'request.json')
    with open(request_path, 'w') as f:
      json.dump({'items': request[0][-100:], 'ratings': request[1][-100:].tolist()}, f)
    print('| quantize | HR@10 (vs float) | NDCG@10 | size (of SavedModel variables) | p50 / p99 ms | peak RSS |')
    print('| --- | --- | --- | --- | --- | --- |')
    for quantize in tflite.QUANTIZATIONS:
      directory = os.path.join(scratch, quantize)
      export.export_run(_RUN_DIR.value, directory, fmt=export.TFLITE, quantize=quantize)
      path = os.path.join(directory, tflite.MODEL_FILE)
      device = tflite.OnDeviceRecommender(path)
      got = _metrics(device.score, users)
      child = subprocess.run([sys.executable, '-m', 'benchmarks.on_device', f'--child={path}',
                              f'--request={request_path}', f'--calls={_CALLS.value}'], capture_output=True,
                             text=True, check=True)
      timing = json.loads(child.stdout.strip().splitlines()[-1])
      size = os.path.getsize(path)
      print(f'| {quantize} | {got["hr@10"]:.4f} ({got["hr@10"] - reference["hr@10"]:+.4f}) | {got["ndcg@10"]:.4f} | '
            f'{size / 1e6:.3f} MB ({size / variables:.0%}) | {timing["p50_ms"]:.2f} / {timing["p99_ms"]:.2f} | '
            f'{timing["peak_rss_mb"]:.0f} MB |', flush=True)


if __name__ == '__main__':
  app.run(main)
