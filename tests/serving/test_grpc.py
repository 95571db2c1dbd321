"""TF Serving's gRPC API through the tensorflow-serving-api package's own stubs, and the Prometheus metrics."""

import http.client
import json
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import parser
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

from tests.serving.conftest import waitress_server
from tff_rec.serving import export, grpc_api, monitoring, rest, servables

IDS, RATINGS = [['item1', 'item4', '']], [[5.0, 3.0, 0.0]]


@pytest.fixture(scope='module')
def export_dir(tiny_export):
  return os.path.dirname(tiny_export)  # The base path: its version 3 is served.


@pytest.fixture(scope='module')
def servers(export_dir):
  """gRPC and REST on one manager and one metrics registry, as experiments.serve runs them."""
  metrics = monitoring.Metrics('rec')
  manager = servables.ModelManager('rec', export_dir, on_load=metrics.loaded, max_batch_size=8, max_list_length=50)
  server, port = grpc_api.create_server(manager, metrics, port=0, threads=2)
  server.start()
  with waitress_server(rest.PredictionService(manager, metrics)) as web_port:
    channel = grpc.insecure_channel(f'127.0.0.1:{port}')
    yield channel, web_port
    channel.close()
    server.stop(grace=None)


def _predict_request(signature='', ids=IDS, ratings=RATINGS, **extra):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'rec'
  request.model_spec.signature_name = signature
  request.inputs['history_item_ids'].CopyFrom(tf.make_tensor_proto(ids, tf.string))
  request.inputs['history_ratings'].CopyFrom(tf.make_tensor_proto(ratings, tf.float32))
  for key, proto in extra.items():
    request.inputs[key].CopyFrom(proto)
  return request


def test_predict_gives_the_signatures_outputs_and_the_served_version(servers, export_dir):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(servers[0])
  model = tf.saved_model.load(f'{export_dir}/3')
  expected = model.signatures['recommend'](history_item_ids=tf.constant(IDS), history_ratings=tf.constant(RATINGS))
  response = stub.Predict(_predict_request(), timeout=30)
  assert (response.model_spec.name, response.model_spec.version.value) == ('rec', 3)
  assert response.model_spec.signature_name == 'serving_default'
  np.testing.assert_array_equal(tf.make_ndarray(response.outputs['item_ids']), expected['item_ids'].numpy())
  np.testing.assert_allclose(tf.make_ndarray(response.outputs['scores']), expected['scores'].numpy(), rtol=1e-6)
  request = _predict_request('score', candidate_item_ids=tf.make_tensor_proto([['item2', 'nope']], tf.string))
  request.output_filter.append('scores')
  scores = tf.make_ndarray(stub.Predict(request, timeout=30).outputs['scores'])
  assert scores.shape == (1, 2) and scores[0, 1] == export.UNKNOWN_SCORE


