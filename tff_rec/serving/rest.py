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

Every bad request (malformed JSON, missing or extra inputs, wrong shapes or
types, an unknown signature, a batch over `max_batch_size`) is answered
`{"error": "..."}` with status 400 (404 for an unknown model or path, 405 for a
wrong method); the model is never called with it. Serve the app with any WSGI
server (`experiments.serve` uses waitress); TF Serving itself serves the same
directory in production (see docs/serving.md).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from werkzeug import exceptions
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

VERSION = '1'
DEFAULT_SIGNATURE = 'serving_default'
_NUMPY = {tf.string: object, tf.float32: np.float32, tf.int64: np.int64, tf.int32: np.int32}


class BadRequest(Exception):
  """A request the model must not see; the message goes back to the client."""


class ServableNotFound(Exception):
  """A model name or version this server does not serve."""


class _Name(BaseConverter):
  """A model name: no '/' and no ':' (the ':predict' verb follows it)."""

  regex = '[^/:]+'


class PredictionService:
  """An exported SavedModel behind TF Serving's REST API.

  Args:
    export_dir: A SavedModel directory (`tff_rec.serving.export`).
    model_name: The NAME in the URLs.
    max_batch_size: Largest batch a predict request may carry.
    max_list_length: Largest number of values one example's input may carry.
  """

  def __init__(self, export_dir: str, model_name: str, *, max_batch_size: int = 256, max_list_length: int = 10_000):
    if not os.path.exists(os.path.join(export_dir, 'saved_model.pb')):
      raise FileNotFoundError(f'{export_dir} is not a SavedModel directory (no saved_model.pb); export one with '
                              '`python -m experiments.export`')
    if max_batch_size < 1 or max_list_length < 1:
      raise ValueError(f'max_batch_size and max_list_length must be >= 1, got {max_batch_size}, {max_list_length}')
    self.model_name = model_name
    self.max_batch_size, self.max_list_length = max_batch_size, max_list_length
    self.model = tf.saved_model.load(export_dir)
    self.signatures = dict(self.model.signatures)
    self.inputs = {name: fn.structured_input_signature[1] for name, fn in self.signatures.items()}
    self.signature_defs = _signature_defs(export_dir)
    self.url_map = Map([
        Rule('/v1/models/<name:model>', endpoint='status', methods=['GET']),
        Rule('/v1/models/<name:model>/versions/<name:version>', endpoint='status', methods=['GET']),
        Rule('/v1/models/<name:model>/metadata', endpoint='metadata', methods=['GET']),
        Rule('/v1/models/<name:model>/versions/<name:version>/metadata', endpoint='metadata', methods=['GET']),
        Rule('/v1/models/<name:model>:predict', endpoint='predict', methods=['POST']),
        Rule('/v1/models/<name:model>/versions/<name:version>:predict', endpoint='predict', methods=['POST']),
    ], converters={'name': _Name})

  # WSGI.

  def __call__(self, environ, start_response):
    request = Request(environ)
    try:
      endpoint, args = self.url_map.bind_to_environ(environ).match()
      self._check_servable(args.get('model'), args.get('version'))
      if endpoint == 'status':
        body = {'model_version_status': [{'version': VERSION, 'state': 'AVAILABLE',
                                          'status': {'error_code': 'OK', 'error_message': ''}}]}
      elif endpoint == 'metadata':
        body = {'model_spec': {'name': self.model_name, 'signature_name': '', 'version': VERSION},
                'metadata': {'signature_def': {'signature_def': self.signature_defs}}}
      else:
        body = self.predict(request.get_data())
      response = _json(body, 200)
    except BadRequest as e:
      response = _json({'error': str(e)}, 400)
    except exceptions.MethodNotAllowed:
      response = _json({'error': f'Malformed request: {request.method} {request.path} (method not allowed)'}, 405)
    except ServableNotFound as e:
      response = _json({'error': str(e)}, 404)
    except exceptions.NotFound:
      response = _json({'error': f'Malformed request: {request.method} {request.path}'}, 404)
    return response(environ, start_response)

  def _check_servable(self, model: str | None, version: str | None) -> None:
    if model != self.model_name or version not in (None, VERSION):
      wanted = f'Latest({model})' if version is None else f'Specific({model}, {version})'
      raise ServableNotFound(f'Servable not found for request: {wanted}')

  # Predict.

  def predict(self, body: bytes) -> dict[str, Any]:
    """A predict request body -> TF Serving's response body; raises BadRequest."""
    request = _parse_json(body)
    name = request.get('signature_name', DEFAULT_SIGNATURE)
    if not isinstance(name, str) or name not in self.signatures:
      raise BadRequest(f'Serving signature name: "{name}" not found in signature def')
    unknown = set(request) - {'signature_name', 'instances', 'inputs'}
    if unknown:
      raise BadRequest(f'Unknown request fields {sorted(unknown)}; expected "signature_name" and one of '
                       '"instances" or "inputs"')
    if ('instances' in request) == ('inputs' in request):
      raise BadRequest('Request must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    specs = self.inputs[name]
    row_format = 'instances' in request
    columns = _columns_from_rows(request['instances'], specs) if row_format else _columns(request['inputs'], specs)
    tensors = {key: self._tensor(key, value, specs[key]) for key, value in columns.items()}
    batches = {t.shape[0] for t in tensors.values()}
    if len(batches) != 1:
      raise BadRequest(f'All inputs must have the same batch size, got {sorted(batches)}')
    try:
      outputs = self.signatures[name](**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
      raise BadRequest(_model_error(str(getattr(e, 'message', e)))) from e
    outputs = {key: _jsonable(value.numpy()) for key, value in outputs.items()}
    if row_format:
      batch = batches.pop()
      if len(outputs) == 1:
        return {'predictions': next(iter(outputs.values()))}
      return {'predictions': [{key: value[i] for key, value in outputs.items()} for i in range(batch)]}
    return {'outputs': next(iter(outputs.values())) if len(outputs) == 1 else outputs}

  def _tensor(self, key: str, value: Any, spec: tf.TensorSpec) -> tf.Tensor:
    """One input's JSON value -> a tensor of the spec's dtype and rank, or BadRequest naming what is wrong."""
    if not isinstance(value, list):
      raise BadRequest(f'Input "{key}" must be a list (a batch), got {type(value).__name__}')
    if len(value) > self.max_batch_size:
      raise BadRequest(f'Batch size {len(value)} exceeds the maximum of {self.max_batch_size}')
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
    length = lengths.pop()
    if length > self.max_list_length:
      raise BadRequest(f'Input "{key}" has {length} values per example; the maximum is {self.max_list_length}')
    flat = [x for row in value for x in row]
    if spec.dtype == tf.string:
      if not all(isinstance(x, str) for x in flat):
        raise BadRequest(f'Input "{key}" must hold strings ({spec.dtype.name})')
    else:
      if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        raise BadRequest(f'Input "{key}" must hold numbers ({spec.dtype.name})')
      if not all(math.isfinite(x) for x in flat):
        raise BadRequest(f'Input "{key}" must hold finite numbers')
    array = np.array(flat, dtype=_NUMPY[spec.dtype]).reshape(len(value), length)
    return tf.constant(array, spec.dtype)


def _columns_from_rows(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, list]:
  if not isinstance(instances, list) or not instances:
    raise BadRequest('"instances" must be a non-empty list of examples')
  columns = {key: [] for key in specs}
  for i, instance in enumerate(instances):
    if not isinstance(instance, dict):
      raise BadRequest(f'instances[{i}] must be an object with the named inputs {sorted(specs)}')
    _check_names(instance, specs, f'instances[{i}]')
    for key in specs:
      columns[key].append(instance[key])
  return columns


def _columns(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, Any]:
  if not isinstance(inputs, dict):
    raise BadRequest(f'"inputs" must be an object with the named inputs {sorted(specs)}')
  _check_names(inputs, specs, '"inputs"')
  return dict(inputs)


def _check_names(given: dict, specs: dict[str, tf.TensorSpec], where: str) -> None:
  missing, extra = sorted(set(specs) - set(given)), sorted(set(given) - set(specs))
  if missing or extra:
    raise BadRequest(f'{where}: missing inputs {missing}, unexpected inputs {extra}; the signature takes '
                     f'{sorted(specs)}')


def _model_error(message: str) -> str:
  """The model's own words from a TF error: the failed assertion's message and values, without graph details."""
  found = re.search(r'assertion failed: (.*)', message)
  if found:
    return ' '.join(re.findall(r'\[([^\[\]]*)\]', found.group(1)))
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1] if lines else 'the model rejected the request'


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


def _signature_defs(export_dir: str) -> dict[str, Any]:
  """The SavedModel's serving SignatureDefs in proto JSON (field names as in TF Serving's metadata)."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
    saved_model.ParseFromString(f.read())
  defs = saved_model.meta_graphs[0].signature_def
  return {name: json_format.MessageToDict(defs[name], preserving_proto_field_name=True)
          for name in defs if not name.startswith('__')}
