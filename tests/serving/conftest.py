"""A tiny exported model that the serving tests share."""

import numpy as np
import pytest

from tff_rec.models import mf
from tff_rec.serving import export

VOCABULARY = [f'item{i}' for i in range(1, 21)]


@pytest.fixture(scope='session')
def tiny_export(tmp_path_factory) -> str:
  """An implicit MF model over VOCABULARY (top 3) exported as version 3 of a base path; returns the version's
  directory (its parent is the base path)."""
  rng = np.random.default_rng(0)
  weights = [rng.normal(size=(21, 4)).astype(np.float32), rng.normal(size=(21, 1)).astype(np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, l2=0.01, batch_size=4, num_negatives=2, learning_rate=0.5, epochs=2,
                                seed=0)
  path = str(tmp_path_factory.mktemp('served') / 'rec' / '3')
  export.save(export.Recommender(config, VOCABULARY, weights, top_k=3), path, {'test': True})
  return path
