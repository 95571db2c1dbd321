"""Malicious clients that promote target items: fake profiles and poisoned updates (item-promotion attacks).

A share of the population is malicious (Sybil users who join it, and are
sampled like everyone else). Each holds a fake profile: the target items plus
popular filler items (the data-poisoning baseline of shilling attacks, e.g.
Lam & Riedl, WWW 2004; as fake users of a federated recommender, Zhang et al.,
"PipAttack", WSDM 2022). Then:

- `fake_profiles`: a malicious client trains honestly on its fake profile.
- `model_poisoning`: it uploads a crafted update instead (FedRecAttack, Rong et
  al., ICDE 2022): the benign users' embeddings are estimated from public
  information, the popular items' embeddings of the broadcast model (users who
  rate them point their way), and the target items' embedding rows and biases
  are moved along the gradient that raises the targets' scores for those users,
  the update scaled to L2 norm `poison_norm` (what an aggregation without a norm
  bound admits; a bound clips it to what that admits). With `poison_boost` > 0,
  the explicit boosting variant instead (Bhagoji et al., "Analyzing Federated
  Learning through an Adversarial Lens", ICML 2019): the honest update on the
  fake profile, multiplied by the boost.

Which items are targets is public to the evaluation: the target items'
exposure among benign users, ER@10 (`client_eval.catalogue_sums`), is the
share of them with a target in their top 10 over the unseen catalogue.
Plain NumPy and TF, testable without TFF.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tff_rec.data import arrays

NONE, FAKE_PROFILES, MODEL_POISONING = 'none', 'fake_profiles', 'model_poisoning'
ATTACKS = (NONE, FAKE_PROFILES, MODEL_POISONING)
TRIMMED_MEAN, MEDIAN = 'trimmed_mean', 'median'
ROBUST_MEANS = (NONE, TRIMMED_MEAN, MEDIAN)
EVERY_USER, TOUCHED = 'every_user', 'touched'  # `aggregation.RobustMeanFactory`'s `over`.
ROBUST_OVER = (EVERY_USER, TOUCHED)
SYBIL_PREFIX = 'sybil_'  # Malicious users' ids: sybil_000000, ...


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The attack of a run, and the target items whose exposure every evaluation measures (also without attack)."""

  attack: str = NONE
  malicious_fraction: float = 0.0  # Of the population, malicious users included.
  target_items: tuple[str, ...] = ()  # Catalogue ids; else `num_target_items` chosen by `choose_targets`.
  num_target_items: int = 0
  filler_items: int = 30  # Popular items in each fake profile, beside the targets.
  popular_items: int = 50  # The most-rated items: the filler's pool and the attacker's estimate of the users.
  poison_norm: float = 10.0  # model_poisoning: L2 norm of the crafted update.
  poison_boost: float = 0.0  # model_poisoning: > 0, the explicit boosting variant's factor instead.

  @property
  def measured(self) -> bool:
    """Whether there are target items (whose exposure is reported)."""
    return bool(self.target_items) or self.num_target_items > 0

  def validate(self) -> None:
    if self.attack not in ATTACKS:
      raise ValueError(f'--attack must be one of {", ".join(ATTACKS)}, got {self.attack!r}')
    if not 0.0 <= self.malicious_fraction < 1.0:
      raise ValueError(f'--malicious_fraction must be in [0, 1), got {self.malicious_fraction}')
    if (self.attack == NONE) != (self.malicious_fraction == 0.0):
      raise ValueError(f'--attack={self.attack} with --malicious_fraction={self.malicious_fraction}: an attack needs '
                       'a malicious fraction > 0, and a fraction needs an attack')
    if self.target_items and self.num_target_items:
      raise ValueError('give --target_items or --num_target_items, not both')
    if self.num_target_items < 0 or self.filler_items < 0 or self.popular_items < 1:
      raise ValueError(f'--num_target_items and --filler_items must be >= 0 and --popular_items >= 1, got {self}')
    if self.attack != NONE and not self.measured:
      raise ValueError(f'--attack={self.attack} promotes target items: give --target_items or --num_target_items')
    if self.poison_norm <= 0 or self.poison_boost < 0:
      raise ValueError(f'--poison_norm must be > 0 and --poison_boost >= 0, got {self.poison_norm}, '
                       f'{self.poison_boost}')


