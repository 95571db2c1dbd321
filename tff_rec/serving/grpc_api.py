"""TF Serving's gRPC API for the served model, from the `tensorflow-serving-api` package's protos and stubs.

Implements what a predict client calls, so a TF Serving gRPC client works
unchanged (https://github.com/tensorflow/serving/blob/2.14.1/tensorflow_serving/apis/prediction_service.proto):

- `PredictionService.Predict`: `PredictRequest` (model_spec, inputs as
  TensorProtos, output_filter) -> `PredictResponse` (the served version's
  model_spec, outputs as TensorProtos);
- `PredictionService.GetModelMetadata`: the `signature_def` field, a
  `SignatureDefMap` packed in an `Any`, as TF Serving answers;
- `ModelService.GetModelStatus`: the version being served, AVAILABLE.

Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED (the stubs' default). Bad requests get TF Serving's status codes
with a message naming what was wrong: INVALID_ARGUMENT (the checks are
`Servable.run`'s, shared with the REST API), NOT_FOUND for an unknown model
or version.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tff_rec.serving import monitoring
from tff_rec.serving.servables import DEFAULT_SIGNATURE, BadRequest, ModelManager, ServableNotFound

SIGNATURE_DEF = 'signature_def'
_CODES = {monitoring.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
          monitoring.NOT_FOUND: grpc.StatusCode.NOT_FOUND, monitoring.INTERNAL: grpc.StatusCode.INTERNAL}


class _Api:
  """What both services share: finding the servable a model_spec names, and counting each call."""

  def __init__(self, manager: ModelManager, metrics: monitoring.Metrics):
    self.manager, self.metrics = manager, metrics

  def servable(self, model_spec):
    if not model_spec.name:
      raise BadRequest('Missing ModelSpec: model_spec.name is required')
    if model_spec.version_label:
      raise BadRequest(f'Unrecognized servable version label: {model_spec.version_label} (this server serves '
                       'versions by number)')
    version = model_spec.version.value if model_spec.HasField('version') else None
    return self.manager.servable(model_spec.name, version)

  def call(self, method: str, context, work):
    """Runs work(labels) -> response; a failure aborts the call with its status code. Either way it is counted,
    under the signature work() put in `labels` (if any)."""
    began = time.perf_counter()
    labels, code = {'signature': ''}, monitoring.OK
    try:
      return work(labels)
    except BadRequest as e:
      code, message = monitoring.INVALID_ARGUMENT, str(e)
    except ServableNotFound as e:
      code, message = monitoring.NOT_FOUND, str(e)
    except Exception as e:  # pylint: disable=broad-except  # The server's own failure: counted, answered INTERNAL.
      logging.exception('gRPC %s failed', method)
      code, message = monitoring.INTERNAL, f'{type(e).__name__}: {e}'
    finally:
      self.metrics.record('grpc', method, labels['signature'], code, time.perf_counter() - began)
    context.abort(_CODES[code], message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata."""

  def __init__(self, api: _Api):
    self._api = api

  def Predict(self, request, context):  # pylint: disable=invalid-name  # gRPC's method names.
    def work(labels):
      servable = self._api.servable(request.model_spec)
      name = request.model_spec.signature_name or DEFAULT_SIGNATURE
      labels['signature'] = monitoring.signature_label(name, servable.signatures)
      specs = servable.inputs[servable.check_signature(name)]
      arrays = {key: _array(key, proto, specs.get(key)) for key, proto in request.inputs.items()}
      outputs = servable.run(name, arrays)
      wanted = list(request.output_filter) or list(outputs)
      unknown = sorted(set(wanted) - set(outputs))
      if unknown:
        raise BadRequest(f'output_filter names outputs {unknown} that signature "{name}" does not have; it has '
                         f'{sorted(outputs)}')
      response = predict_pb2.PredictResponse()
      response.model_spec.name = self._api.manager.model_name
      response.model_spec.version.value = servable.version
      response.model_spec.signature_name = name
      for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
      return response
    return self._api.call('predict', context, work)

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    def work(labels):
      del labels  # No signature.
      servable = self._api.servable(request.model_spec)
      fields = list(request.metadata_field)
      if not fields:
        raise BadRequest('GetModelMetadataRequest must specify at least one metadata_field')
      if fields != [SIGNATURE_DEF]:
        raise BadRequest(f'Metadata fields {sorted(set(fields) - {SIGNATURE_DEF})} are not supported; the only '
                         f'one is "{SIGNATURE_DEF}"')
      signature_defs = get_model_metadata_pb2.SignatureDefMap()
      for name, signature_def in servable.signature_defs.items():
        signature_defs.signature_def[name].CopyFrom(signature_def)
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = self._api.manager.model_name
      response.model_spec.version.value = servable.version
      response.metadata[SIGNATURE_DEF].Pack(signature_defs)
      return response
    return self._api.call('metadata', context, work)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus."""

  def __init__(self, api: _Api):
    self._api = api

  def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
    def work(labels):
      del labels  # No signature.
      servable = self._api.servable(request.model_spec)
      response = get_model_status_pb2.GetModelStatusResponse()
      status = response.model_version_status.add()
      status.version = servable.version
      status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
      return response
    return self._api.call('status', context, work)


def _array(key: str, proto, spec: tf.TensorSpec | None) -> np.ndarray:
  """A TensorProto -> its array; its dtype must be the signature's, as TF Serving requires."""
  if spec is not None and proto.dtype != spec.dtype.as_datatype_enum:
    try:
      given = tf.dtypes.as_dtype(proto.dtype).name
    except TypeError:
      given = f'dtype enum {proto.dtype}'
    raise BadRequest(f'Input "{key}" must be {spec.dtype.name}, got {given}')
  try:
    return tf.make_ndarray(proto)
  except (TypeError, ValueError) as e:
    raise BadRequest(f'Input "{key}" is not a valid TensorProto: {e}') from e


def create_server(manager: ModelManager, metrics: monitoring.Metrics, *, host: str = '127.0.0.1',
                  port: int = 8500, threads: int = 4) -> tuple[grpc.Server, int]:
  """A started-on-`start()` gRPC server with both services, and the port it bound (port 0: one picked)."""
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix='grpc'))
  api = _Api(manager, metrics)
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(api), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(api), server)
  try:
    return server, server.add_insecure_port(f'{host}:{port}')
  except RuntimeError as e:  # grpcio 1.74 raises when the address is taken.
    raise OSError(f'gRPC: cannot listen on {host}:{port} ({e}); is another server on it? (--grpc_port)') from e
