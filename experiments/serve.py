r"""Serves an exported model on TF Serving's REST API.

  python -m experiments.serve --export_dir=models/demo --port=8501 [--model_name=recommender]

  curl localhost:8501/v1/models/recommender
  curl -d '{"instances": [{"history_item_ids": ["50", "172", "133"], "history_ratings": [5, 4, 3]}]}' \
      localhost:8501/v1/models/recommender:predict

The app is `tff_rec.serving.rest` (Werkzeug), served by waitress (a
production WSGI server, multi-threaded). TF Serving serves the same
directory: see docs/serving.md.
"""

from __future__ import annotations

import logging
import signal
import sys

from absl import app, flags

from experiments import logs
from tff_rec.serving import rest

_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'The SavedModel directory (experiments.export).')
_PORT = flags.DEFINE_integer('port', 8501, 'Port (TF Serving\'s REST port is 8501).')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Interface to listen on (0.0.0.0: all).')
_NAME = flags.DEFINE_string('model_name', 'recommender', 'The model NAME in /v1/models/NAME.')
_MAX_BATCH = flags.DEFINE_integer('max_batch_size', 256, 'Largest batch a request may carry (larger: 400).')
_THREADS = flags.DEFINE_integer('threads', 4, 'Request threads.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.configure_logging()
  # waitress warns each time a request waits for a free thread: routine under load, not worth a line each.
  logging.getLogger('waitress.queue').setLevel(logging.ERROR)
  import waitress  # pylint: disable=g-import-not-at-top
  try:
    if not _EXPORT_DIR.value:
      raise ValueError('--export_dir is required')
    if not 0 <= _PORT.value < 65536 or _THREADS.value < 1:
      raise ValueError(f'--port must be in 0..65535 and --threads >= 1, got {_PORT.value}, {_THREADS.value}')
    service = rest.PredictionService(_EXPORT_DIR.value, _NAME.value, max_batch_size=_MAX_BATCH.value)
  except (ValueError, FileNotFoundError) as e:
    print(f'serve: error: {e}', file=sys.stderr)
    return 2
  server = waitress.create_server(service, host=_HOST.value, port=_PORT.value, threads=_THREADS.value)
  print(f'Serving {_EXPORT_DIR.value} as http://{_HOST.value}:{server.effective_port}/v1/models/{_NAME.value} '
        '(Ctrl-C stops)', flush=True)
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
  return 0


if __name__ == '__main__':
  app.run(main)