def test_metadata_and_status_like_tf_serving(servers):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(servers[0])
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=['signature_def'])
  request.model_spec.name = 'rec'
  response = stub.GetModelMetadata(request, timeout=30)
  assert response.model_spec.version.value == 3
  signature_defs = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata['signature_def'].Unpack(signature_defs)
  assert sorted(signature_defs.signature_def) == ['recommend', 'score', 'serving_default']
  assert signature_defs.signature_def['score'].inputs['candidate_item_ids'].dtype == tf.string.as_datatype_enum
  status = model_service_pb2_grpc.ModelServiceStub(servers[0]).GetModelStatus(
      get_model_status_pb2.GetModelStatusRequest(model_spec={'name': 'rec'}), timeout=30)
  assert [(s.version, s.state) for s in status.model_version_status] == [
      (3, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _malformed():
  """(request builder, expected code, words the message must hold)."""
  invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
  def with_spec(**spec):
    def build():
      request = _predict_request()
      request.model_spec.Clear()
      for key, value in spec.items():
        if key == 'version':
          request.model_spec.version.value = value
        else:
          setattr(request.model_spec, key, value)
      return request
    return build
  def without(key):
    def build():
      request = _predict_request()
      del request.inputs[key]
      return request
    return build
  return [
      (with_spec(), invalid, 'model_spec.name'),
      (with_spec(name='other'), missing, 'Latest(other)'),
      (with_spec(name='rec', version=2), missing, 'Specific(rec, 2)'),
      (with_spec(name='rec', version_label='stable'), invalid, 'version label'),
      (lambda: _predict_request('nope'), invalid, 'Serving signature name: "nope"'),
      (without('history_ratings'), invalid, "missing inputs ['history_ratings']"),
      (lambda: _predict_request(user_id=tf.make_tensor_proto([['u']])), invalid, "unexpected inputs ['user_id']"),
      (lambda: _predict_request(history_ratings=tf.make_tensor_proto(RATINGS, tf.float64)), invalid,
       'must be float32, got float64'),
      (lambda: _predict_request(history_item_ids=tf.make_tensor_proto([[1, 2, 3]], tf.int64)), invalid,
       'must be string, got int64'),
      (lambda: _predict_request(ids=['item1'], ratings=[1.0]), invalid, 'rank 2'),
      (lambda: _predict_request(ids=IDS * 9, ratings=RATINGS * 9), invalid, 'Batch size 9 exceeds the maximum of 8'),
      (lambda: _predict_request(ids=IDS * 2), invalid, 'same batch size'),
      (lambda: _predict_request(ids=[['item1'] * 51], ratings=[[1.0] * 51]), invalid, 'the maximum is 50'),
      (lambda: _predict_request(ratings=[[5.0, np.nan, 0.0]]), invalid, 'finite'),
      (lambda: _predict_request(ids=[['item1', 'item2']], ratings=[[1.0]]), invalid, 'same shape'),
      (lambda: _predict_request(ids=np.zeros((0, 3), object), ratings=np.zeros((0, 3), np.float32)), invalid,
       'empty'),
  ]


def test_bad_requests_get_tf_servings_status_codes_and_name_what_was_wrong(servers):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(servers[0])
  for build, code, words in _malformed():
    with pytest.raises(grpc.RpcError) as raised:
      stub.Predict(build(), timeout=30)
      pytest.fail(f'accepted: {words}')
    assert (raised.value.code(), words in raised.value.details()) == (code, True), raised.value.details()
  request = _predict_request()
  request.output_filter.append('ranks')
  with pytest.raises(grpc.RpcError, match="output_filter names outputs \\['ranks'\\]"):
    stub.Predict(request, timeout=30)
  for fields, words in (([], 'at least one metadata_field'), (['signature_def', 'x'], "['x'] are not supported")):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields, model_spec={'name': 'rec'})
    with pytest.raises(grpc.RpcError, match=words.replace('[', '\\[').replace(']', '\\]')) as raised:
      stub.GetModelMetadata(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  with pytest.raises(grpc.RpcError) as raised:
    stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)
  assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
  assert tf.make_ndarray(stub.Predict(_predict_request(), timeout=30).outputs['item_ids']).shape == (1, 3)


def _metrics(port) -> dict[tuple, float]:
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  connection.request('GET', monitoring.PATH)
  response = connection.getresponse()
  assert response.status == 200 and response.getheader('Content-Type').startswith('text/plain')
  samples = {}
  for family in parser.text_string_to_metric_families(response.read().decode()):
    for sample in family.samples:
      samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
  return samples


def test_metrics_count_requests_by_signature_and_code_and_time_them(servers):
  channel, port = servers
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  before = _metrics(port)
  for _ in range(3):
    stub.Predict(_predict_request('recommend'), timeout=30)
  for signature in ('nope', 'score'):  # An unknown signature, and score without its candidates: two errors.
    with pytest.raises(grpc.RpcError):
      stub.Predict(_predict_request(signature), timeout=30)
  for path in ('/v1/models/rec:predict', '/v1/models/other:predict'):
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    connection.request('POST', path, body=json.dumps({'instances': [{'history_item_ids': IDS[0],
                                                                      'history_ratings': RATINGS[0]}]}))
    connection.getresponse().read()
  after = _metrics(port)
  def delta(name, api='grpc', **labels):
    key = (name, tuple(sorted({'model_name': 'rec', 'api': api, 'method': 'predict', **labels}.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)
  assert delta('tff_rec_requests_total', api='rest', signature='serving_default', code='OK') == 1
  assert delta('tff_rec_requests_total', api='rest', signature='', code='NOT_FOUND') == 1
  assert delta('tff_rec_requests_total', signature='recommend', code='OK') == 3
  assert delta('tff_rec_requests_total', signature='<unknown>', code='INVALID_ARGUMENT') == 1
  assert delta('tff_rec_requests_total', signature='score', code='INVALID_ARGUMENT') == 1
  assert delta('tff_rec_request_latency_seconds_count', signature='recommend') == 3
  assert delta('tff_rec_request_latency_seconds_bucket', signature='recommend', le='+Inf') == 3
  assert 0 < delta('tff_rec_request_latency_seconds_sum', signature='recommend') < 30
  assert after[('tff_rec_model_version', (('model_name', 'rec'),))] == 3
  assert after[('tff_rec_model_loads_total', (('model_name', 'rec'), ('outcome', 'ok')))] == 1


def test_a_failure_of_the_servers_own_is_internal_and_counted(servers, monkeypatch):
  channel, port = servers
  def broken(self, name, arrays):
    raise RuntimeError('the disk went away')
  monkeypatch.setattr(servables.Servable, 'run', broken)
  before = _metrics(port)
  with pytest.raises(grpc.RpcError) as raised:
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_predict_request(), timeout=30)
  assert raised.value.code() == grpc.StatusCode.INTERNAL and 'RuntimeError: the disk went away' in raised.value.details()
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  connection.request('POST', '/v1/models/rec:predict', body=json.dumps({'instances': [{'history_item_ids': IDS[0],
                                                                                       'history_ratings': RATINGS[0]}]}))
  response = connection.getresponse()
  assert response.status == 500 and 'the disk went away' in json.loads(response.read())['error']
  after = _metrics(port)
  for api in ('grpc', 'rest'):
    key = ('tff_rec_requests_total', tuple(sorted({'model_name': 'rec', 'api': api, 'method': 'predict',
                                                    'signature': 'serving_default', 'code': 'INTERNAL'}.items())))
    assert after[key] - before.get(key, 0.0) == 1
