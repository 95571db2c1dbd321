r"""Serving speed of an exported model (issues 5, 16, 18): in-process and gRPC latency, throughput, version switches.

  .venv/bin/python -m benchmarks.serving_speed [--model=mf|sequence_two_tower] [--export_dir=DIR] [--seconds=5]

Latency: the `recommend` signature of a reloaded SavedModel for one user with
`--history` items over the 1,682-item MovieLens-100K catalogue, called
in-process; p50 and p99 over `--calls` calls after warm-up. Targets: MF p50 <= 2
ms, p99 <= 10 ms; the sequence two-tower p50 <= 5 ms, p99 <= 20 ms (issue 16,
at 200 history items), on 2 cores. Without --export_dir, a second model is timed
beside it, the two taking turns in blocks of 100 calls, in-process and over gRPC
(a server each): the same model exported with `--jit_compile` (MF's SGD
reconstruction, or the sequence two-tower's query tower, compiled by XLA).

gRPC: `experiments.serve` in its own process, called over loopback with the
tensorflow-serving-api package's stub: `Predict` p50 and p99 for one user
(batch 1) over `--calls` sequential calls (the same targets).

Throughput: `--concurrency` client threads posting TF Serving REST predict
requests over keep-alive connections for `--seconds` each: requests/s (and
users/s) at batch 1 and 32.

Version switch: `--concurrency` gRPC clients each make `--switch_calls`
Predict calls while a second version is exported into the served base path;
every request must succeed (target: zero failed), and the responses' versions
show when the new one took over.

Without --export_dir the model is the demo's shape (embedding 32, 8
negatives, batch 64, 3 reconstruction epochs, lr 2.0) or, with
`--model=sequence_two_tower`, `configs/fedavg_sequence_two_tower.flags`' shape
(`--max_history`, `--num_blocks`, `--embedding_dim`), with random weights:
latency depends on shapes, not values.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from experiments import logs
from tff_rec.models import mf, sequence, two_tower
from tff_rec.serving import export
from tff_rec.serving.sequence_export import SequenceRecommender

MF, SEQUENCE = 'mf', 'sequence_two_tower'

_MODEL = flags.DEFINE_enum('model', MF, [MF, SEQUENCE], 'Without --export_dir: the model whose shape is timed.')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'An exported model (default: --model\'s shape, random weights).')
_CALLS = flags.DEFINE_integer('calls', 2000, 'Latency: timed calls.')
_HISTORY = flags.DEFINE_integer('history', 100, 'Latency: history items per request.')
_SECONDS = flags.DEFINE_float('seconds', 5.0, 'Throughput: seconds per batch size.')
_CONCURRENCY = flags.DEFINE_integer('concurrency', 4, 'Throughput and switch: concurrent client connections.')
_SWITCH_CALLS = flags.DEFINE_integer('switch_calls', 500, 'Version switch: Predict calls per client.')
_MAX_HISTORY = flags.DEFINE_integer('max_history', 100, 'The sequence two-tower\'s positions.')
_BLOCKS = flags.DEFINE_integer('num_blocks', 2, 'The sequence two-tower\'s Transformer blocks.')
_DIM = flags.DEFINE_integer('embedding_dim', 50, 'The sequence two-tower\'s embedding dimension.')

NUM_ITEMS = 1682
TARGETS = {MF: (2.0, 10.0), SEQUENCE: (5.0, 20.0)}  # (p50, p99) ms.


def demo_shaped_model(path: str, seed: int = 0, jit_compile: bool = False) -> None:
  rng = np.random.default_rng(seed)
  weights = [rng.normal(0, 0.3, size=(NUM_ITEMS + 1, 32)).astype(np.float32),
             rng.normal(0, 0.1, size=(NUM_ITEMS + 1, 1)).astype(np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, l2=0.003, batch_size=64, num_negatives=8, learning_rate=2.0,
                                epochs=3, seed=0)
  vocabulary = [str(i) for i in range(1, NUM_ITEMS + 1)]
  export.save(export.Recommender(config, vocabulary, weights, top_k=10, jit_compile=jit_compile), path,
              {'benchmark': True, 'jit_compile': jit_compile})


def sequence_shaped_model(path: str, seed: int = 0, jit_compile: bool = False) -> None:
  rng = np.random.default_rng(seed)
  genres = (rng.random((NUM_ITEMS + 1, 19)) < 0.1).astype(np.float32)
  features = two_tower.ItemFeatures(genres, rng.integers(0, two_tower.NUM_YEAR_BUCKETS, NUM_ITEMS + 1))
  config = sequence.SequenceConfig(NUM_ITEMS, 19, _DIM.value, _MAX_HISTORY.value, _BLOCKS.value, seed=seed)
  vocabulary = [str(i) for i in range(1, NUM_ITEMS + 1)]
  module = SequenceRecommender(config, vocabulary, sequence.initial_weights(config), features, top_k=10,
                               jit_compile=jit_compile)
  export.save(module, path, {'benchmark': True, 'model': SEQUENCE, 'jit_compile': jit_compile})


def shaped_model(model: str, path: str, seed: int = 0, jit_compile: bool = False) -> None:
  """A random-weight export of `model`'s benchmark shape."""
  if model == SEQUENCE:
    sequence_shaped_model(path, seed, jit_compile)
  else:
    demo_shaped_model(path, seed, jit_compile)


