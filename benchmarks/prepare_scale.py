r"""Data preparation at MovieLens-25M scale: ratings per second and peak memory of the whole prepare.

  .venv/bin/python -m benchmarks.prepare_scale [--ratings=25000000] [--work_dir=data/bench_prepare]

Writes an archive in GroupLens' ml-25m.zip layout (`ml-25m/ratings.csv` with a header, `ml-25m/movies.csv`) with
--ratings generated lines (162,541 users and 59,047 movies at 25M, scaled with --ratings; at least 20 ratings a
user, half stars, distinct movies per user), nothing downloaded; then prepares it with
`pipeline.prepare_movielens(dataset='movielens_25m', verify=False)` in a child process, both views (cross-device
and cross-silo), and prints the ratings per second of the whole prepare (reading, splitting, encoding, writing,
indexing) and the child's peak RSS. The prepared databases are deleted unless --keep.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.ml25m_archive import write_ml25m_archive

_RATINGS = flags.DEFINE_integer('ratings', 25_000_000, 'Lines of ratings.csv to generate.', lower_bound=100_000)
_WORK_DIR = flags.DEFINE_string('work_dir', 'data/bench_prepare', 'Where the archive and the prepared data go.')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the prepared databases.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: prepare this archive in this process.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated ratings.')

def _child(archive: str, out_dir: str) -> None:
  from tff_rec.data import movielens, pipeline  # pylint: disable=g-import-not-at-top
  start = time.monotonic()
  result = pipeline.prepare_movielens(archive, out_dir, pipeline.PrepareOptions(seed=0), num_platforms=5,
                                      progress=False, dataset=movielens.ML25M, verify=False)
  print(json.dumps({'seconds': time.monotonic() - start, 'ratings': result['ratings'], 'users': result['users'],
                    'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv):
  del argv
  if _CHILD.value:
    _child(_CHILD.value, os.path.join(_WORK_DIR.value, 'prepared'))
    return
  archive = os.path.join(_WORK_DIR.value, f'ml-25m-like-{_RATINGS.value}.zip')
  if not os.path.exists(archive):
    start = time.monotonic()
    sizes = write_ml25m_archive(archive + '.tmp', _RATINGS.value, _SEED.value)
    os.replace(archive + '.tmp', archive)
    print(f'generated {archive}: {sizes} in {time.monotonic() - start:.0f} s')
  start = time.monotonic()
  child = subprocess.run([sys.executable, '-m', 'benchmarks.prepare_scale', f'--child={archive}',
                          f'--work_dir={_WORK_DIR.value}'], capture_output=True, text=True, check=False,
                         env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  wall = time.monotonic() - start
  if child.returncode:
    sys.exit(f'prepare failed:\n{child.stderr[-3000:]}')
  result = json.loads(child.stdout.strip().splitlines()[-1])
  peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  size_gb = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                os.walk(os.path.join(_WORK_DIR.value, 'prepared')) for f in files) / 1e9
  print(f'prepare of {result["ratings"]:,} ratings ({result["users"]:,} users), both views: '
        f'{result["seconds"]:.0f} s in prepare_movielens ({wall:.0f} s with interpreter start), '
        f'{result["ratings"] / result["seconds"]:,.0f} ratings/s; peak RSS {peak_mb:,.0f} MB; {size_gb:.1f} GB written')
  print(f'targets: >= 100,000 ratings/s: {"met" if result["ratings"] / result["seconds"] >= 1e5 else "missed"}; '
        f'peak RSS <= 2 GB: {"met" if peak_mb <= 2048 else "missed"}')
  if not _KEEP.value:
    shutil.rmtree(os.path.join(_WORK_DIR.value, 'prepared'), ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
