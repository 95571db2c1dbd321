"""--workers: rounds across two TFF worker services on loopback, equal to one process; a dead worker is a clear error."""

import json
import signal
import subprocess
import threading
import time

import portpicker
import psutil
import pytest

from tests.experiments.test_train_federated import _run as small_run
from tff_rec import runtime

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


def _run(tiny_dataset, out, name, **overrides):
  """train_federated's small run (tests/experiments): 3 rounds of 6 users in shards of 2 (3 TFF clients a round)."""
  return small_run(tiny_dataset, out, name, **{'rounds': 3, 'clients_per_round': 6, 'users_per_shard': 2, **overrides})


def _cpu(process):
  times = psutil.Process(process.pid).cpu_times()
  return times.user + times.system


def _close(a, b):
  assert set(a) == set(b)
  for key in a:
    if key != 'wall_seconds' and a[key] is not None:
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_two_workers_give_the_single_process_result_and_a_dead_worker_is_named(tiny_dataset, tmp_path):
  ports = [portpicker.pick_unused_port() for _ in range(2)]
  workers = [runtime.start_worker(p) for p in ports]
  spec = ','.join(f'localhost:{p}' for p in ports)
  try:
    local = _run(tiny_dataset, tmp_path, 'local')
    before = [_cpu(w) for w in workers]
    spread = _run(tiny_dataset, tmp_path, 'spread', workers=spec)
    assert all(_cpu(w) > b + 0.05 for w, b in zip(workers, before))  # Both workers computed.
    _close(spread, local)

    # A worker dies mid-run (right after round 1's checkpoint): the run fails naming it; the checkpoint stays.
    def kill_after_round_1():
      while not (tmp_path / 'killed' / 'checkpoints' / 'program_state_1').exists():
        time.sleep(0.01)
      workers[1].send_signal(signal.SIGKILL)
    killer = threading.Thread(target=kill_after_round_1)
    killer.start()
    with pytest.raises(runtime.WorkerError, match=f'TFF worker localhost:{ports[1]} failed .*UNAVAILABLE'):
      _run(tiny_dataset, tmp_path, 'killed', workers=spec)
    killer.join()
    workers[1].wait()
    assert (tmp_path / 'killed' / 'checkpoints' / 'program_state_1').exists()
    # The worker comes back: the same command resumes and ends where the uninterrupted run did.
    workers[1] = runtime.start_worker(ports[1])
    resumed = _run(tiny_dataset, tmp_path, 'killed', workers=spec)
    _close(resumed, local)
    rows = (tmp_path / 'killed' / 'metrics.csv').read_text().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['1', '2', '3']
  finally:
    for w in workers:
      if w.poll() is None:
        w.send_signal(signal.SIGTERM)  # (SIGINT: ignored by a worker started from a background shell.)
        try:
          w.wait(timeout=60)  # Generous: a loaded 2-core CI machine is slow to stop it.
        except subprocess.TimeoutExpired:
          w.kill()  # Never leave a worker_binary behind.
          w.wait()


def test_unreachable_worker_is_a_clear_error():
  port = portpicker.pick_unused_port()
  with pytest.raises(runtime.WorkerError, match=f'localhost:{port} is not reachable.*tff_worker --port={port}'):
    runtime.create_workers_context((f'localhost:{port}',), connect_timeout_s=0.5)


@pytest.mark.parametrize('spec, message', [
    ('localhost', 'is not host:port'), ('localhost:http', 'is not host:port'), (':80', 'is not host:port'),
    ('h:0', 'is not host:port'), ('h:1,h:1', 'lists a worker twice'),
])
def test_bad_worker_lists_are_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    runtime.parse_workers(spec)


def test_worker_lists_are_parsed_with_spaces():
  assert json.dumps(runtime.parse_workers(' a:1 , b:2 ')) == '["a:1", "b:2"]'
