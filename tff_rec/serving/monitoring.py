"""The servers' Prometheus metrics, served at TF Serving's `/monitoring/prometheus/metrics` on the REST port.

TF Serving's names (`:tensorflow:serving:request_count`, ...) cannot be kept:
prometheus-client gives every counter a `_total` suffix, as the OpenMetrics
format asks. The metrics, with the model's name in every series:

- `tff_rec_requests_total{api, method, signature, code}`: requests by API
  (`rest`, `grpc`), method (`predict`, `metadata`, `status`), signature and
  outcome (gRPC status names: `OK`, `INVALID_ARGUMENT`, `NOT_FOUND`, ...);
  errors are the series whose code is not `OK`.
- `tff_rec_request_latency_seconds{api, method, signature}`: a histogram of
  the time from a parsed request to its answer.
- `tff_rec_model_version`: the version being served;
  `tff_rec_model_loads_total{outcome}`: version loads, `ok` or `error`.

Each server has its own registry (several can live in one process: tests).
"""

from __future__ import annotations

import prometheus_client

PATH = '/monitoring/prometheus/metrics'
OK, INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, INTERNAL = 'OK', 'INVALID_ARGUMENT', 'NOT_FOUND', 'UNIMPLEMENTED', 'INTERNAL'
UNKNOWN_SIGNATURE = '<unknown>'  # A label for names not in the model: clients must not grow the series without end.
# 100 us .. 10 s: one-user predict calls take about a millisecond; batches and cold versions longer.
_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def signature_label(name, signatures) -> str:
  """The label of a request's signature name: the name if the model has it, else UNKNOWN_SIGNATURE."""
  return name if isinstance(name, str) and name in signatures else UNKNOWN_SIGNATURE


class Metrics:
  """Request counts, latencies and model loads of one served model."""

  def __init__(self, model_name: str):
    self.model_name = model_name
    self.registry = prometheus_client.CollectorRegistry()
    self._requests = prometheus_client.Counter(
        'tff_rec_requests', 'Requests by API, method, signature and status code.',
        ['model_name', 'api', 'method', 'signature', 'code'], registry=self.registry)
    self._latency = prometheus_client.Histogram(
        'tff_rec_request_latency_seconds', 'Request latency, from parsed request to answer.',
        ['model_name', 'api', 'method', 'signature'], buckets=_BUCKETS, registry=self.registry)
    self._version = prometheus_client.Gauge('tff_rec_model_version', 'The model version being served.',
                                            ['model_name'], registry=self.registry)
    self._loads = prometheus_client.Counter('tff_rec_model_loads', 'Model version loads by outcome.',
                                            ['model_name', 'outcome'], registry=self.registry)

  def record(self, api: str, method: str, signature: str, code: str, seconds: float) -> None:
    self._requests.labels(self.model_name, api, method, signature, code).inc()
    self._latency.labels(self.model_name, api, method, signature).observe(seconds)

  def loaded(self, version: int, outcome: str) -> None:
    """`ModelManager`'s on_load: counts the load, and sets the served version when it succeeded."""
    self._loads.labels(self.model_name, outcome).inc()
    if outcome == 'ok':
      self._version.labels(self.model_name).set(version)

  def exposition(self) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