@dataclasses.dataclass(frozen=True)
class DefenceConfig:
  """Per-user norm bounding (Sun et al., "Can You Really Backdoor Federated Learning?", 2019): each user's whole
  update clipped to L2 norm `norm_bound` before the mean (0: none), or with `adaptive`, to a clip that tracks the
  `target_quantile` of the users' norms from `norm_bound` (Andrew et al., NeurIPS 2021) - DP's clip without
  its noise (`aggregation.DPFactory`); and/or each row of it (one item's) to `row_bound`
  (`aggregation.clip_rows`). Or a robust mean in place of the mean (`aggregation.RobustMeanFactory`): the
  coordinate-wise trimmed mean dropping `trim_fraction` of the users at each end, or the median (Yin et al.,
  ICML 2018), after the row bound if one is set; over every user taking part, or for each item row over the users
  whose update touches it (`robust_over`)."""

  norm_bound: float = 0.0
  adaptive: bool = False
  target_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  row_bound: float = 0.0  # > 0: each row of a user's update (one item's) clipped to it first.
  robust_mean: str = NONE  # ROBUST_MEANS.
  trim_fraction: float = 0.1  # trimmed_mean: of the users taking part, dropped at each end per coordinate.
  robust_over: str = EVERY_USER  # ROBUST_OVER.

  @property
  def enabled(self) -> bool:
    return self.norm_bound > 0 or self.row_bound > 0 or self.robust_mean != NONE

  @property
  def trim(self) -> float:
    """The fraction `aggregation.trimmed_mean` drops at each end (0.5: the median)."""
    return 0.5 if self.robust_mean == MEDIAN else self.trim_fraction

  def validate(self) -> None:
    if self.robust_mean not in ROBUST_MEANS:
      raise ValueError(f'--robust_mean must be one of {", ".join(ROBUST_MEANS)}, got {self.robust_mean!r}')
    if self.robust_over not in ROBUST_OVER:
      raise ValueError(f'--robust_mean_over must be one of {", ".join(ROBUST_OVER)}, got {self.robust_over!r}')
    if not 0 < self.trim_fraction < 0.5:
      raise ValueError(f'--trim_fraction must be in (0, 0.5) (--robust_mean=median for the median), got '
                       f'{self.trim_fraction}')
    if self.robust_mean != NONE and self.norm_bound > 0:
      raise ValueError('--robust_mean with --norm_bound: not composed (the robust mean takes --row_norm_bound)')
    if self.row_bound < 0:
      raise ValueError(f'--row_norm_bound must be >= 0 (0: none), got {self.row_bound}')
    if self.norm_bound < 0 or (self.adaptive and not self.norm_bound > 0):
      raise ValueError(f'--norm_bound must be >= 0 (0: none), and > 0 with --adaptive_norm_bound (its initial '
                       f'value), got {self.norm_bound}')
    if not 0 < self.target_quantile < 1 or self.clip_learning_rate < 0:
      raise ValueError('--norm_bound_quantile must be in (0, 1) and --clip_learning_rate >= 0')


def popular(item_raters: np.ndarray, count: int) -> np.ndarray:
  """The `count` most-rated item indices (ties by index), from [items + 1] raters (index 0 = unknown, never)."""
  raters = np.asarray(item_raters, np.float64).copy()
  raters[0] = -1.0
  order = np.lexsort((np.arange(len(raters)), -raters))
  return np.sort(order[:min(count, len(raters) - 1)]).astype(np.int64)


def choose_targets(item_raters: np.ndarray, count: int, seed: int) -> np.ndarray:
  """`count` unpopular items by a seeded rule: drawn uniformly (seed) among the rated items with fewer raters than
  the median rated item (promoting an item few users rate is what an attack is for)."""
  raters = np.asarray(item_raters)
  rated = np.flatnonzero(raters[1:] > 0) + 1
  pool = rated[raters[rated] < np.median(raters[rated])]
  if count > len(pool):
    raise ValueError(f'--num_target_items={count}: only {len(pool)} items are below the median popularity')
  return np.sort(np.random.default_rng([seed, 7_919]).choice(pool, count, replace=False)).astype(np.int64)


def resolve_targets(config: AttackConfig, vocabulary: Sequence[str], item_raters: np.ndarray,
                    seed: int) -> np.ndarray:
  """The target item indices (vocabulary index + 1): `target_items` looked up, or `choose_targets`."""
  if config.target_items:
    index = {item: i + 1 for i, item in enumerate(vocabulary)}
    missing = [item for item in config.target_items if item not in index]
    if missing:
      raise ValueError(f'--target_items {", ".join(missing)} are not in the catalogue ({len(vocabulary):,} items, '
                       f'e.g. {vocabulary[0]!r})')
    return np.array(sorted({index[item] for item in config.target_items}), np.int64)
  return choose_targets(item_raters, config.num_target_items, seed) if config.num_target_items else np.zeros(
      0, np.int64)


def num_malicious(fraction: float, benign: int) -> int:
  """Malicious users joining `benign` ones so that they are `fraction` of the population (at least one if > 0)."""
  if fraction <= 0:
    return 0
  return max(1, int(round(fraction * benign / (1.0 - fraction))))


