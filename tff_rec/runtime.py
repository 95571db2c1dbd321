"""TFF execution contexts whose C++ worker processes never outlive Python.

TFF 0.87's local runtime (`tff.backends.native.set_sync_local_cpp_execution_context`)
starts a `worker_binary` child with the parent's stdout and stderr and stops it
only in a `__del__` that does not reliably run at interpreter exit. The orphaned
worker then keeps the parent's stdout open, so anything reading that pipe (CI,
`| tee`) waits forever.

This module builds the same context from TFF's own public pieces
(`tff.framework.ResourceManagingExecutorFactory`, `RemoteExecutor`,
`RemoteExecutorGrpcStub`); the only hand-written part is the worker process
management, which TFF gets wrong for our use:

* the worker's stdout/stderr go to a log file or /dev/null, never our pipes;
* it is started with `PR_SET_PDEATHSIG` (by util-linux's `setpriv`, else
  in the forked child), so the kernel kills it even when Python dies by
  SIGKILL;
* `atexit` stops every worker this process started, and any other
  `worker_binary` child.

Importing this module replaces TFF's import-time default context with the
managed one (TFF's own prints a traceback from `__del__` at interpreter exit).
The worker starts lazily, on first use.

`install_workers_context` runs computations across worker services started
elsewhere (`python -m experiments.tff_worker`, one per machine) with TFF's
mergeable-computation context.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Optional

import grpc
import portpicker
import psutil
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.test import compiler as test_compiler  # TFF 0.87 (pinned)

_LOG = logging.getLogger(__name__)

# Mirrors TFF's executor_factory.py (2 GB gRPC messages for large models).
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]
_WORKER_NAME = 'worker_binary'
_PR_SET_PDEATHSIG = 1
_STARTUP_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 5.0

_workers: list[subprocess.Popen] = []
_workers_lock = threading.Lock()


def worker_binary_path() -> str:
  """Returns the path of the `worker_binary` shipped inside the TFF wheel."""
  return os.path.join(os.path.dirname(tff.__file__), 'data', _WORKER_NAME)


# libc is loaded here, in the parent, once: loading a library in the child between fork and exec (where
# `_die_with_parent` runs) can crash when another thread of this process (TensorFlow's, gRPC's) held the loader's
# or malloc's lock at the fork; a fresh-clone test run lost a worker to a segfault that way.
_PRCTL = ctypes.CDLL('libc.so.6', use_errno=True).prctl


def _die_with_parent() -> None:  # Runs in the child between fork and exec: nothing that loads or allocates much.
  _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
  # SIGINT is the worker's clean shutdown (`_stop_process`): restore it where this process inherited it ignored
  # (started in the background of a non-interactive shell).
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_worker(
    port: int,
    *,
    max_concurrent_computation_calls: int = -1,
    log_path: Optional[str] = None,
) -> subprocess.Popen:
  """Starts a TFF `worker_binary` serving on `port`, tracked for clean exit.

  Args:
    port: The local TCP port the worker serves gRPC on.
    max_concurrent_computation_calls: Passed to the worker; <= 0 is unlimited.
    log_path: File that receives the worker's output; None discards it.

  Returns:
    The worker process. It is stopped at interpreter exit, and by the kernel
    if this process dies without running exit handlers.

  Raises:
    FileNotFoundError: If the TFF wheel has no worker binary.
  """
  binary = worker_binary_path()
  if not os.path.isfile(binary):
    raise FileNotFoundError(f'TFF worker binary not found at {binary}')
  out = open(log_path, 'ab') if log_path else subprocess.DEVNULL
  command = [binary, f'--port={port}', f'--max_concurrent_computation_calls={max_concurrent_computation_calls}']
  setpriv = shutil.which('setpriv')
  # `setpriv` sets the death signal and execs the worker, so no Python runs between fork and exec: a
  # `preexec_fn` runs in a child forked from a process whose other threads (TensorFlow's, gRPC's) may hold locks,
  # and fresh-clone test runs lost workers to segfaults there. Without setpriv, the `preexec_fn` does it.
  try:
    process = subprocess.Popen(
        [setpriv, '--pdeathsig', 'TERM', '--', *command] if setpriv else command,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        preexec_fn=None if setpriv else _die_with_parent,
        close_fds=True,
    )
  finally:
    if log_path:
      out.close()
  with _workers_lock:
    _workers.append(process)
  _LOG.debug('Started TFF worker pid=%d on port %d', process.pid, port)
  return process


def _stop_process(process: subprocess.Popen | psutil.Process) -> None:
  """SIGTERM, then SIGKILL if it lingers (SIGTERM: a worker started from a background shell inherits SIGINT
  ignored, and `setpriv` cannot restore it)."""
  try:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=_STOP_TIMEOUT_S)
  except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
    process.kill()
    process.wait(timeout=_STOP_TIMEOUT_S)
  except (ProcessLookupError, psutil.NoSuchProcess):
    pass


def stop_all_workers() -> int:
  """Stops every `worker_binary` child of this process.

  Covers the workers started here and any started by TFF's own default
  context. Registered with `atexit`; safe to call more than once.

  Returns:
    The number of worker processes that were still running and got stopped.
  """
  with _workers_lock:
    tracked = list(_workers)
    _workers.clear()
  stopped = 0
  for process in tracked:
    if process.poll() is None:
      _stop_process(process)
      stopped += 1
  try:
    children = psutil.Process().children(recursive=True)
  except psutil.Error:
    children = []
  for child in children:
    try:
      if _WORKER_NAME in ' '.join(child.cmdline()):
        _stop_process(child)
        stopped += 1
    except psutil.Error:
      pass
  return stopped


atexit.register(stop_all_workers)


class _LocalWorker:
  """One local worker plus its gRPC stub; restarts the worker if it died.

  Started on first use, from the context's event-loop thread; PDEATHSIG is
  tied to that thread, which lives exactly as long as the context does.
  """

  def __init__(self, max_concurrent_computation_calls: int, log_path: Optional[str]):
    self._max_calls = max_concurrent_computation_calls
    self._log_path = log_path
    self._lock = threading.Lock()
    self._process: Optional[subprocess.Popen] = None
    self._stub: Optional[tff.framework.RemoteExecutorGrpcStub] = None

  def get_stub(self) -> tff.framework.RemoteExecutorGrpcStub:
    with self._lock:
      if self._stub is not None and self._process.poll() is None and self._stub.is_ready:
        return self._stub
      if self._process is not None:
        _stop_process(self._process)
      port = portpicker.pick_unused_port()
      self._process = start_worker(
          port,
          max_concurrent_computation_calls=self._max_calls,
          log_path=self._log_path,
      )
      channel = grpc.insecure_channel(f'localhost:{port}', _GRPC_OPTIONS)
      self._stub = tff.framework.RemoteExecutorGrpcStub(channel)
      deadline = time.monotonic() + _STARTUP_TIMEOUT_S
      while not self._stub.is_ready:
        if self._process.poll() is not None:
          raise RuntimeError(
              f'TFF worker exited with code {self._process.returncode} at '
              f'start-up (port {port}); see {self._log_path or "its log"}'
          )
        if time.monotonic() > deadline:
          raise RuntimeError(f'TFF worker on port {port} not ready after {_STARTUP_TIMEOUT_S}s')
        time.sleep(0.05)
      return self._stub


def _stack_fn(get_stub, default_num_clients: int):
  """An executor stack on one worker: TFF's RemoteExecutor over the stub `get_stub()` returns."""

  def stack_fn(cardinalities):
    cardinalities.setdefault(tff.CLIENTS, default_num_clients)
    if cardinalities[tff.CLIENTS] is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    executor = tff.framework.RemoteExecutor(get_stub())
    executor.set_cardinalities(cardinalities)
    return executor

  return stack_fn


