"""The MovieLens-25M-format generator of benchmarks/prepare_scale.py: an archive the release reader takes."""

import numpy as np

from benchmarks import ml25m_archive
from tff_rec.data import movielens


def test_generated_archive_reads_as_movielens_25m_with_the_requested_size(tmp_path):
  path = str(tmp_path / 'ml-25m.zip')
  sizes = ml25m_archive.write_ml25m_archive(path, 100_000, seed=3)
  assert sizes['ratings'] == 100_000
  data = movielens.read_release(path, movielens.ML25M, verify=False)  # Duplicate pairs would be an error here.
  assert len(data.user_ids) == 100_000 and len(data.users) == sizes['users']
  per_user = np.bincount(data.user_ids)[1:]
  assert per_user.min() >= 20 and per_user.max() <= sizes['movies'] - 100
  assert set(np.unique(data.ratings).tolist()) <= {x / 2 for x in range(1, 11)}
  assert len(data.items) == sizes['movies'] and data.items[1].year == 1951