def fake_profiles(count: int, targets: np.ndarray, pool: np.ndarray, filler: int, seed: int) -> list[np.ndarray]:
  """Each malicious user's items in time order: `filler` items drawn from `pool` (the popular items) and the
  targets, shuffled (seeded per user)."""
  candidates = np.setdiff1d(pool, targets)  # Never a target twice.
  out = []
  for u in range(count):
    rng = np.random.default_rng([seed, 104_729, u])
    fill = rng.choice(candidates, min(filler, len(candidates)), replace=False)
    out.append(rng.permutation(np.concatenate([np.asarray(targets, np.int64), fill.astype(np.int64)])))
  return out


class PoisonedPopulation:
  """The training population with malicious users joined: `SplitArrays`' interface (client_ids, id_array, get),
  the malicious users' fake profiles held in memory (rating 5 each: the top of the scale, and 1 for implicit
  feedback's label)."""

  def __init__(self, benign, profiles: list[np.ndarray]):
    self.benign = benign
    self.malicious_ids = [f'{SYBIL_PREFIX}{u:06d}' for u in range(len(profiles))]
    self._profiles = {c: arrays.ClientArrays(items=p, ratings=np.full(len(p), 5.0, np.float32))
                      for c, p in zip(self.malicious_ids, profiles)}
    self.client_ids = list(benign.client_ids) + self.malicious_ids
    self.id_array = np.sort(np.asarray(self.client_ids))

  def get(self, client_ids: Sequence[str]) -> list[arrays.ClientArrays]:
    benign = [c for c in client_ids if c not in self._profiles]
    read = dict(zip(benign, self.benign.get(benign)))
    return [self._profiles[c] if c in self._profiles else read[c] for c in client_ids]

  def is_malicious(self, client_ids: Sequence[str]) -> np.ndarray:
    return np.array([c in self._profiles for c in client_ids], bool)


class CohortExamples(list):
  """A round's examples (one `Examples` per user) and which of the users are malicious ([users] bool)."""

  def __init__(self, examples: list, malicious: np.ndarray):
    super().__init__(examples)
    self.malicious = np.asarray(malicious, bool)


@dataclasses.dataclass(frozen=True)
class Poison:
  """What a malicious client uploads (`poison_updates`): the crafted update's targets, the popular items it
  estimates users from, its norm; or the boost of its honest update (`boost` > 0)."""

  targets: tuple[int, ...]
  popular: tuple[int, ...]
  norm: float
  boost: float = 0.0


def crafted_deltas(embedding: tf.Tensor, rows: tf.Tensor, poison: Poison) -> tuple[tf.Tensor, tf.Tensor]:
  """A malicious user's update of MF's item side on its rows [U, K] (its profile's items): on the target rows, the
  negated ascent direction of sum_u <p_u, q_t> + b_t over the estimated users p_u (the popular items' embedding
  rows of the broadcast `embedding` [rows, d]): (-mean popular row, -1) per target row, scaled so that the whole
  update has L2 norm `poison.norm`; zero elsewhere. Returns (embedding deltas [U, K, d], bias deltas [U, K, 1]),
  `initial - final` as every update."""
  direction = tf.reduce_mean(tf.gather(embedding, tf.constant(poison.popular, tf.int64)), axis=0)  # [d]
  is_target = tf.reduce_any(tf.equal(rows[..., None], tf.constant(poison.targets, tf.int64)), axis=-1)
  on = tf.cast(is_target, embedding.dtype)[..., None]  # [U, K, 1]
  raw_embedding, raw_bias = on * direction, on
  norm = tf.sqrt(tf.reduce_sum(tf.square(raw_embedding), axis=[1, 2]) + tf.reduce_sum(tf.square(raw_bias), axis=[1, 2]))
  scale = tf.math.divide_no_nan(tf.constant(poison.norm, embedding.dtype), norm)[:, None, None]
  return -raw_embedding * scale, -raw_bias * scale


def poison_updates(updates, weights, malicious: tf.Tensor, poison: Poison):
  """`updates` (`shard_math.user_updates`' per-user sparse updates) with the malicious users' ([U] 0/1) replaced:
  boosted (`poison.boost` > 0, any model), or crafted on MF's item side (`weights` = item embedding, item bias[,
  global mean]; `crafted_deltas`, the rest zero)."""
  updates = dict(updates)
  deltas = list(updates['deltas'])

  def select(crafted, honest):
    mask = tf.reshape(tf.cast(malicious, tf.bool), [-1] + [1] * (honest.shape.rank - 1))
    return tf.where(mask, tf.cast(crafted, honest.dtype), honest)

  if poison.boost > 0:
    updates['deltas'] = [select(d * poison.boost, d) for d in deltas]
    return updates
  embedding_delta, bias_delta = crafted_deltas(weights[0], updates['rows'][0], poison)
  crafted = [embedding_delta, bias_delta] + [tf.zeros_like(d) for d in deltas[2:]]
  updates['deltas'] = [select(c, d) for c, d in zip(crafted, deltas)]
  return updates
