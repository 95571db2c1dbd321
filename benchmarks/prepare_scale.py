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
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile

from absl import app, flags
import numpy as np

_RATINGS = flags.DEFINE_integer('ratings', 25_000_000, 'Lines of ratings.csv to generate.', lower_bound=100_000)
_WORK_DIR = flags.DEFINE_string('work_dir', 'data/bench_prepare', 'Where the archive and the prepared data go.')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the prepared databases.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: prepare this archive in this process.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated ratings.')

ML25M_USERS, ML25M_MOVIES, ML25M_RATINGS = 162_541, 59_047, 25_000_095


def write_ml25m_archive(path: str, ratings: int, seed: int = 0) -> dict[str, int]:
  """Writes a zip in ml-25m.zip's layout with `ratings` generated ratings; returns its sizes.

  Users and movies scale with `ratings` from MovieLens-25M's counts; each user rates between 20 and all but 100
  of the catalogue's movies, distinct (an arithmetic progression modulo the catalogue with a stride coprime to it), with
  log-normal activity as MovieLens has.
  """
  rng = np.random.default_rng(seed)
  scale = ratings / ML25M_RATINGS
  movies = max(300, round(ML25M_MOVIES * scale))
  cap = movies - 100  # Leaves the 99 negatives the ranking protocol samples.
  users = max(round(ML25M_USERS * scale), math.ceil(ratings / cap) + 1)
  activity = rng.lognormal(0.0, 1.0, users)
  counts = np.clip(np.floor(20 + activity / activity.sum() * (ratings - 20 * users)), 20, cap).astype(np.int64)
  while diff := ratings - int(counts.sum()):  # Exactly `ratings`: the clip's and the rounding's remainder.
    room = np.flatnonzero((cap - counts if diff > 0 else counts - 20) > 0)[:abs(diff)]
    counts[room] += 1 if diff > 0 else -1
  starts = rng.integers(0, movies, users)
  strides = rng.integers(1, movies, users)
  while (bad := np.gcd(strides, movies) != 1).any():
    strides[bad] = rng.integers(1, movies, int(bad.sum()))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED, allowZip64=True) as z:
    with z.open('ml-25m/ratings.csv', 'w', force_zip64=True) as f:
      f.write(b'userId,movieId,rating,timestamp\n')
      lo = 0
      while lo < users:  # About a million ratings a chunk.
        hi = lo + max(1, int(np.searchsorted(np.cumsum(counts[lo:]), 1_000_000)))
        user = np.repeat(np.arange(lo, hi), counts[lo:hi])
        position = np.arange(len(user)) - np.repeat(np.cumsum(counts[lo:hi]) - counts[lo:hi], counts[lo:hi])
        movie = (starts[user] + position * strides[user]) % movies + 1
        stars = rng.integers(1, 11, len(user)) / 2
        when = 789_652_009 + rng.integers(0, 10**9, len(user))
        lines = '\n'.join(f'{u},{m},{s:.1f},{t}' for u, m, s, t in
                          zip((user + 1).tolist(), movie.tolist(), stars.tolist(), when.tolist()))
        f.write(lines.encode() + b'\n')
        lo = hi
    genres = ('Action', 'Comedy', 'Drama', 'Romance', 'Thriller', 'Children', 'Sci-Fi', '(no genres listed)')
    z.writestr('ml-25m/movies.csv', 'movieId,title,genres\n' + ''.join(
        f'{m},"Movie {m}, The ({1950 + m % 70})",{genres[m % 8]}|{genres[(m // 8) % 8]}\n'
        for m in range(1, movies + 1)))
  return {'ratings': int(counts.sum()), 'users': users, 'movies': movies}


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
