"""TF Serving's REST API over a real socket: status, metadata, predict formats, and 50+ kinds of bad requests."""

import http.client
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.conftest import waitress_server
from tff_rec.serving import export, rest, servables

HISTORY = {'history_item_ids': ['item1', 'item4', ''], 'history_ratings': [5.0, 3.0, 0.0]}


@pytest.fixture(scope='module')
def export_dir(tiny_export):
  return tiny_export  # One SavedModel directory: served as version 1.


@pytest.fixture(scope='module')
def server(export_dir):
  service = rest.PredictionService(servables.ModelManager('rec', export_dir, max_batch_size=8, max_list_length=50))
  with waitress_server(service) as port:
    yield port


def _call(port, method, path, body=None):
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  try:
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={'Content-Type': 'application/json'})
    response = connection.getresponse()
    return response.status, json.loads(response.read())
  finally:
    connection.close()


def test_status_and_metadata_like_tf_serving(server):
  for path in ('/v1/models/rec', '/v1/models/rec/versions/1'):
    status, body = _call(server, 'GET', path)
    assert status == 200 and body['model_version_status'][0]['state'] == 'AVAILABLE'
  status, body = _call(server, 'GET', '/v1/models/rec/metadata')
  assert status == 200 and body['model_spec'] == {'name': 'rec', 'signature_name': '', 'version': '1'}
  defs = body['metadata']['signature_def']['signature_def']
  assert sorted(defs) == ['recommend', 'score', 'serving_default']
  assert defs['score']['inputs']['candidate_item_ids']['dtype'] == 'DT_STRING'
  assert defs['serving_default']['outputs']['scores']['dtype'] == 'DT_FLOAT'
  assert defs['serving_default']['method_name'] == 'tensorflow/serving/predict'


def test_predict_row_and_columnar_formats_give_the_signatures_outputs(server, export_dir):
  model = tf.saved_model.load(export_dir)
  expected = model.signatures['serving_default'](history_item_ids=tf.constant([HISTORY['history_item_ids']]),
                                                 history_ratings=tf.constant([HISTORY['history_ratings']]))
  status, body = _call(server, 'POST', '/v1/models/rec:predict', {'instances': [HISTORY, HISTORY]})
  assert status == 200 and len(body['predictions']) == 2
  first = body['predictions'][0]
  assert first['item_ids'] == [x.decode() for x in expected['item_ids'].numpy()[0]]
  np.testing.assert_allclose(first['scores'], expected['scores'].numpy()[0], rtol=1e-6)
  columnar = {'signature_name': 'recommend', 'inputs': {k: [v] for k, v in HISTORY.items()}}
  status, body = _call(server, 'POST', '/v1/models/rec/versions/1:predict', columnar)
  assert status == 200 and body['outputs']['item_ids'] == [first['item_ids']]
  # A single-output signature's output comes without its name, as in TF Serving.
  score = {'signature_name': 'score', 'instances': [{**HISTORY, 'candidate_item_ids': ['item2', 'nope']}]}
  status, body = _call(server, 'POST', '/v1/models/rec:predict', score)
  assert status == 200 and len(body['predictions'][0]) == 2 and body['predictions'][0][1] == export.UNKNOWN_SCORE


