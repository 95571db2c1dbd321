r"""Runs one TFF worker service (TFF's own `worker_binary`) in the foreground, for `--workers`.

  python -m experiments.tff_worker --port=8000        # on each worker machine (Ctrl-C stops it)
  python -m experiments.train_federated --flagfile=... --workers=host1:8000,host2:8000

The binary ships inside the TFF wheel (`tensorflow_federated/data/worker_binary`);
this only finds it and replaces itself with it (the process is the worker).
The service listens on all interfaces, unauthenticated: run it on a trusted network.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

_PORT = flags.DEFINE_integer('port', 8000, 'gRPC port to serve on.')
_MAX_CALLS = flags.DEFINE_integer('max_concurrent_computation_calls', -1, 'Concurrency limit (<= 0: none).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from tff_rec import runtime  # pylint: disable=g-import-not-at-top
  binary = runtime.worker_binary_path()
  if not 0 < _PORT.value < 65536:
    print(f'tff_worker: error: --port must be in 1..65535, got {_PORT.value}', file=sys.stderr)
    return 2
  print(f'TFF worker serving on port {_PORT.value} ({binary})', flush=True)
  os.execv(binary, [binary, f'--port={_PORT.value}',
                    f'--max_concurrent_computation_calls={_MAX_CALLS.value}'])


if __name__ == '__main__':
  app.run(main)