def create_local_context(
    *,
    default_num_clients: int = 0,
    max_concurrent_computation_calls: int = -1,
    log_path: Optional[str] = None,
) -> tff.framework.SyncExecutionContext:
  """Returns TFF's synchronous C++ execution context with a managed worker.

  Equivalent to `tff.backends.native.create_sync_local_cpp_execution_context`
  except for how the worker process is started and stopped (module docstring).

  Args:
    default_num_clients: Client cardinality when it cannot be inferred.
    max_concurrent_computation_calls: Concurrency limit inside the worker;
      <= 0 means unlimited.
    log_path: File for the worker's output; None discards it.
  """
  worker = _LocalWorker(max_concurrent_computation_calls, log_path)
  factory = tff.framework.ResourceManagingExecutorFactory(
      executor_stack_fn=_stack_fn(worker.get_stub, default_num_clients))
  return tff.framework.SyncExecutionContext(
      executor_fn=factory,
      compiler_fn=_compile,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )


class WorkerError(RuntimeError):
  """A TFF worker service (`--workers`) is unreachable or failed during a computation."""


def _worker_failed(address: str, error: Exception) -> WorkerError:
  call = getattr(error, '_grpc_call', error)  # TFF's RetryableGRPCError wraps the call.
  code = call.code().name if isinstance(call, grpc.Call) else type(error).__name__
  details = call.details() if isinstance(call, grpc.Call) else str(error)
  return WorkerError(f'TFF worker {address} failed ({code}: {details}). Restart it (python -m experiments.tff_worker '
                     f'--port={address.rsplit(":", 1)[-1]}) and run the same command again: training resumes from '
                     'the last checkpoint.')