def request_rows(vocabulary_size: int, batch: int, history: int, seed: int) -> dict[str, list]:
  rng = np.random.default_rng(seed)
  ids = [[str(i) for i in rng.choice(np.arange(1, vocabulary_size + 1), history, replace=False)] for _ in range(batch)]
  return {'history_item_ids': ids, 'history_ratings': rng.integers(1, 6, size=(batch, history)).astype(float).tolist()}


def predict_body(rows: dict[str, list]) -> str:
  """TF Serving's row format: one object per user."""
  return json.dumps({'instances': [{'history_item_ids': ids, 'history_ratings': ratings}
                                   for ids, ratings in zip(rows['history_item_ids'], rows['history_ratings'])]})


def latency(export_dirs: list[str], vocabulary_size: int) -> list[tuple[float, float]]:
  """(p50, p99) ms of each export's `recommend`, the exports taking turns in blocks of 100 calls."""
  recommends = [tf.saved_model.load(d).signatures['recommend'] for d in export_dirs]
  rows = request_rows(vocabulary_size, 1, _HISTORY.value, 0)
  ids, ratings = tf.constant(rows['history_item_ids']), tf.constant(rows['history_ratings'], tf.float32)
  times = [[] for _ in recommends]
  for recommend in recommends:
    for _ in range(50):
      recommend(history_item_ids=ids, history_ratings=ratings)
  for _ in range(max(1, _CALLS.value // 100)):
    for recommend, out in zip(recommends, times):
      for _ in range(100):
        began = time.perf_counter()
        recommend(history_item_ids=ids, history_ratings=ratings)['item_ids'].numpy()
        out.append(time.perf_counter() - began)
  return [(float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 99) * 1e3)) for t in times]


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


def predict_request(rows: dict[str, list]) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'recommender'
  request.inputs['history_item_ids'].CopyFrom(tf.make_tensor_proto(rows['history_item_ids'], tf.string))
  request.inputs['history_ratings'].CopyFrom(tf.make_tensor_proto(rows['history_ratings'], tf.float32))
  return request


def grpc_latency(stubs: list, vocabulary_size: int) -> list[tuple[float, float]]:
  """(p50, p99) ms of Predict on each server's stub, the servers taking turns in blocks of 100 calls."""
  request = predict_request(request_rows(vocabulary_size, 1, _HISTORY.value, 0))
  times = [[] for _ in stubs]
  for stub in stubs:
    for _ in range(50):
      stub.Predict(request, timeout=60)
  for _ in range(max(1, _CALLS.value // 100)):
    for stub, out in zip(stubs, times):
      for _ in range(100):
        began = time.perf_counter()
        stub.Predict(request, timeout=60)
        out.append(time.perf_counter() - began)
  return [(float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 99) * 1e3)) for t in times]


def version_switch(stub, vocabulary_size: int, base_path: str, model: str) -> tuple[int, list, list[int]]:
  """Clients loop on Predict while version 2 is exported into the base path: (requests, failures, versions)."""
  requests = [predict_request(request_rows(vocabulary_size, 1, _HISTORY.value, seed)) for seed in range(8)]
  versions, failures = [[] for _ in range(_CONCURRENCY.value)], []

  def client(worker: int) -> None:
    for i in range(_SWITCH_CALLS.value):
      try:
        versions[worker].append(stub.Predict(requests[i % len(requests)], timeout=60).model_spec.version.value)
      except grpc.RpcError as e:
        failures.append(e)

  with concurrent.futures.ThreadPoolExecutor(_CONCURRENCY.value) as pool:
    running = [pool.submit(client, worker) for worker in range(_CONCURRENCY.value)]
    time.sleep(0.5)
    shaped_model(model, os.path.join(base_path, '2'), seed=1)  # export.save: staged beside, then renamed in.
    for future in running:
      future.result()
  return _CONCURRENCY.value * _SWITCH_CALLS.value, failures, [v for worker in versions for v in worker]


