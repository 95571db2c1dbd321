"""A task pairs federated data with a model: what every experiment trains and evaluates.

Building a task checks that the preprocessed client data matches the model's
input spec, so a mismatch fails before any training.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tff_rec import attacks
from tff_rec.data import arrays, client_data, schema
from tff_rec.evaluation import client_eval, groups
from tff_rec.models import mf, reconstruction, sequence, two_tower
from tff_rec import preprocessing

VIEWS = {'cross_device': schema.CLIENTS_DB, 'cross_silo': schema.PLATFORMS_DB}
LOCAL, GLOBAL = 'local', 'global'
USER_TABLES = (None, LOCAL, GLOBAL)
MF, TWO_TOWER, SEQUENCE = 'mf', 'two_tower', 'sequence_two_tower'
MODELS = (MF, TWO_TOWER, SEQUENCE)
SUPPORT_CHUNK = 512  # Users whose support examples are built at once (`RecommendationTask.support_examples`).


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


@dataclasses.dataclass(frozen=True)
class EvalClients:
  """What federated evaluation gives each client: support examples to reconstruct from, and queries."""

  client_ids: list[str]
  support: list[preprocessing.Examples]  # `support_examples` of the history before the queries.
  queries: list[preprocessing.Examples]  # Ranking: ([n, 100], [n, 100]); rating: ([n], [n]).
  seen: list[np.ndarray]  # Item indices the client trained on: excluded from full-catalogue ranking.
  relevant: list[np.ndarray]  # Its held-out item indices: the targets of full-catalogue ranking.
  groups: list[np.ndarray] | None = None  # [queries, G] 0/1: each query's groups (`groups.Grouping.user_rows`).
  group_names: tuple[str, ...] = ()  # The G groups' names (metric key prefixes).
  targets: np.ndarray | None = None  # Item indices whose exposure (ER@10) is measured (`tff_rec.attacks`).


class RecommendationTask:
  """Client data of one view and one model (MF or two-tower) configuration."""

  def __init__(self, data: DataConfig, *, objective: str = mf.IMPLICIT, embedding_dim: int = 32, l2: float = 0.0,
               init_stddev: float = 0.1, seed: int = 0, user_table: str | None = None, model: str = MF,
               item_text_features: bool = False, sequence_settings: dict | None = None):
    """See the class docstring.

    `user_table`: None (a client is one user, `mf.build_mf`), or `local` /
    `global` (a table of users, `mf.build_mf_user_table`: a platform's users,
    or FedAvg's global table). `model`: `mf` or `two_tower`
    (`two_tower.build_two_tower`: implicit feedback, one user per client).
    `item_text_features`: the items' title vectors join their public features (the two-tower's candidate tower,
    the ALS item prior: `catalogue_features`). `sequence_two_tower` (`tff_rec.models.sequence`: implicit
    feedback, one user per client, no per-user parameters) takes `sequence_settings`, keyword arguments of
    `sequence.SequenceConfig` (max_history, num_blocks, dropout); its `--num_negatives` are per position of a
    user's window.
    """
    data.validate()
    if user_table not in USER_TABLES:
      raise ValueError(f'user_table must be one of {USER_TABLES}, got {user_table!r}')
    if model not in MODELS:
      raise ValueError(f'model must be one of {MODELS}, got {model!r}')
    if model in (TWO_TOWER, SEQUENCE) and (objective != mf.IMPLICIT or user_table is not None):
      raise ValueError(f'the {model} model is a retrieval model for implicit feedback with one user per client '
                       '(objective implicit, cross-device)')
    self.model_name = model
    self.item_text_features = item_text_features
    self.data_config = data
    self.user_table = user_table
    self.db_path = os.path.join(data.data_dir, VIEWS[data.view])
    # Evaluation is per user whatever the training view: each user reconstructs itself from its own data.
    self.eval_db_path = os.path.join(data.data_dir, schema.CLIENTS_DB)
    for path in (self.db_path, self.eval_db_path):
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist; prepare it with '
                                '`python -m experiments.prepare_data --dataset=movielens_100k`')
    if data.view == 'cross_silo' and user_table is None:
      raise ValueError('a cross-silo client holds many users: it needs a user table (user_table=local or global)')
    self.vocabulary = preprocessing.item_vocabulary(self.db_path)
    # Only a user table needs user indices (a million-user population's ids are not read otherwise).
    self.user_vocabulary = preprocessing.user_vocabulary(self.db_path) if user_table else None
    self.user_lookup = preprocessing.id_lookup(self.user_vocabulary) if user_table else None
    self.model_config = mf.MFConfig(num_items=len(self.vocabulary), embedding_dim=embedding_dim, l2=l2,
                                    init_stddev=init_stddev, objective=objective, seed=seed)
    self.model_config.validate()
    self.objective = self.model_config.objective
    if model == TWO_TOWER:
      self.two_tower_config = two_tower.TwoTowerConfig(len(self.vocabulary), embedding_dim, init_stddev, seed)
      self.item_features = self.catalogue_features()
    if model == SEQUENCE:
      self.item_features = self.catalogue_features()
      self.sequence_config = sequence.SequenceConfig(len(self.vocabulary), self.item_features.dense.shape[1],
                                                     embedding_dim, init_stddev=init_stddev, seed=seed,
                                                     **(sequence_settings or {}))
      self.sequence_config.validate()
    self.lookup = preprocessing.id_lookup(self.vocabulary)
    self.family = schema.RANKING if self.objective == mf.IMPLICIT else schema.RATING
    self.train_split = schema.split_name(self.family, schema.TRAIN)
    self.train_data = arrays.SplitArrays(self.db_path, self.train_split, self.lookup, user_lookup=self.user_lookup)
    if not self.train_data.client_ids:
      if self.family == schema.RATING and client_data.read_metadata(self.db_path).get('feedback') == 'implicit':
        raise ValueError(f'{data.data_dir} holds implicit feedback (every label 1, no rating splits): train it with '
                         '--objective=implicit')
      raise ValueError(f'{self.db_path} has no clients in split {self.train_split}')
    self.eval_kind = client_eval.RANKING if self.objective == mf.IMPLICIT else client_eval.RATING
    self._user_attributes: groups.UserAttributes | None = None
    self.targets: np.ndarray | None = None  # `join_attack`'s target items.
    self.popular: np.ndarray | None = None  # `join_attack`'s popular items (the attackers' filler).
    self._item_raters: np.ndarray | None = None
    self._check_specs()

  def join_attack(self, config: attacks.AttackConfig, seed: int) -> None:
    """Measures the exposure of `config`'s target items in every evaluation, and with an attack, joins its
    malicious users to the training population (`attacks.PoisonedPopulation`: fake profiles of the targets and
    popular filler items, by the training split's popularity)."""
    config.validate()
    if not config.measured:
      return
    raters = self.item_raters()
    self.targets = attacks.resolve_targets(config, self.vocabulary, raters, seed)
    if config.attack == attacks.NONE:
      return
    if self.user_table is not None:
      raise ValueError(f'--attack={config.attack}: malicious users join as users with their own local parameters; '
                       'a user table (cross-silo platforms, FedAvg\'s global table) has no rows for them')
    count = attacks.num_malicious(config.malicious_fraction, len(self.train_data.client_ids))
    self.popular = attacks.popular(raters, config.popular_items)
    profiles = attacks.fake_profiles(count, self.targets, self.popular, config.filler_items, seed)
    self.train_data = attacks.PoisonedPopulation(self.train_data, profiles)

  def catalogue_features(self) -> two_tower.ItemFeatures:
    """The items' public features in index order (genres, year bucket, and title vectors if the task uses them)."""
    return two_tower.item_features(self.db_path, self.vocabulary, text=self.item_text_features)

  def model_fn(self) -> mf.ModelBundle:
    if self.model_name == SEQUENCE:
      raise ValueError('the sequence two-tower is plain TF maths over `sequence.initial_weights`, not a Keras model')
    if self.model_name == TWO_TOWER:
      return two_tower.build_two_tower(self.two_tower_config, self.item_features)
    if self.user_table is None:
      return mf.build_mf(self.model_config)
    return mf.build_mf_user_table(self.model_config, len(self.user_vocabulary) + 1,
                                  users_are_local=self.user_table == LOCAL)

  def loss_fn(self) -> tf.keras.losses.Loss:
    if self.model_name == TWO_TOWER:
      return two_tower.RetrievalLoss(self.two_tower_config.embedding_dim)
    return mf.RegularizedLoss(self.objective)

  def _check_specs(self) -> None:
    if self.model_name == SEQUENCE:  # Not a Keras model: its maths take the windows `examples` makes.
      return
    first = self.train_examples(self.train_data.client_ids[:1], 0, seed=0)[0]
    spec = self.client_dataset(first).element_spec
    expected = mf.input_spec() if self.user_table is None else mf.user_table_input_spec()
    try:
      tf.nest.assert_same_structure(expected, spec)
      compatible = all(e.is_compatible_with(s) for e, s in zip(tf.nest.flatten(expected), tf.nest.flatten(spec)))
    except (TypeError, ValueError):
      compatible = False
    if not compatible:
      raise TypeError(f'preprocessed data {spec} does not match the model input spec {expected}')

  def examples(self, client: arrays.ClientArrays, *, seed: int, shuffle: bool = True,
               with_users: bool | None = None) -> preprocessing.Examples:
    if self.model_name == SEQUENCE:  # The window of history in time order, then its negatives (never shuffled).
      c = self.sequence_config
      return sequence.training_example(client.items, c.max_history, self.data_config.num_negatives * c.max_history,
                                       c.num_items, seed)
    return preprocessing.training_examples(
        client, objective=self.objective, num_negatives=self.data_config.num_negatives,
        num_items=self.model_config.num_items, seed=seed, shuffle=shuffle,
        with_users=self.user_table is not None if with_users is None else with_users)

  def client_dataset(self, examples: preprocessing.Examples) -> tf.data.Dataset:
    """A client's examples as the model's (item indices, labels) batches."""
    return preprocessing.as_dataset(examples, self.data_config.batch_size)

  def train_examples(self, client_ids: Sequence[str], round_num: int, seed: int) -> list[preprocessing.Examples]:
    """Each sampled client's training examples for `round_num` (seeded per client and round)."""
    return [self.examples(data, seed=preprocessing.client_seed(seed, round_num, c))
            for c, data in zip(client_ids, self.train_data.get(client_ids))]

  def train_datasets(self, client_ids: Sequence[str], round_num: int, seed: int) -> list[tf.data.Dataset]:
    return [self.client_dataset(e) for e in self.train_examples(client_ids, round_num, seed)]

  def eval_clients(self, part: str = schema.TEST, *, heldout: bool = False, seed: int = 0, recent_items: int = 0,
                   recent_repeats: int = 0, group_metrics: Sequence[str] = (), max_users: int = 0) -> EvalClients:
    """The clients of a federated evaluation on split `part`.

    Support is the data a client holds before its `part` examples: its
    training data (for held-out users, their support split), plus its
    validation examples when `part` is test (in the temporal leave-one-out
    split they come right before the test item). It is preprocessed as in
    training but unshuffled with a fixed seed. Queries are the `part` split
    (LOO-99 for ranking, ratings for rating). `recent_items`, `recent_repeats`:
    the support's recency emphasis (`reconstruction.support_examples`).
    `group_metrics`: the attributes (`groups.parse`) whose groups each query is
    marked with, for metrics by group. `max_users` > 0: a uniform sample of
    that many of the split's users, seeded by `seed`, the split and `heldout`
    (evaluation at populations where every user costs too long); 0: every user.
    """
    support_parts = [schema.TRAIN] + ([schema.VAL] if part == schema.TEST else [])
    supports = [arrays.SplitArrays(self.eval_db_path, schema.split_name(self.family, p, heldout=heldout),
                                   self.lookup) for p in support_parts]
    queries = arrays.SplitArrays(self.eval_db_path, schema.split_name(self.family, part, heldout=heldout),
                                 self.lookup)
    ids = sorted(set(supports[0].client_ids) & set(queries.client_ids))
    if max_users < 0:
      raise ValueError(f'max_users must be >= 0 (0: every user), got {max_users}')
    if 0 < max_users < len(ids):
      order = np.random.default_rng([seed, int(heldout), *part.encode()]).permutation(len(ids))
      ids = [ids[i] for i in sorted(order[:max_users])]
    make_queries = preprocessing.ranking_queries if self.eval_kind == client_eval.RANKING else (
        preprocessing.rating_queries)
    support_arrays = [arrays.concatenate(parts) for parts in zip(*(s.get(ids) for s in supports))]
    query_arrays = queries.get(ids)
    marked, names = None, ()
    if group_metrics:
      training = np.array([len(t) for t in supports[0].get(ids)], np.int64)
      grouping = groups.Grouping(group_metrics, self.user_attributes(), self.item_raters(), training)
      marked = [grouping.user_rows(c, n, q.items) for c, n, q in zip(ids, training, query_arrays)]
      names = grouping.names
    return EvalClients(
        client_ids=ids,
        support=self.support_examples([s.items for s in support_arrays], [s.ratings for s in support_arrays], seed,
                                      recent_items, recent_repeats),
        queries=[make_queries(q) for q in query_arrays],
        seen=[s.items for s in support_arrays],
        relevant=[q.items for q in query_arrays],
        groups=marked, group_names=names, targets=self.targets)

  def group_attributes(self, spec: str) -> tuple[str, ...]:
    """`--group_metrics` checked against this data (`groups.parse`): the attributes to report groups of."""
    return groups.parse(spec, self.user_attributes().available())

  def user_attributes(self) -> groups.UserAttributes:
    """The users' declared attributes (demographics, platform) of the per-user data."""
    if self._user_attributes is None:
      self._user_attributes = groups.read_users(self.eval_db_path)
    return self._user_attributes

  def item_raters(self) -> np.ndarray:
    """[items + 1] each item's number of raters in the training split (the training users', not held-out ones)."""
    if self._item_raters is None:
      train = arrays.SplitArrays(self.eval_db_path, self.train_split, self.lookup, cache=False)
      self._item_raters = sum(  # Read 10,000 users at a time: a million users' examples at once take gigabytes.
          groups.item_raters([c.items for c in train.get(train.client_ids[start:start + 10_000])],
                             self.model_config.num_items)
          for start in range(0, len(train.client_ids), 10_000))
    return self._item_raters

  def negative_table(self, seed: int) -> np.ndarray:
    """The fixed negatives of evaluation and serving support (`reconstruction.negative_table`)."""
    return reconstruction.negative_table(seed, self.model_config.num_items, self.data_config.num_negatives)

  def support_examples(self, items: list[np.ndarray], ratings: list[np.ndarray], seed: int, recent_items: int = 0,
                       recent_repeats: int = 0) -> list[preprocessing.Examples]:
    """Each user's support examples from its history (item indices, ratings), as the exported model makes them.

    `reconstruction.support_examples`: a function of the history and `seed`
    only, so a served request reconstructs exactly the evaluated user.
    """
    out: list = [None] * len(items)
    negatives = self.negative_table(seed)
    # A chunk of users of alike history lengths at a time: padding every user to the longest history of a
    # power-law population took gigabytes. Each user's examples depend on its own history only.
    order = sorted(range(len(items)), key=lambda u: len(items[u]))
    for start in range(0, len(order), SUPPORT_CHUNK):
      chunk = order[start:start + SUPPORT_CHUNK]
      history, _ = preprocessing.pad_rows([items[u] for u in chunk], np.int64)
      history_ratings, _ = preprocessing.pad_rows([ratings[u] for u in chunk], np.float32)
      out_items, out_labels, counts = reconstruction.support_examples(
          history, history_ratings, objective=self.objective, negatives=negatives, recent_items=recent_items,
          recent_repeats=recent_repeats)
      for u, i, y, n in zip(chunk, out_items.numpy(), out_labels.numpy(), counts.numpy()):
        out[u] = (i[:n], y[:n])
    return out

  def eval_datasets(self, clients: EvalClients) -> list[collections.OrderedDict]:
    """`OrderedDict(support, queries)` datasets per client, for `fed_recon.build_evaluation`."""
    ranking = self.eval_kind == client_eval.RANKING
    return [collections.OrderedDict(
        support=self.client_dataset(s),
        queries=preprocessing.query_dataset(q, ranking, self.data_config.batch_size),
        seen=seen, relevant=relevant)
        for s, q, seen, relevant in zip(clients.support, clients.queries, clients.seen, clients.relevant)]
