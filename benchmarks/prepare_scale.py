r"""Data preparation at MovieLens-25M scale: ratings per second and peak memory of the whole prepare.

  .venv/bin/python -m benchmarks.prepare_scale [--ratings=25000000] [--work_dir=data/bench_prepare] [--processes=0,2]

Writes an archive in GroupLens' ml-25m.zip layout (`ml-25m/ratings.csv` with a header, `ml-25m/movies.csv`) with
--ratings generated lines (162,541 users and 59,047 movies at 25M, scaled with --ratings; at least 20 ratings a
user, half stars, distinct movies per user), nothing downloaded; then prepares it with
`pipeline.prepare_movielens(dataset='movielens_25m', verify=False)` in a child process, both views (cross-device
and cross-silo), and prints the ratings per second of the whole prepare (reading, splitting, encoding, writing,
indexing) and the peak memory of the child and its worker processes together (PSS, so pages the forked workers
share are counted once). With several --processes values the
prepares run one after another in the same invocation, so their ratio is measured side by side. The prepared
databases are deleted unless --keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import psutil
from absl import app, flags

from benchmarks.ml25m_archive import write_ml25m_archive

_RATINGS = flags.DEFINE_integer('ratings', 25_000_000, 'Lines of ratings.csv to generate.', lower_bound=100_000)
_WORK_DIR = flags.DEFINE_string('work_dir', 'data/bench_prepare', 'Where the archive and the prepared data go.')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the last prepared databases.')
_PROCESSES = flags.DEFINE_list('processes', ['0', str(os.cpu_count() or 1)], 'Prepare once with each of these '
                               '--processes values (0: one process), one after another, each compared with the first.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: prepare this archive in this process.')
_CHILD_PROCESSES = flags.DEFINE_integer('child_processes', 0, 'Internal: the child\'s --processes.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated ratings.')


def _child(archive: str, out_dir: str, processes: int) -> None:
  from tff_rec.data import movielens, pipeline  # pylint: disable=g-import-not-at-top
  start = time.monotonic()
  result = pipeline.prepare_movielens(archive, out_dir, pipeline.PrepareOptions(seed=0), num_platforms=5,
                                      progress=False, dataset=movielens.ML25M, verify=False, workers=processes)
  print(json.dumps({'seconds': time.monotonic() - start, 'ratings': result['ratings'], 'users': result['users']}))


def _tree_memory_mb(process: psutil.Process) -> float:
  """The proportional set size (PSS) of `process` and all its descendants, summed: a page the forked workers
  share with their parent is counted once in all, unlike a sum of RSS."""
  total = 0
  for p in [process, *process.children(recursive=True)]:
    try:
      total += p.memory_full_info().pss
    except psutil.NoSuchProcess:
      pass
  return total / 2**20


def _prepare(archive: str, processes: int) -> dict:
  """Prepares `archive` in a child process; its result, wall time and the peak memory of its process tree
  (`_tree_memory_mb`, sampled every 0.2 s)."""
  out_dir = os.path.join(_WORK_DIR.value, 'prepared')
  shutil.rmtree(out_dir, ignore_errors=True)
  start = time.monotonic()
  child = subprocess.Popen([sys.executable, '-m', 'benchmarks.prepare_scale', f'--child={archive}',
                            f'--child_processes={processes}', f'--work_dir={_WORK_DIR.value}'],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  peak_mb, watched = 0.0, psutil.Process(child.pid)
  while child.poll() is None:
    try:
      peak_mb = max(peak_mb, _tree_memory_mb(watched))
    except psutil.NoSuchProcess:
      pass
    time.sleep(0.2)
  stdout, stderr = child.communicate()
  if child.returncode:
    sys.exit(f'prepare failed:\n{stderr[-3000:]}')
  result = json.loads(stdout.strip().splitlines()[-1])
  size_gb = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(out_dir) for f in files) / 1e9
  return result | {'wall': time.monotonic() - start, 'peak_mb': peak_mb, 'size_gb': size_gb,
                   'rate': result['ratings'] / result['seconds']}


def main(argv):
  del argv
  if _CHILD.value:
    _child(_CHILD.value, os.path.join(_WORK_DIR.value, 'prepared'), _CHILD_PROCESSES.value)
    return
  archive = os.path.join(_WORK_DIR.value, f'ml-25m-like-{_RATINGS.value}.zip')
  if not os.path.exists(archive):
    start = time.monotonic()
    sizes = write_ml25m_archive(archive + '.tmp', _RATINGS.value, _SEED.value)
    os.replace(archive + '.tmp', archive)
    print(f'generated {archive}: {sizes} in {time.monotonic() - start:.0f} s')
  first = None
  for processes in [int(p) for p in _PROCESSES.value]:
    r = _prepare(archive, processes)
    first = first or r
    print(f'--processes={processes}: prepare of {r["ratings"]:,} ratings ({r["users"]:,} users), both views: '
          f'{r["seconds"]:.0f} s in prepare_movielens ({r["wall"]:.0f} s with interpreter start), '
          f'{r["rate"]:,.0f} ratings/s ({r["rate"] / first["rate"]:.2f}x the first); peak memory of all its '
          f'processes {r["peak_mb"]:,.0f} MB (PSS); {r["size_gb"]:.1f} GB written', flush=True)
    print(f'  targets: >= 100,000 ratings/s: {"met" if r["rate"] >= 1e5 else "missed"}; '
          f'peak memory <= 2 GB: {"met" if r["peak_mb"] <= 2048 else "missed"}', flush=True)
  if not _KEEP.value:
    shutil.rmtree(os.path.join(_WORK_DIR.value, 'prepared'), ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
