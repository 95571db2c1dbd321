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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tqdm

from tff_rec import atomic
from tff_rec.data import interactions, movielens, schema, silos, splits, stats
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
                      text: WordVectors | None = None) -> dict[str, Any]:
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
  options = _with_platforms(options, Counter(u.occupation for u in ml.users.values()), num_platforms)
  metadata = {'dataset': dataset, 'source': ml.source, **checksum}
  return prepare(ml.per_user(), np.asarray(sorted(ml.users)), ml.items, out_dir, options, metadata,
                 progress=progress, text=text)


def prepare_interactions(spec: interactions.InteractionsSpec, out_dir: str, options: PrepareOptions, *,
                         num_platforms: int, progress: bool = True, text: WordVectors | None = None
                         ) -> dict[str, Any]:
  """Reads an interaction log (`interactions.read`) and prepares it: the same splits, views and schema; implicit
  feedback gets no rating splits."""
  log = interactions.read(spec, options.seed)
  _LOG.info('%s: %s', spec.path, log.report)
  options = _with_platforms(options, Counter(u.occupation for u in log.data.users.values()), num_platforms)
  metadata = {'dataset': 'interactions', 'source': os.path.abspath(spec.path), 'feedback': log.feedback,
              'temporal': log.temporal, 'interactions': dataclasses.asdict(spec) | {'report': log.report}}
  result = prepare(log.data.per_user(), np.asarray(sorted(log.data.users)), log.data.items, out_dir, options,
                   metadata, progress=progress, genres=log.categories,
                   rating_splits=log.feedback == interactions.EXPLICIT, text=text)
  return result | {'interactions': log.report, 'feedback': log.feedback, 'temporal': log.temporal}


def prepare_synthetic(config: SyntheticConfig, out_dir: str, options: PrepareOptions, *, num_platforms: int,
                      progress: bool = True) -> dict[str, Any]:
  """Generates and prepares a synthetic dataset, streaming one user at a time."""
  source = SyntheticSource(config)
  options = _with_platforms(options, source.expected_occupation_counts(), num_platforms)
  metadata = {'dataset': 'synthetic', 'source': 'synthetic', 'synthetic': dataclasses.asdict(config)}
  return prepare(source.users(), source.user_ids, source.items, out_dir, options, metadata, progress=progress)


def _user_examples(ur: UserRatings, encoder: ExampleEncoder, catalogue: np.ndarray, seed: int, heldout: bool,
                   families: Sequence[str]):
  """Yields (split name, serialized examples) for one user: each rating encoded once, and again with negatives
  where it is a ranking validation or test example."""
  plain = encoder.encode_many(ur.user, ur.item_ids.tolist(), ur.ratings.tolist(), ur.timestamps.tolist())
  neg_val, neg_test = splits.ranking_negatives(ur, catalogue, schema.NUM_NEGATIVES, seed)
  for family in families:
    split = splits.leave_one_out(ur) if family == schema.RANKING else splits.random_split(ur, seed)
    for part, idx in ((schema.TRAIN, split.train), (schema.VAL, split.val), (schema.TEST, split.test)):
      if not len(idx):
        continue
      if family == schema.RANKING and part != schema.TRAIN:
        extra = encoder.negatives_entry(neg_val if part == schema.VAL else neg_test)
        blobs = encoder.encode_many(ur.user, ur.item_ids[idx].tolist(), ur.ratings[idx].tolist(),
                                    ur.timestamps[idx].tolist(), extra)
      else:
        blobs = [plain[i] for i in idx.tolist()]
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
    genres: Sequence[str] = schema.GENRES,
    rating_splits: bool = True,
    text: WordVectors | None = None,
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

  Returns:
    The statistics (also written to `stats.json`), with `seconds` added.
  """
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
    bar = tqdm.tqdm(users, total=len(user_ids), unit='user', disable=not progress, mininterval=2.0)
    user_rows, example_rows = [], []
    for ur in bar:
      uid, key = ur.user.user_id, ur.user.key
      platform = options.occupation_platform[ur.user.occupation] if platforms else None
      for split, blobs in _user_examples(ur, encoder, catalogue, options.seed, uid in heldout, families):
        example_rows.extend((split, key, blob) for blob in blobs)
      user_rows.append((key, ur.user.age, ur.user.gender, ur.user.occupation, platform, int(uid in heldout)))
      if len(example_rows) >= 50_000:
        clients.add_example_rows(example_rows)
        example_rows = []
      if len(user_rows) >= 10_000:
        clients.add_rows('users', user_rows)
        user_rows = []
    clients.add_example_rows(example_rows)
    clients.add_rows('users', user_rows)
    clients.commit()
    if platforms:  # The same examples under each user's platform, copied inside SQLite.
      platforms.add_examples_of_groups(clients.temp_path)
      platforms.commit()
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