def _malformed():
  """(method, path, body, expected status): at least 50 kinds of bad request."""
  good = {'instances': [HISTORY]}
  predict = '/v1/models/rec:predict'
  cases = [
      ('POST', predict, b'', 400),
      ('POST', predict, b'{', 400),
      ('POST', predict, b'not json', 400),
      ('POST', predict, b'\xff\xfe', 400),
      ('POST', predict, b'[1, 2]', 400),
      ('POST', predict, b'"instances"', 400),
      ('POST', predict, b'null', 400),
      ('POST', predict, b'{"instances": [{"history_item_ids": ["item1"], "history_ratings": [NaN]}]}', 400),
      ('POST', predict, b'{"instances": [{"history_item_ids": ["item1"], "history_ratings": [Infinity]}]}', 400),
      ('POST', predict, {}, 400),
      ('POST', predict, {'instances': []}, 400),
      ('POST', predict, {'instances': {}}, 400),
      ('POST', predict, {'instances': 'x'}, 400),
      ('POST', predict, {'instances': [1, 2]}, 400),
      ('POST', predict, {'instances': [[HISTORY['history_item_ids']]]}, 400),
      ('POST', predict, {**good, 'inputs': {k: [v] for k, v in HISTORY.items()}}, 400),
      ('POST', predict, {**good, 'signature_name': 'nope'}, 400),
      ('POST', predict, {**good, 'signature_name': 3}, 400),
      ('POST', predict, {**good, 'signature_name': None}, 400),
      ('POST', predict, {**good, 'signature_name': '__saved_model_init_op'}, 400),
      ('POST', predict, {**good, 'extra_field': 1}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1']}]}, 400),
      ('POST', predict, {'instances': [{'history_ratings': [1.0]}]}, 400),
      ('POST', predict, {'instances': [{**HISTORY, 'user_id': 'u1'}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': 'item1', 'history_ratings': 1.0}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': [['item1']], 'history_ratings': [[1.0]]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': [1, 2], 'history_ratings': [1.0, 2.0]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': [None], 'history_ratings': [1.0]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'], 'history_ratings': ['5']}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'], 'history_ratings': [True]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'], 'history_ratings': [None]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'], 'history_ratings': [{}]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'], 'history_ratings': [1e400]}]}, 400),
      ('POST', predict, {'instances': [{'history_item_ids': ['item1', 'item2'], 'history_ratings': [1.0]}]}, 400),
      ('POST', predict, {'instances': [HISTORY, {'history_item_ids': ['item1'], 'history_ratings': [1.0]}]}, 400),
      ('POST', predict, {'instances': [HISTORY] * 9}, 400),  # Over max_batch_size.
      ('POST', predict, {'instances': [{'history_item_ids': ['item1'] * 51, 'history_ratings': [1.0] * 51}]}, 400),
      ('POST', predict, {'inputs': []}, 400),
      ('POST', predict, {'inputs': 'x'}, 400),
      ('POST', predict, {'inputs': {'history_item_ids': [['item1']]}}, 400),
      ('POST', predict, {'inputs': {'history_item_ids': ['item1'], 'history_ratings': [1.0]}}, 400),
      ('POST', predict, {'inputs': {'history_item_ids': [['item1']], 'history_ratings': [[1.0], [2.0]]}}, 400),
      ('POST', predict, {'inputs': {'history_item_ids': [], 'history_ratings': []}}, 400),
      ('POST', predict, {'inputs': {'history_item_ids': [['item1']], 'history_ratings': [[1.0]], 'x': [[1]]}}, 400),
      ('POST', predict, {'signature_name': 'score', 'instances': [HISTORY]}, 400),
      ('POST', predict, {'signature_name': 'score', 'instances': [{**HISTORY, 'candidate_item_ids': [1]}]}, 400),
      ('POST', predict, {'signature_name': 'score', 'inputs': {
          'history_item_ids': [['item1']], 'history_ratings': [[1.0]], 'candidate_item_ids': [['a'], ['b']]}}, 400),
      ('POST', '/v1/models/other:predict', good, 404),
      ('POST', '/v1/models/rec/versions/2:predict', good, 404),
      ('POST', '/v1/models/rec:classify', good, 404),
      ('POST', '/v2/models/rec:predict', good, 404),
      ('POST', '/', good, 404),
      ('GET', predict, None, 405),
      ('GET', '/v1/models/other', None, 404),
      ('GET', '/v1/models/rec/versions/7/metadata', None, 404),
      ('POST', '/v1/models/rec', good, 405),
      ('DELETE', '/v1/models/rec', None, 405),
  ]
  return cases


def test_bad_requests_get_errors_and_the_server_keeps_serving(server):
  cases = _malformed()
  assert len(cases) >= 50
  for method, path, body, expected in cases:
    status, answer = _call(server, method, path, body)
    assert (status, sorted(answer)) == (expected, ['error']), (method, path, body, answer)
    assert answer['error']  # A message, not an empty string.
  status, body = _call(server, 'POST', '/v1/models/rec:predict', {'instances': [HISTORY]})
  assert status == 200 and len(body['predictions'][0]['item_ids']) == 3


def test_errors_name_what_was_wrong(server):
  status, body = _call(server, 'POST', '/v1/models/rec:predict', {'signature_name': 'nope', 'instances': [HISTORY]})
  assert status == 400 and body['error'] == 'Serving signature name: "nope" not found in signature def'
  status, body = _call(server, 'POST', '/v1/models/rec:predict', {'instances': [{'history_item_ids': ['item1']}]})
  assert "missing inputs ['history_ratings']" in body['error']
  status, body = _call(server, 'POST', '/v1/models/rec:predict', {'instances': [HISTORY] * 9})
  assert body['error'] == 'Batch size 9 exceeds the maximum of 8'
  status, body = _call(server, 'POST', '/v1/models/rec:predict',
                       {'instances': [{'history_item_ids': ['item1', 'item2'], 'history_ratings': [1.0]}]})
  assert 'same shape' in body['error']
  status, body = _call(server, 'GET', '/v1/models/other')
  assert status == 404 and body['error'] == 'Servable not found for request: Latest(other)'


def test_not_a_saved_model_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not a SavedModel directory'):
    servables.ModelManager('rec', str(tmp_path))
