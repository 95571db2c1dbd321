"""The serve binary: starts on an exported model, answers on REST and gRPC, stops on SIGTERM/SIGINT."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tff_rec.models import mf
from tff_rec.serving import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_serve_binary_serves_and_stops(tmp_path):
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(4, 2)).astype(np.float32), np.zeros((4, 1), np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, 0.0, 4, 1, 0.5, 1, 0)
  export.save(export.Recommender(config, ['a', 'b', 'c'], weights, top_k=2), str(tmp_path / 'model'), {})
  process = subprocess.Popen([sys.executable, '-m', 'experiments.serve', f'--export_dir={tmp_path / "model"}',
                              '--port=0', '--grpc_port=0', '--model_name=m'], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
  try:
    line = process.stdout.readline()
    port, grpc_port = map(int, re.search(r':(\d+)/v1/models/m \(REST\) and gRPC 127.0.0.1:(\d+)', line).groups())
    with grpc.insecure_channel(f'127.0.0.1:{grpc_port}') as channel:
      status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
          get_model_status_pb2.GetModelStatusRequest(model_spec={'name': 'm'}), timeout=60)
    assert [s.version for s in status.model_version_status] == [1]
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    connection.request('POST', '/v1/models/m:predict',
                       body=json.dumps({'instances': [{'history_item_ids': ['a'], 'history_ratings': [1.0]}]}))
    answer = json.loads(connection.getresponse().read())
    assert len(answer['predictions'][0]['item_ids']) == 2 and 'a' not in answer['predictions'][0]['item_ids']
  finally:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 0  # Generous: a loaded 2-core CI machine is slow to stop TF.


def test_serve_binary_rejects_a_missing_model(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'experiments.serve', f'--export_dir={tmp_path}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'is not a SavedModel directory' in result.stderr


def test_serve_binary_names_a_taken_port(tmp_path):
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(4, 2)).astype(np.float32), np.zeros((4, 1), np.float32)]
  export.save(export.Recommender(export.ServingConfig(mf.IMPLICIT, 0.0, 4, 1, 0.5, 1, 0), ['a', 'b', 'c'], weights,
                                 top_k=2), str(tmp_path / 'model'), {})
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    for ports, words in ((['--port=0', f'--grpc_port={taken.getsockname()[1]}'], 'gRPC: cannot listen on 127.0.0.1:'),
                         ([f'--port={taken.getsockname()[1]}', '--grpc_port=-1'], 'REST: cannot listen on 127.0.0.1:')):
      result = subprocess.run([sys.executable, '-m', 'experiments.serve', f'--export_dir={tmp_path / "model"}',
                               *ports], cwd=ROOT, capture_output=True, text=True, timeout=120)
      assert result.returncode == 2 and words in result.stderr and 'Traceback' not in result.stderr, result.stderr
