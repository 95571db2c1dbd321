"""Turns a stream of users into tff-rec's federated databases.

One pass over users writes both views at once:
  * `clients.sqlite`: cross-device, one client per user (client id = user id);
  * `platforms.sqlite`: cross-silo, one client per platform (see `silos`),
    holding exactly the same examples with the same split names.
Consecutive users are cut into shards of about `_SHARD_RATINGS` ratings; worker processes (`workers`) split and
encode each shard into a small SQLite file, which this process appends to both views in the users' order, so the
result does not depend on the number of workers. Both views are committed to temporaries and published together
only when complete.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tqdm

from tff_rec import atomic
from tff_rec.data import examples, interactions, movielens, schema, silos, splits, sql_writer, stats
from tff_rec.data.examples import ExampleEncoder
from tff_rec.data.records import DataError, Item, UserRatings
from tff_rec.data.sql_writer import SqlClientDataWriter, publish
from tff_rec.data.synthetic import SyntheticConfig, SyntheticSource
from tff_rec.data.text import WordVectors

_LOG = logging.getLogger(__name__)
SPLIT_VERSION = 1  # Bump when the split protocol changes.


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  seed: int = 0
  heldout_fraction: float = 0.1
  # occupation -> platform id; None writes no cross-silo view.
  occupation_platform: Optional[Mapping[str, str]] = None


def _with_platforms(options: PrepareOptions, occupation_counts: Mapping[str, float],
                    num_platforms: int) -> PrepareOptions:
  if not num_platforms:
    return dataclasses.replace(options, occupation_platform=None)
  try:
    return dataclasses.replace(options, occupation_platform=silos.assign_platforms(occupation_counts, num_platforms))
  except ValueError as e:
    raise DataError(f'--num_platforms: {e}') from None


def prepare_movielens(archive: str, out_dir: str, options: PrepareOptions, *, num_platforms: int,
                      progress: bool = True, dataset: str = 'movielens_100k', verify: bool = True,
                      text: WordVectors | None = None, workers: int = 0) -> dict[str, Any]:
  """Verifies and prepares MovieLens-100K (`movielens.fetch`) or a larger GroupLens release
  (`dataset` a key of `movielens.RELEASES`, `movielens.fetch_release`) from `archive`: the same splits, views
  and schema. `verify=False` skips the checksum and size checks (tests' small archives of the same layout).
  `text`: word vectors for the titles (`prepare`)."""
  if dataset in movielens.RELEASES:
    ml = movielens.read_release(archive, dataset, verify=verify)
    checksum = {'archive_md5': movielens.RELEASES[dataset].md5} if verify else {}
  else:
    ml = movielens.read_archive(archive, verify=verify)
    checksum = {'ratings_sha256': movielens.RATINGS_SHA256} if verify else {}
  _LOG.info('%s from %s (%s): %s', dataset, archive, ml.source, 'verified' if verify else 'not verified')
  options = _with_platforms(options, collections.Counter(u.occupation for u in ml.users.values()), num_platforms)
  metadata = {'dataset': dataset, 'source': ml.source, **checksum}
  return prepare(ml.per_user(), np.asarray(sorted(ml.users)), ml.items, out_dir, options, metadata,
                 progress=progress, text=text, workers=workers)


def prepare_interactions(spec: interactions.InteractionsSpec, out_dir: str, options: PrepareOptions, *,
                         num_platforms: int, progress: bool = True, text: WordVectors | None = None,
                         workers: int = 0) -> dict[str, Any]:
  """Reads an interaction log (`interactions.read`) and prepares it: the same splits, views and schema; implicit
  feedback gets no rating splits."""
  log = interactions.read(spec, options.seed)
  _LOG.info('%s: %s', spec.path, log.report)
  options = _with_platforms(options, collections.Counter(u.occupation for u in log.data.users.values()), num_platforms)
  metadata = {'dataset': 'interactions', 'source': os.path.abspath(spec.path), 'feedback': log.feedback,
              'temporal': log.temporal, 'interactions': dataclasses.asdict(spec) | {'report': log.report}}
  result = prepare(log.data.per_user(), np.asarray(sorted(log.data.users)), log.data.items, out_dir, options,
                   metadata, progress=progress, genres=log.categories,
                   rating_splits=log.feedback == interactions.EXPLICIT, text=text, workers=workers)
  return result | {'interactions': log.report, 'feedback': log.feedback, 'temporal': log.temporal}


def prepare_synthetic(config: SyntheticConfig, out_dir: str, options: PrepareOptions, *, num_platforms: int,
                      progress: bool = True, workers: int = 0) -> dict[str, Any]:
  """Generates and prepares a synthetic dataset, streaming one user at a time."""
  source = SyntheticSource(config)
  options = _with_platforms(options, source.expected_occupation_counts(), num_platforms)
  metadata = {'dataset': 'synthetic', 'source': 'synthetic', 'synthetic': dataclasses.asdict(config)}
  return prepare(source.users(), source.user_ids, source.items, out_dir, options, metadata, progress=progress,
                 workers=workers)


def _user_examples(ur: UserRatings, encoder: ExampleEncoder, catalogue: np.ndarray, seed: int, heldout: bool,
                   families: Sequence[str]):
  """Yields (split name, serialized examples) for one user: each rating encoded once, and again with negatives
  where it is a ranking validation or test example."""
  features = encoder.features(ur.user, ur.item_ids.tolist(), ur.ratings.tolist(), ur.timestamps.tolist())
  plain = [examples.example(f) for f in features]
  neg_val, neg_test = splits.ranking_negatives(ur, catalogue, schema.NUM_NEGATIVES, seed)
  for family in families:
    split = splits.leave_one_out(ur) if family == schema.RANKING else splits.random_split(ur, seed)
    for part, idx in ((schema.TRAIN, split.train), (schema.VAL, split.val), (schema.TEST, split.test)):
      if not len(idx):
        continue
      if family == schema.RANKING and part != schema.TRAIN:
        extra = encoder.negatives_entry(neg_val if part == schema.VAL else neg_test)
        blobs = [examples.example(features[i], extra) for i in idx.tolist()]
      else:
        blobs = [plain[i] for i in idx.tolist()]
      yield schema.split_name(family, part, heldout=heldout), blobs


_SHARD_RATINGS = 50_000  # Ratings a shard holds (about 30 MB of examples while it is encoded).


def default_workers() -> int:
  """One worker process per CPU, at most 4: this process appends their shards one after another, so more gain
  little (and each holds a shard's examples while it encodes them)."""
  return min(4, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class _ShardJob:
  """What encoding a shard of users needs; a worker process gets it once."""

  encoder: ExampleEncoder
  catalogue: np.ndarray
  seed: int
  heldout: frozenset[int]
  families: tuple[str, ...]
  occupation_platform: Optional[dict[str, str]]  # None: no cross-silo view.


_JOB: Optional[_ShardJob] = None  # The worker process's job (`_init_worker`).


def _init_worker(job: _ShardJob) -> None:
  global _JOB
  _JOB = job


def _write_shard(users: list[UserRatings], path: str) -> tuple[str, int]:
  """Encodes `users` (splits, negatives, examples) and writes them to the shard file `path`."""
  job = _JOB
  example_rows, user_rows = [], []
  for ur in users:
    uid, key = ur.user.user_id, ur.user.key
    platform = job.occupation_platform[ur.user.occupation] if job.occupation_platform is not None else None
    for split, blobs in _user_examples(ur, job.encoder, job.catalogue, job.seed, uid in job.heldout, job.families):
      example_rows.extend((split, key, blob) for blob in blobs)
    user_rows.append((key, ur.user.age, ur.user.gender, ur.user.occupation, platform, int(uid in job.heldout)))
  sql_writer.write_shard(path, example_rows, user_rows)
  return path, len(users)


def _chunks(users: Iterable[UserRatings], ratings: int) -> Iterator[list[UserRatings]]:
  """Consecutive users, about `ratings` ratings a chunk (a user is never split)."""
  chunk, size = [], 0
  for ur in users:
    chunk.append(ur)
    size += len(ur)
    if size >= ratings:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


@contextlib.contextmanager
def _shard_writers(job: _ShardJob, workers: int, out_dir: str):
  """Yields (submit, shard directory): `submit(users, path)` returns a future of `_write_shard`'s result, run by
  `workers` forked processes (0: in this process). The directory and anything left in it are removed on exit."""
  shard_dir = os.path.join(out_dir, f'.shards.tmp-{os.getpid()}')
  sql_writer.remove_stale_temporaries(os.path.join(out_dir, 'shards'))
  shutil.rmtree(shard_dir, ignore_errors=True)
  os.makedirs(shard_dir)
  try:
    if workers == 0:
      _init_worker(job)

      def submit(users, path):
        done = concurrent.futures.Future()
        done.set_result(_write_shard(users, path))
        return done

      yield submit, shard_dir
    else:
      # Forked: the workers inherit the job without pickling it, and start without importing anything (a spawned
      # worker would import the binary's main module again). They run only numpy and sqlite3, never TensorFlow.
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('fork'),
                                                  initializer=_init_worker, initargs=(job,)) as pool:
        try:
          yield (lambda users, path: pool.submit(_write_shard, users, path)), shard_dir
        except BaseException:
          pool.shutdown(wait=True, cancel_futures=True)
          raise
  finally:
    shutil.rmtree(shard_dir, ignore_errors=True)


def prepare(
    users: Iterable[UserRatings],
    user_ids: np.ndarray,
    items: Mapping[int, Item],
    out_dir: str,
    options: PrepareOptions,
    metadata: Mapping[str, Any],
    *,
    progress: bool = True,
    genres: Sequence[str] = schema.GENRES,
    rating_splits: bool = True,
    text: WordVectors | None = None,
    workers: int = 0,
) -> dict[str, Any]:
  """Writes `out_dir/clients.sqlite` (+ `platforms.sqlite`) and `stats.json`.

  Args:
    users: Every user's ratings, each user once.
    user_ids: All user ids (to draw held-out users before streaming).
    items: The item catalogue; negatives are drawn from it.
    out_dir: Output directory.
    options: Seed, held-out fraction, platform rule.
    metadata: Extra JSON-able facts to record (dataset, source, checksum ...).
    progress: Show a progress bar.
    genres: The genre vocabulary `Item.genres` index (MovieLens': `schema.GENRES`).
    rating_splits: Write the rating family (random 80/10/10, for RMSE); False for implicit feedback, whose
      "ratings" are all 1.
    text: Word vectors to embed every item's title with (`tff_rec.data.text`), stored in `item_text`.
    workers: Processes that encode and write shards of users in parallel (0: this process). Shards are
      merged in the users' order, so the databases do not depend on it.

  Returns:
    The statistics (also written to `stats.json`), with `seconds` added.
  """
  if workers < 0:
    raise ValueError(f'workers must be >= 0 (0: this process), got {workers}')
  start = time.monotonic()
  heldout = splits.select_heldout_users(user_ids, options.heldout_fraction, options.seed)
  encoder = ExampleEncoder(dict(items), genres)
  families = (schema.RANKING, schema.RATING) if rating_splits else (schema.RANKING,)
  catalogue = np.asarray(sorted(items), np.int64)
  os.makedirs(out_dir, exist_ok=True)
  clients = SqlClientDataWriter(os.path.join(out_dir, schema.CLIENTS_DB))
  platforms = (SqlClientDataWriter(os.path.join(out_dir, schema.PLATFORMS_DB))
               if options.occupation_platform is not None else None)
  writers = [w for w in (clients, platforms) if w is not None]
  ordered = [it for _, it in sorted(items.items())]
  text_rows, text_metadata = [], {}
  if text is not None:
    vectors, known = text.embed([it.title for it in ordered])
    text_rows = [(it.key, v.astype('<f4').tobytes()) for it, v in zip(ordered, vectors)]
    text_metadata = {'item_text': {'encoder': text.name, 'dim': text.dim, 'titles_with_known_words': known}}
  try:
    for writer in writers:
      writer.add_rows('items', ((it.key, it.title, it.year, '|'.join(genres[g] for g in it.genres))
                                for it in ordered))
      writer.add_rows('item_text', text_rows)
      writer.set_metadata(
          **metadata, seed=options.seed, heldout_fraction=options.heldout_fraction,
          num_negatives=schema.NUM_NEGATIVES, split_version=SPLIT_VERSION, genres=list(genres),
          splits=[s for s in schema.ALL_SPLITS if rating_splits or schema.RATING not in s],
          view='cross_silo' if writer is platforms else 'cross_device',
          occupation_platform=dict(options.occupation_platform or {}), **text_metadata)
    job = _ShardJob(encoder, catalogue, options.seed, frozenset(heldout), families,
                    dict(options.occupation_platform) if platforms else None)
    with _shard_writers(job, workers, out_dir) as (write, shard_dir):
      bar = tqdm.tqdm(total=len(user_ids), unit='user', disable=not progress, mininterval=2.0)
      pending = collections.deque()

      def merge_oldest() -> None:
        path, num_users = pending.popleft().result()
        clients.add_shard(path)
        if platforms:  # The same examples under each user's platform.
          platforms.add_shard(path, by_platform=True)
        os.remove(path)
        bar.update(num_users)

      for k, chunk in enumerate(_chunks(users, _SHARD_RATINGS)):
        pending.append(write(chunk, os.path.join(shard_dir, f'{k}.sqlite')))
        while len(pending) > 2 * max(workers, 1):  # Bounds the shards in flight (memory and disk).
          merge_oldest()
      while pending:
        merge_oldest()
      bar.close()
    # The two indexes are built at once: SQLite runs each statement without Python's lock.
    with concurrent.futures.ThreadPoolExecutor(len(writers)) as threads:
      for done in [threads.submit(w.commit) for w in writers]:
        done.result()
    result = stats.compute(clients.temp_path)
    with atomic.replacing(os.path.join(out_dir, schema.STATS_JSON)) as stats_path:
      with open(stats_path, 'w') as f:
        f.write(stats.to_json(result))
      publish(writers)  # The databases first, then stats.json, each by rename.
  except BaseException:
    for writer in writers:
      writer.abort()
    raise
  result['seconds'] = time.monotonic() - start
  if text_metadata:
    result.update(text_metadata)
  return result
