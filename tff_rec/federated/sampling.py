"""Seeded client sampling per round.

Each round's cohort depends only on (seed, round), never on earlier rounds, so
a resumed run samples exactly what an uninterrupted one would.

* Uniform without replacement: a fixed `clients_per_round`.
* Poisson: each client joins independently with probability `rate`, the
  sampling that DP-FedAvg's privacy accounting assumes (McMahan et al., ICLR 2018).
* Shuffled epochs (`shuffle_epochs`): epoch e is a seeded permutation of all
  clients cut into `clients_per_round` cohorts (the remainder sits the epoch
  out), so each client takes part at most once per epoch: what DP-FTRL's tree
  aggregation accounts for (Kairouz et al., ICML 2021).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

_SAMPLING_PURPOSE = 7
_EPOCH = 1  # Keeps the epochs' permutations apart from the rounds' draws.


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  clients_per_round: int = 0  # > 0: uniform without replacement.
  client_sampling_rate: float = 0.0  # > 0: Poisson sampling.
  shuffle_epochs: bool = False  # With clients_per_round: shuffled epochs instead of independent rounds.

  def validate(self, num_clients: int) -> None:
    uniform, poisson = self.clients_per_round > 0, self.client_sampling_rate > 0
    if uniform == poisson:
      raise ValueError('set exactly one of --clients_per_round (uniform) and --client_sampling_rate (Poisson), '
                       f'got {self.clients_per_round} and {self.client_sampling_rate}')
    if uniform and self.clients_per_round > num_clients:
      raise ValueError(f'--clients_per_round={self.clients_per_round} exceeds the {num_clients} training clients')
    if poisson and not 0 < self.client_sampling_rate <= 1:
      raise ValueError(f'--client_sampling_rate must be in (0, 1], got {self.client_sampling_rate}')
    if self.shuffle_epochs and not uniform:
      raise ValueError('--epoch_sampling cuts epochs into cohorts of --clients_per_round')

  @property
  def method(self) -> str:
    if self.shuffle_epochs:
      return 'epochs'
    return 'uniform' if self.clients_per_round > 0 else 'poisson'

  def rounds_per_epoch(self, num_clients: int) -> int:
    """Rounds in one shuffled epoch (each client at most once)."""
    return max(1, num_clients // self.clients_per_round)


def sample_clients(client_ids: Sequence[str], round_num: int, seed: int, config: SamplingConfig) -> list[str]:
  """The cohort of `round_num` (sorted ids; Poisson may give an empty cohort).

  The cohort depends on the set of `client_ids`, not their order: a list is
  sorted first; a numpy array must already be sorted (large populations pass
  `SplitArrays.id_array`, so a round costs what its cohort costs).
  """
  if isinstance(client_ids, np.ndarray):  # Taken as sorted (`SplitArrays.id_array`): O(cohort) per round.
    ids = client_ids
  else:
    ids = np.sort(np.asarray(client_ids))
  if config.shuffle_epochs:  # O(population) a round: for DP-FTRL's populations, not the million-user one.
    per_epoch = config.rounds_per_epoch(len(ids))
    epoch, position = divmod(round_num - 1, per_epoch)
    order = np.random.default_rng([seed, _SAMPLING_PURPOSE, _EPOCH, epoch]).permutation(len(ids))
    return sorted(ids[order[position * config.clients_per_round:(position + 1) * config.clients_per_round]].tolist())
  rng = np.random.default_rng([seed, _SAMPLING_PURPOSE, round_num])
  if config.clients_per_round > 0:
    chosen = rng.choice(len(ids), size=config.clients_per_round, replace=False)
  else:
    chosen = np.flatnonzero(rng.random(len(ids)) < config.client_sampling_rate)
  return sorted(ids[chosen].tolist())


def groups_of(ids: Sequence[str], members: Mapping[str, Sequence[str]]) -> list[list[int]]:
  """The positions in `ids` of each platform's users (platforms in sorted order; those with none left out)."""
  position = {user: i for i, user in enumerate(ids)}
  groups = [[position[u] for u in members[p] if u in position] for p in sorted(members)]
  return [g for g in groups if g]


def sample_silo_users(members: Mapping[str, Sequence[str]], round_num: int, seed: int,
                      config: SamplingConfig) -> list[str]:
  """Cross-silo with user-level DP: this round's platforms (sampled as clients are), expanded to their users."""
  platforms = sample_clients(sorted(members), round_num, seed, config)
  return sorted(user for platform in platforms for user in members[platform])