def start_server(export_dir: str) -> tuple[subprocess.Popen, int, int]:
  """experiments.serve on free ports: the process, its REST port and its gRPC port."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.Popen([sys.executable, '-m', 'experiments.serve', f'--export_dir={export_dir}', '--port=0',
                              '--grpc_port=0', '--threads=4', '--file_system_poll_wait_seconds=0.2'], cwd=root,
                             stdout=subprocess.PIPE, text=True)
  line = process.stdout.readline()
  found = re.search(r':(\d+)/v1/models/.* gRPC [^:]+:(\d+)', line)
  if not found:
    process.kill()
    raise RuntimeError(f'the server did not start: {line!r}')
  threading.Thread(target=process.stdout.read, daemon=True).start()
  return process, int(found.group(1)), int(found.group(2))


def report(what: str, how: str, model: str, names: list[str], measured: list[tuple[float, float]]) -> None:
  """Prints each export's (p50, p99) against the model's targets, and the second's ratio to the first."""
  p50_target, p99_target = TARGETS[model]
  for name, (p50, p99) in zip(names, measured):
    print(f'{what}{name}, 1 user, {how}: p50 {p50:.2f} ms (target <= {p50_target:g}: '
          f'{"met" if p50 <= p50_target else "NOT met"}), p99 {p99:.2f} ms (target <= {p99_target:g}: '
          f'{"met" if p99 <= p99_target else "NOT met"})', flush=True)
  if len(measured) == 2:
    print(f'  {names[1].strip(" ()")} / plain, side by side: p50 {measured[1][0] / measured[0][0]:.2f}, '
          f'p99 {measured[1][1] / measured[0][1]:.2f}', flush=True)


def served_model(metadata: dict) -> str:
  """The model an export holds, from its metadata (MF unless it says otherwise)."""
  return SEQUENCE if (metadata.get('model') or metadata.get('reconstruction', {}).get('model')) == SEQUENCE else MF


def main(argv):
  del argv
  logs.configure_logging()
  with tempfile.TemporaryDirectory() as scratch:
    base_path = os.path.join(scratch, 'recommender')
    export_dir = os.path.join(base_path, '1')
    if _EXPORT_DIR.value:
      shutil.copytree(_EXPORT_DIR.value, export_dir)
    else:
      shaped_model(_MODEL.value, export_dir)
    metadata = json.load(open(os.path.join(export_dir, export.METADATA)))
    vocabulary_size = metadata.get('item_vocabulary_size', NUM_ITEMS)
    model = served_model(metadata)
    # The same model exported with --jit_compile (XLA), timed side by side: only when this benchmark exports both.
    other_base = os.path.join(scratch, 'jit')
    names = ['']
    if not _EXPORT_DIR.value:
      shaped_model(model, os.path.join(other_base, '1'), jit_compile=True)
      names.append(' (--jit_compile)')
    exports = [export_dir] + [os.path.join(other_base, '1')] * (len(names) - 1)
    print(f'{model}, {vocabulary_size} items, {_HISTORY.value} history items per request', flush=True)
    measured = latency(exports, vocabulary_size)
    report('recommend', 'in-process', model, names, measured)
    process, port, grpc_port = start_server(base_path)
    other_server = start_server(other_base) if len(exports) == 2 else None
    try:
      with grpc.insecure_channel(f'127.0.0.1:{grpc_port}') as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stubs = [stub]
        other_channel = grpc.insecure_channel(f'127.0.0.1:{other_server[2]}') if other_server else None
        if other_channel:
          stubs.append(prediction_service_pb2_grpc.PredictionServiceStub(other_channel))
        measured = grpc_latency(stubs, vocabulary_size)
        if other_channel:
          other_channel.close()
        report('gRPC Predict', 'batch 1, loopback, sequential', model, names, measured)
        for batch in (1, 32):
          rate = throughput(port, vocabulary_size, batch)
          print(f'REST predict, batch {batch}, {_CONCURRENCY.value} concurrent clients: {rate:.0f} requests/s '
                f'({rate * batch:.0f} users/s)', flush=True)
        total, failures, served = version_switch(stub, vocabulary_size, base_path, model)
        print(f'Version switch under load ({_CONCURRENCY.value} gRPC clients x {_SWITCH_CALLS.value} calls, version 2 '
              f'exported meanwhile): {total} requests, {len(failures)} failed (target 0: '
              f'{"met" if not failures else "NOT met"}); answered by version 1: {served.count(1)}, version 2: '
              f'{served.count(2)}', flush=True)
        if failures:
          print(f'  first failure: {failures[0]}', flush=True)
        if not served.count(1) or not served.count(2):
          print('  the switch did not fall within the calls, so this shows nothing: raise --switch_calls', flush=True)
    finally:
      for running in [process] + ([other_server[0]] if other_server else []):
        running.terminate()
        running.wait(timeout=30)


if __name__ == '__main__':
  app.run(main)
