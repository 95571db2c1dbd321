"""The managed TFF runtime: computations run, and no worker outlives Python."""

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tests.conftest import ROOT
from tff_rec import runtime

_TINY_COMPUTATION = """
import numpy as np, tensorflow_federated as tff
from tff_rec import runtime
@tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
def total(x):
  return tff.federated_sum(x)
assert total([1, 2, 3]) == 6
print('worker', [p.pid for p in runtime._workers][0], flush=True)
"""


def _workers_alive(pid: int) -> bool:
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def _read_until_eof(pipe, timeout_s: float) -> tuple[bytes, bool]:
  """Reads `pipe` until EOF (every writer closed it) or the timeout."""
  chunks, deadline = [], time.monotonic() + timeout_s
  while (remaining := deadline - time.monotonic()) > 0:
    if select.select([pipe], [], [], remaining)[0]:
      chunk = os.read(pipe.fileno(), 65536)
      if not chunk:
        return b''.join(chunks), True
      chunks.append(chunk)
  return b''.join(chunks), False


def _spawn(code: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})


def test_federated_sum_runs_in_managed_context():
  @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
  def mean(x):
    return tff.federated_mean(x)

  assert mean([1.0, 2.0, 6.0]) == 3.0  # (1 + 2 + 6) / 3


def test_stdout_pipe_closes_soon_after_exit():
  process = _spawn(_TINY_COMPUTATION)
  out = b''
  deadline = time.monotonic() + 120  # TF import and the first computation.
  while process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
  assert process.returncode == 0
  out, at_eof = _read_until_eof(process.stdout, timeout_s=5.0)
  assert at_eof, 'stdout pipe still open 5 s after exit: a worker holds it'
  worker_pid = int(out.split()[-1])
  assert not _workers_alive(worker_pid)


def test_worker_dies_when_python_is_killed():
  process = _spawn(_TINY_COMPUTATION + '\nimport time; time.sleep(600)\n')
  line = process.stdout.readline()
  worker_pid = int(line.split()[-1])
  assert _workers_alive(worker_pid)
  process.send_signal(signal.SIGKILL)  # No atexit: only PDEATHSIG can stop the worker.
  process.wait()
  deadline = time.monotonic() + 5
  while _workers_alive(worker_pid) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not _workers_alive(worker_pid)
  process.stdout.close()


def test_stop_all_workers_stops_a_running_worker():
  context = runtime.create_local_context()

  @tff.tensorflow.computation(tf.int32)
  def add_one(x):
    return x + 1

  with tff.framework.get_context_stack().install(context):
    assert add_one(1) == 2
  assert runtime.stop_all_workers() >= 1
  assert runtime.stop_all_workers() == 0
