r"""Serves an exported model on TF Serving's REST and gRPC APIs, with Prometheus metrics and model versions.

  python -m experiments.serve --export_dir=models/demo [--port=8501] [--grpc_port=8500] [--model_name=recommender]

  curl localhost:8501/v1/models/recommender
  curl -d '{"instances": [{"history_item_ids": ["50", "172", "133"], "history_ratings": [5, 4, 3]}]}' \
      localhost:8501/v1/models/recommender:predict
  curl localhost:8501/monitoring/prometheus/metrics

--export_dir is one SavedModel (served as version 1) or, as TF Serving's
--model_base_path, a directory of numbered versions (`models/demo/1`,
`models/demo/2`, ...): the newest is served, and a new one exported there is
loaded and swapped in without a restart (checked every
--file_system_poll_wait_seconds). The REST app is `tff_rec.serving.rest`
(Werkzeug, served by waitress), the gRPC services `tff_rec.serving.grpc_api`
(TF Serving's protos). TF Serving serves the same directory: see
docs/serving.md.
"""

from __future__ import annotations

import logging
import signal
import sys

from absl import app, flags

from experiments import logs
from tff_rec.serving import grpc_api, monitoring, rest, servables

_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'A SavedModel directory (experiments.export), or a base path '
                                   'of numbered versions (DIR/1, DIR/2, ...; the newest is served).')
_PORT = flags.DEFINE_integer('port', 8501, 'REST port (TF Serving\'s is 8501; 0: any free port).')
_GRPC_PORT = flags.DEFINE_integer('grpc_port', 8500, 'gRPC port (TF Serving\'s is 8500; 0: any free port; -1: no gRPC).')
_POLL = flags.DEFINE_float('file_system_poll_wait_seconds', 1.0,
                           'How often to look for a new version under a base path (as TF Serving\'s flag).')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Interface to listen on (0.0.0.0: all).')
_NAME = flags.DEFINE_string('model_name', 'recommender', 'The model NAME in /v1/models/NAME.')
_MAX_BATCH = flags.DEFINE_integer('max_batch_size', 256, 'Largest batch a request may carry (larger: 400).')
_THREADS = flags.DEFINE_integer('threads', 4, 'Request threads.')


def main(argv):
  logs.start(argv)
  # waitress warns each time a request waits for a free thread: routine under load, not worth a line each.
  logging.getLogger('waitress.queue').setLevel(logging.ERROR)
  import waitress  # pylint: disable=g-import-not-at-top
  try:
    if not _EXPORT_DIR.value:
      raise ValueError('--export_dir is required')
    if not 0 <= _PORT.value < 65536 or not -1 <= _GRPC_PORT.value < 65536 or _THREADS.value < 1:
      raise ValueError(f'--port must be in 0..65535, --grpc_port in -1..65535 and --threads >= 1, got '
                       f'{_PORT.value}, {_GRPC_PORT.value}, {_THREADS.value}')
    metrics = monitoring.Metrics(_NAME.value)
    manager = servables.ModelManager(_NAME.value, _EXPORT_DIR.value, poll_seconds=_POLL.value,
                                     on_load=metrics.loaded, max_batch_size=_MAX_BATCH.value)
    grpc_server, grpc_port = (grpc_api.create_server(manager, metrics, host=_HOST.value, port=_GRPC_PORT.value,
                                                     threads=_THREADS.value)
                              if _GRPC_PORT.value >= 0 else (None, None))
    try:
      server = waitress.create_server(rest.PredictionService(manager, metrics), host=_HOST.value,
                                      port=_PORT.value, threads=_THREADS.value)
    except OSError as e:
      raise OSError(f'REST: cannot listen on {_HOST.value}:{_PORT.value} ({e.strerror or e}); is another server on '
                    'it? (--port)') from e
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f'serve: error: {e}', file=sys.stderr)
    return 2
  if grpc_server is not None:
    grpc_server.start()
  manager.start()
  grpc_text = f' and gRPC {_HOST.value}:{grpc_port}' if grpc_server is not None else ''
  print(f'Serving {_EXPORT_DIR.value} version {manager.current.version} as '
        f'http://{_HOST.value}:{server.effective_port}/v1/models/{_NAME.value} (REST){grpc_text}; Ctrl-C stops',
        flush=True)
  # SIGINT and SIGTERM stop the server cleanly, also when it was started in the background of a non-interactive
  # shell, which starts children with SIGINT ignored.
  for stop in (signal.SIGINT, signal.SIGTERM):
    signal.signal(stop, signal.default_int_handler)
  try:
    server.run()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()
    manager.stop()
    if grpc_server is not None:
      grpc_server.stop(grace=5).wait()
  return 0


if __name__ == '__main__':
  app.run(main)