class _WorkerStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's gRPC stub to one worker service, whose errors name the worker and are final.

  TFF marks a lost connection (UNAVAILABLE) retryable; for a worker that died,
  a clear error is better than a round that never ends.
  """

  def __init__(self, address: str):
    super().__init__(grpc.insecure_channel(address, _GRPC_OPTIONS))
    self.address = address


def _naming_errors(name: str):
  def call(self, request):
    try:
      return getattr(tff.framework.RemoteExecutorGrpcStub, name)(self, request)
    except grpc.RpcError as e:  # Including TFF's RetryableGRPCError.
      raise _worker_failed(self.address, e) from None
  call.__name__ = name
  return call


for _name in ('get_executor', 'create_value', 'create_struct', 'create_call', 'create_selection', 'compute',
              'dispose', 'dispose_executor'):
  setattr(_WorkerStub, _name, _naming_errors(_name))


def parse_workers(spec: str) -> tuple[str, ...]:
  """'host:port,host:port' -> ('host:port', ...); raises ValueError naming a malformed entry."""
  addresses = tuple(a.strip() for a in spec.split(',') if a.strip())
  for address in addresses:
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f'--workers entry {address!r} is not host:port')
  if len(set(addresses)) != len(addresses):
    raise ValueError(f'--workers lists a worker twice: {spec!r}')
  return addresses


def create_workers_context(addresses: tuple[str, ...], *, connect_timeout_s: float = 30.0,
                           default_num_clients: int = 0):
  """TFF's mergeable-computation context over worker services: each round's clients split across the workers.

  `tff.backends.native.create_mergeable_comp_execution_context` compiles a
  computation to its mergeable form (the work before the aggregation runs on
  each worker with a share of the clients; the partial aggregates are merged)
  and runs the parts on one async context per worker.

  Raises:
    WorkerError: A worker is not reachable within `connect_timeout_s`.
  """
  stubs = [_WorkerStub(address) for address in addresses]
  deadline = time.monotonic() + connect_timeout_s
  for stub in stubs:
    while not stub.is_ready:
      if time.monotonic() > deadline:
        raise WorkerError(f'TFF worker {stub.address} is not reachable after {connect_timeout_s:.0f} s; start it on '
                          f'that machine with: python -m experiments.tff_worker --port='
                          f'{stub.address.rsplit(":", 1)[-1]}')
      time.sleep(0.05)
  contexts = [
      tff.framework.AsyncExecutionContext(
          executor_fn=tff.framework.ResourceManagingExecutorFactory(
              executor_stack_fn=_stack_fn(lambda stub=stub: stub, default_num_clients)),
          compiler_fn=_compile,
          transform_args=tff.tensorflow.transform_args,
          transform_result=tff.tensorflow.transform_result,
      ) for stub in stubs
  ]
  return tff.backends.native.create_mergeable_comp_execution_context(contexts)


def install_workers_context(addresses: tuple[str, ...], **kwargs):
  """Creates a context over worker services (see `create_workers_context`) and makes it TFF's default."""
  context = create_workers_context(addresses, **kwargs)
  tff.framework.set_default_context(context)
  return context


def _compile(comp):
  """TFF's native compilation, after simulating secure intrinsics as TFF's own test contexts do.

  The C++ runtime does not implement `federated_secure_sum_bitwidth` & co.;
  they become their insecure TensorFlow equivalents (same bounds, same
  quantisation), as in `tff.backends.test.create_sync_test_cpp_execution_context`.
  """
  comp = test_compiler.replace_secure_intrinsics_with_bodies(comp)
  return tff.backends.native.desugar_and_transform_to_native(comp)


def install_local_context(**kwargs) -> tff.framework.SyncExecutionContext:
  """Creates a managed local context (see `create_local_context`) and makes it TFF's default."""
  context = create_local_context(**kwargs)
  tff.framework.set_default_context(context)
  return context


install_local_context()
