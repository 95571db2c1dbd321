"""Turns a stream of users into tff-rec's federated databases.

One pass over users writes both views at once:
  * `clients.sqlite`: cross-device, one client per user (client id = user id);
  * `platforms.sqlite`: cross-silo, one client per platform (see `silos`),
    holding exactly the same examples with the same split names.
Both are committed to temporaries and published together only when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np
import tqdm

from tff_rec import atomic
from tff_rec.data import movielens, schema, silos, splits, stats
from tff_rec.data.examples import ExampleEncoder
from tff_rec.data.records import DataError, Item, UserRatings
from tff_rec.data.sql_writer import SqlClientDataWriter, publish
from tff_rec.data.synthetic import SyntheticConfig, SyntheticSource

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
                      progress: bool = True, dataset: str = 'movielens_100k', verify: bool = True) -> dict[str, Any]:
  """Verifies and prepares MovieLens-100K (`movielens.fetch`) or a larger GroupLens release
  (`dataset` a key of `movielens.RELEASES`, `movielens.fetch_release`) from `archive`: the same splits, views
  and schema. `verify=False` skips the checksum and size checks (tests' small archives of the same layout)."""
  if dataset in movielens.RELEASES:
    ml = movielens.read_release(archive, dataset, verify=verify)
    checksum = {'archive_md5': movielens.RELEASES[dataset].md5} if verify else {}
  else:
    ml = movielens.read_archive(archive, verify=verify)
    checksum = {'ratings_sha256': movielens.RATINGS_SHA256} if verify else {}
  _LOG.info('%s from %s (%s): %s', dataset, archive, ml.source, 'verified' if verify else 'not verified')
  options = _with_platforms(options, Counter(u.occupation for u in ml.users.values()), num_platforms)
  metadata = {'dataset': dataset, 'source': ml.source, **checksum}
  return prepare(ml.per_user(), np.asarray(sorted(ml.users)), ml.items, out_dir, options, metadata,
                 progress=progress)


def prepare_synthetic(config: SyntheticConfig, out_dir: str, options: PrepareOptions, *, num_platforms: int,
                      progress: bool = True) -> dict[str, Any]:
  """Generates and prepares a synthetic dataset, streaming one user at a time."""
  source = SyntheticSource(config)
  options = _with_platforms(options, source.expected_occupation_counts(), num_platforms)
  metadata = {'dataset': 'synthetic', 'source': 'synthetic', 'synthetic': dataclasses.asdict(config)}
  return prepare(source.users(), source.user_ids, source.items, out_dir, options, metadata, progress=progress)


def _user_examples(ur: UserRatings, encoder: ExampleEncoder, catalogue: np.ndarray, seed: int, heldout: bool):
  """Yields (split name, serialized examples) for one user."""
  neg_val, neg_test = splits.ranking_negatives(ur, catalogue, schema.NUM_NEGATIVES, seed)
  families = ((schema.RANKING, splits.leave_one_out(ur)), (schema.RATING, splits.random_split(ur, seed)))
  for family, split in families:
    for part, idx in ((schema.TRAIN, split.train), (schema.VAL, split.val), (schema.TEST, split.test)):
      if not len(idx):
        continue
      negatives = None
      if family == schema.RANKING and part != schema.TRAIN:
        negatives = neg_val if part == schema.VAL else neg_test
      blobs = [encoder.encode(ur.user, int(ur.item_ids[i]), float(ur.ratings[i]), int(ur.timestamps[i]), negatives)
               for i in idx.tolist()]
      yield schema.split_name(family, part, heldout=heldout), blobs


def prepare(
    users: Iterable[UserRatings],
    user_ids: np.ndarray,
    items: Mapping[int, Item],
    out_dir: str,
    options: PrepareOptions,
    metadata: Mapping[str, Any],
    *,
    progress: bool = True,
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

  Returns:
    The statistics (also written to `stats.json`), with `seconds` added.
  """
  start = time.monotonic()
  heldout = splits.select_heldout_users(user_ids, options.heldout_fraction, options.seed)
  encoder = ExampleEncoder(dict(items))
  catalogue = np.asarray(sorted(items), np.int64)
  os.makedirs(out_dir, exist_ok=True)
  clients = SqlClientDataWriter(os.path.join(out_dir, schema.CLIENTS_DB))
  platforms = (SqlClientDataWriter(os.path.join(out_dir, schema.PLATFORMS_DB))
               if options.occupation_platform is not None else None)
  writers = [w for w in (clients, platforms) if w is not None]
  try:
    for writer in writers:
      writer.add_rows('items', ((str(i), it.title, it.year, '|'.join(schema.GENRES[g] for g in it.genres))
                                for i, it in sorted(items.items())))
      writer.set_metadata(
          **metadata, seed=options.seed, heldout_fraction=options.heldout_fraction,
          num_negatives=schema.NUM_NEGATIVES, split_version=SPLIT_VERSION, genres=list(schema.GENRES),
          splits=list(schema.ALL_SPLITS),
          view='cross_silo' if writer is platforms else 'cross_device',
          occupation_platform=dict(options.occupation_platform or {}))
    bar = tqdm.tqdm(users, total=len(user_ids), unit='user', disable=not progress, mininterval=2.0)
    user_rows = []
    for ur in bar:
      uid = ur.user.user_id
      platform = options.occupation_platform[ur.user.occupation] if platforms else None
      for split, blobs in _user_examples(ur, encoder, catalogue, options.seed, uid in heldout):
        clients.add_examples(str(uid), split, blobs)
        if platforms:
          platforms.add_examples(platform, split, blobs)
      user_rows.append((str(uid), ur.user.age, ur.user.gender, ur.user.occupation, platform, int(uid in heldout)))
      if len(user_rows) >= 10_000:
        for writer in writers:
          writer.add_rows('users', user_rows)
        user_rows = []
    for writer in writers:
      writer.add_rows('users', user_rows)
      writer.commit()
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
  return result
