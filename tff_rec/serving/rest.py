"""TF Serving's REST API for an exported model, as a WSGI application (Werkzeug routing and requests).

Implements the subset of https://www.tensorflow.org/tfx/serving/api_rest that
a predict client uses, with TF Serving's request and response formats, so a
client written for TF Serving works unchanged:

- `GET /v1/models/NAME[/versions/1]`: the model's version status.
- `GET /v1/models/NAME[/versions/1]/metadata`: its signature defs (the
  SavedModel's own `SignatureDef` protos in proto JSON, as TF Serving does).
- `POST /v1/models/NAME[/versions/1]:predict`: `{"signature_name": ...,
  "instances": [...]}` (row format: one object per example, every example the
  same shape) or `{"inputs": {...}}` (columnar) -> `{"predictions": ...}` or
  `{"outputs": ...}`; a single-output signature's output is given without its
  name, as in TF Serving.

- `GET /monitoring/prometheus/metrics`: the server's metrics
  (`tff_rec.serving.monitoring`), at TF Serving's path.

The model and its versions are `tff_rec.serving.servables.ModelManager`'s:
`/versions/N` answers only for the version being served. Every bad request
(malformed JSON, missing or extra inputs, wrong shapes or types, an unknown
signature, a batch over `max_batch_size`) is answered `{"error": "..."}` with
status 400 (404 for an unknown model, version or path, 405 for a wrong
method); the model is never called with it. Serve the app with any WSGI
server (`experiments.serve` uses waitress); TF Serving itself serves the same
directory in production (see docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import tensorflow as tf
from werkzeug import exceptions
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

from tff_rec.serving import monitoring
from tff_rec.serving.servables import BadRequest, ModelManager, ServableNotFound, check_names, not_found

DEFAULT_SIGNATURE = 'serving_default'
_NUMPY = {tf.string: object, tf.float32: np.float32, tf.int64: np.int64, tf.int32: np.int32}
_CODES = {200: monitoring.OK, 400: monitoring.INVALID_ARGUMENT, 404: monitoring.NOT_FOUND,
          405: monitoring.UNIMPLEMENTED, 500: monitoring.INTERNAL}


class _Name(BaseConverter):
  """A model name: no '/' and no ':' (the ':predict' verb follows it)."""

  regex = '[^/:]+'


class PredictionService:
  """The served model behind TF Serving's REST API, as a WSGI application.

  Args:
    manager: The model and its versions.
    metrics: Where requests are counted and timed (default: a registry of its own).
  """

  def __init__(self, manager: ModelManager, metrics: monitoring.Metrics | None = None):
    self.manager = manager
    self.metrics = metrics or monitoring.Metrics(manager.model_name)
    self.url_map = Map([
        Rule('/v1/models/<name:model>', endpoint='status', methods=['GET']),
        Rule('/v1/models/<name:model>/versions/<name:version>', endpoint='status', methods=['GET']),
        Rule('/v1/models/<name:model>/metadata', endpoint='metadata', methods=['GET']),
        Rule('/v1/models/<name:model>/versions/<name:version>/metadata', endpoint='metadata', methods=['GET']),
        Rule('/v1/models/<name:model>:predict', endpoint='predict', methods=['POST']),
        Rule('/v1/models/<name:model>/versions/<name:version>:predict', endpoint='predict', methods=['POST']),
        Rule(monitoring.PATH, endpoint='metrics', methods=['GET']),
    ], converters={'name': _Name})

  # WSGI.

  def __call__(self, environ, start_response):
    request = Request(environ)
    began = time.perf_counter()
    endpoint, signature = None, ''
    try:
      endpoint, args = self.url_map.bind_to_environ(environ).match()
      if endpoint == 'metrics':
        data, content_type = self.metrics.exposition()
        return Response(data, status=200, content_type=content_type)(environ, start_response)
      servable = self.manager.servable(args.get('model'), _version(args.get('model'), args.get('version')))
      if endpoint == 'status':
        body = {'model_version_status': [{'version': str(servable.version), 'state': 'AVAILABLE',
                                          'status': {'error_code': 'OK', 'error_message': ''}}]}
      elif endpoint == 'metadata':
        body = {'model_spec': {'name': self.manager.model_name, 'signature_name': '',
                               'version': str(servable.version)},
                'metadata': {'signature_def': {'signature_def': servable.signature_defs_json}}}
      else:
        request_body = _parse_json(request.get_data())
        name = request_body.get('signature_name', DEFAULT_SIGNATURE)
        signature = monitoring.signature_label(name, servable.signatures)
        body = predict(servable, request_body)
      response = _json(body, 200)
    except BadRequest as e:
      response = _json({'error': str(e)}, 400)
    except exceptions.MethodNotAllowed:
      response = _json({'error': f'Malformed request: {request.method} {request.path} (method not allowed)'}, 405)
    except ServableNotFound as e:
      response = _json({'error': str(e)}, 404)
    except exceptions.NotFound:
      response = _json({'error': f'Malformed request: {request.method} {request.path}'}, 404)
    except Exception as e:  # pylint: disable=broad-except  # The server's own failure: counted, answered 500.
      logging.exception('REST %s %s failed', request.method, request.path)
      response = _json({'error': f'Internal error: {type(e).__name__}: {e}'}, 500)
    if endpoint is not None:
      self.metrics.record('rest', endpoint, signature, _CODES[response.status_code], time.perf_counter() - began)
    return response(environ, start_response)


def _version(model: str | None, version: str | None) -> int | None:
  if version is None:
    return None
  if not version.isdigit():
    raise not_found(model, version)
  return int(version)


def predict(servable, request: dict[str, Any]) -> dict[str, Any]:
  """A parsed predict request body -> TF Serving's response body; raises BadRequest."""
  name = servable.check_signature(request.get('signature_name', DEFAULT_SIGNATURE))
  unknown = set(request) - {'signature_name', 'instances', 'inputs'}
  if unknown:
    raise BadRequest(f'Unknown request fields {sorted(unknown)}; expected "signature_name" and one of '
                     '"instances" or "inputs"')
  if ('instances' in request) == ('inputs' in request):
    raise BadRequest('Request must have exactly one of "instances" (row format) or "inputs" (columnar format)')
  specs = servable.inputs[name]
  row_format = 'instances' in request
  columns = _columns_from_rows(request['instances'], specs) if row_format else _columns(request['inputs'], specs)
  arrays = {key: _array(key, value, specs[key], servable.max_batch_size) for key, value in columns.items()}
  outputs = {key: _jsonable(value) for key, value in servable.run(name, arrays).items()}
  if row_format:
    batch = next(iter(arrays.values())).shape[0]
    if len(outputs) == 1:
      return {'predictions': next(iter(outputs.values()))}
    return {'predictions': [{key: value[i] for key, value in outputs.items()} for i in range(batch)]}
  return {'outputs': next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def _array(key: str, value: Any, spec: tf.TensorSpec, max_batch_size: int) -> np.ndarray:
  """One input's JSON value -> an array of the spec's dtype and rank, or BadRequest naming what is wrong."""
  if not isinstance(value, list):
    raise BadRequest(f'Input "{key}" must be a list (a batch), got {type(value).__name__}')
  if len(value) > max_batch_size:  # Before looking at every value of a huge request.
    raise BadRequest(f'Batch size {len(value)} exceeds the maximum of {max_batch_size}')
  if not value:
    raise BadRequest(f'Input "{key}" is empty: a request needs at least one example')
  rank = len(spec.shape)
  lengths = set()
  for row in value:
    if not isinstance(row, list) or (rank > 2 and row and not isinstance(row[0], list)):
      raise BadRequest(f'Input "{key}" must have rank {rank} ([batch, n] lists of values)')
    lengths.add(len(row))
  if len(lengths) != 1:
    raise BadRequest(f'Input "{key}": every example must have the same length (pad histories with ""), '
                     f'got lengths {sorted(lengths)}')
  flat = [x for row in value for x in row]
  if spec.dtype == tf.string:
    if not all(isinstance(x, str) for x in flat):
      raise BadRequest(f'Input "{key}" must hold strings ({spec.dtype.name})')
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
  else:
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
      raise BadRequest(f'Input "{key}" must hold numbers ({spec.dtype.name})')  # (Finiteness: Servable.run.)
    array = np.array(flat, dtype=_NUMPY[spec.dtype])
  return array.reshape(len(value), lengths.pop())


def _columns_from_rows(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, list]:
  if not isinstance(instances, list) or not instances:
    raise BadRequest('"instances" must be a non-empty list of examples')
  columns = {key: [] for key in specs}
  for i, instance in enumerate(instances):
    if not isinstance(instance, dict):
      raise BadRequest(f'instances[{i}] must be an object with the named inputs {sorted(specs)}')
    check_names(instance, specs, f'instances[{i}]')
    for key in specs:
      columns[key].append(instance[key])
  return columns


def _columns(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, Any]:
  if not isinstance(inputs, dict):
    raise BadRequest(f'"inputs" must be an object with the named inputs {sorted(specs)}')
  check_names(inputs, specs, '"inputs"')
  return dict(inputs)


def _parse_json(body: bytes) -> dict[str, Any]:
  def no_constants(name):
    raise ValueError(f'{name} is not valid JSON')
  try:
    parsed = json.loads(body.decode('utf-8'), parse_constant=no_constants)
  except (UnicodeDecodeError, ValueError) as e:
    raise BadRequest(f'JSON Parse error: {e}') from e
  if not isinstance(parsed, dict):
    raise BadRequest('JSON Value: the request body must be a JSON object')
  return parsed


def _jsonable(array: np.ndarray) -> Any:
  if array.dtype == object:
    return np.vectorize(lambda b: b.decode('utf-8', 'replace'), otypes=[object])(array).tolist()
  return array.tolist()


def _json(body: dict[str, Any], status: int) -> Response:
  return Response(json.dumps(body), status=status, mimetype='application/json')
