"""Federated (private) implicit ALS: `--algorithm=fed_als` on the shard process.

Each round every sampled user solves its embedding exactly against the
current item table (`models.als.solve_users`, on the device: the user's
embedding and ratings never leave it) and uploads only its ALS statistics
(x x^T and (1 + alpha) x at its rated items; `shard_math.als_updates`). The
server averages them, without or with DP (the same tensorflow-privacy queries
as DP Federated Reconstruction: each user's statistics clipped to an L2 norm
as one record, Gaussian noise on the sum, `aggregation.DPFactory`), and solves
every item's ridge regression (`models.als.solve_items`, the finalizer
`process.build_als_finalizer`). With DP this is private ALS (Chien et al.,
ICML 2021) with user-level clipping; with every user in every round
(`--client_sampling_rate=1`) a run is `rounds` Gaussian mechanisms, which
`dp.PrivacyLedger` accounts as it does any Poisson sampler.

With `AlsConfig.item_prior` the item step centres each item on what its public
genres and release year (and, with `--item_text_features`, its title's word
vectors) predict (Agarwal & Chen, KDD 2009), fitted on the
server from the released statistics (`item_prior` below). The model is the MF
model with a zero item bias, scored x . y_i, so evaluation, the
membership-inference audit and export share the MF code; only the user's
reconstruction (the exact solve) and the loss differ.
"""

from __future__ import annotations

import numpy as np

from tff_rec.models import als, two_tower


def item_prior(task, config: als.AlsConfig) -> np.ndarray | None:
  """The item prior's design matrix from the task's public catalogue (genres[, title vector], year bucket), if
  `config` has one."""
  if not config.item_prior:
    return None
  catalogue = task.catalogue_features()
  return als.prior_features(catalogue.dense, catalogue.year_buckets, two_tower.NUM_YEAR_BUCKETS)
