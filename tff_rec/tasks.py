"""A task pairs federated data with a model: what every experiment trains and evaluates.

Building a task checks that the preprocessed client data matches the model's
input spec, so a mismatch fails before any training.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import tensorflow as tf

from tff_rec.data import client_data, schema
from tff_rec.evaluation import client_eval
from tff_rec.models import mf
from tff_rec import preprocessing

VIEWS = {'cross_device': schema.CLIENTS_DB, 'cross_silo': schema.PLATFORMS_DB}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  data_dir: str = 'data/movielens_100k'
  view: str = 'cross_device'
  batch_size: int = 64
  num_negatives: int = 4  # Implicit objective: sampled negatives per positive.

  def validate(self) -> None:
    if self.view not in VIEWS:
      raise ValueError(f'view must be one of {sorted(VIEWS)}, got {self.view!r}')
    if self.batch_size < 1 or self.num_negatives < 0:
      raise ValueError(f'batch_size must be >= 1 and num_negatives >= 0, got {self.batch_size}, {self.num_negatives}')


class RecommendationTask:
  """Client data of one view and one MF model configuration."""

  def __init__(self, data: DataConfig, *, objective: str = mf.IMPLICIT, embedding_dim: int = 32, l2: float = 0.0,
               init_stddev: float = 0.1, seed: int = 0):
    data.validate()
    self.data_config = data
    self.db_path = os.path.join(data.data_dir, VIEWS[data.view])
    if not os.path.exists(self.db_path):
      raise FileNotFoundError(f'{self.db_path} does not exist; prepare it with '
                              '`python -m experiments.prepare_data --dataset=movielens_100k`')
    self.vocabulary = preprocessing.item_vocabulary(self.db_path)
    self.model_config = mf.MFConfig(num_items=len(self.vocabulary), embedding_dim=embedding_dim, l2=l2,
                                    init_stddev=init_stddev, objective=objective, seed=seed)
    self.model_config.validate()
    self.objective = self.model_config.objective
    self.lookup = preprocessing.item_lookup(self.vocabulary)
    family = schema.RANKING if self.objective == mf.IMPLICIT else schema.RATING
    self.train_split = schema.split_name(family, schema.TRAIN)
    self.train_data = client_data.load(self.db_path, self.train_split)
    self.eval_kind = client_eval.RANKING if self.objective == mf.IMPLICIT else client_eval.RATING
    self._check_specs()

  def model_fn(self) -> mf.ModelBundle:
    return mf.build_mf(self.model_config)

  def loss_fn(self) -> tf.keras.losses.Loss:
    return mf.RegularizedLoss(self.objective)

  def _check_specs(self) -> None:
    client = self.train_data.client_ids[0]
    spec = self.client_dataset(self.train_data.create_tf_dataset_for_client(client), seed=0).element_spec
    expected = mf.input_spec()
    try:
      tf.nest.assert_same_structure(expected, spec)
      compatible = all(e.is_compatible_with(s) for e, s in zip(tf.nest.flatten(expected), tf.nest.flatten(spec)))
    except (TypeError, ValueError):
      compatible = False
    if not compatible:
      raise TypeError(f'preprocessed data {spec} does not match the model input spec {expected}')

  def client_dataset(self, dataset: tf.data.Dataset, *, seed: int, shuffle: bool = True) -> tf.data.Dataset:
    return preprocessing.training_dataset(
        dataset, self.lookup, objective=self.objective, num_negatives=self.data_config.num_negatives,
        batch_size=self.data_config.batch_size, seed=seed, shuffle=shuffle)

  def train_datasets(self, client_ids: list[str], round_num: int, seed: int) -> list[tf.data.Dataset]:
    """Each sampled client's training batches for `round_num` (seeded per client and round)."""
    return [self.client_dataset(self.train_data.create_tf_dataset_for_client(c),
                                seed=preprocessing.client_seed(seed, round_num, c)) for c in client_ids]

  def eval_data(self, part: str = schema.TEST, *, heldout: bool = False, seed: int = 0
                ) -> tuple[list[str], list[collections.OrderedDict]]:
    """Client ids and `OrderedDict(support, queries)` for federated evaluation.

    Support is the client's training data (for held-out users, their support
    split), preprocessed as in training but unshuffled with a fixed seed;
    queries are its `part` split (LOO-99 for ranking, ratings for rating).
    """
    family = schema.RANKING if self.eval_kind == client_eval.RANKING else schema.RATING
    support = client_data.load(self.db_path, schema.split_name(family, schema.TRAIN, heldout=heldout))
    queries = client_data.load(self.db_path, schema.split_name(family, part, heldout=heldout))
    ids = sorted(set(support.client_ids) & set(queries.client_ids))
    data = []
    for c in ids:
      query_ds = queries.create_tf_dataset_for_client(c)
      if self.eval_kind == client_eval.RANKING:
        query_ds = preprocessing.ranking_query_dataset(query_ds, self.lookup)
      else:
        query_ds = preprocessing.rating_query_dataset(query_ds, self.lookup, self.data_config.batch_size)
      support_ds = self.client_dataset(support.create_tf_dataset_for_client(c),
                                       seed=preprocessing.client_seed(seed, 0, c, preprocessing.EVAL_PURPOSE),
                                       shuffle=False)
      data.append(collections.OrderedDict(support=support_ds, queries=query_ds))
    return ids, data
