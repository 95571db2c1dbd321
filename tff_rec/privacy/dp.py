"""User-level differential privacy: the mechanism (TFF / tensorflow-privacy) and its accounting (dp_accounting).

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018): every client's model update is clipped to an L2
norm and Gaussian noise is added to their sum, so one user's whole
contribution to a round is bounded. The mechanisms are tensorflow-privacy's
DP queries as TFF's `tff.aggregators.DifferentiallyPrivateFactory` builds them:

* `gaussian_fixed`: a fixed clip norm, noise stddev = noise_multiplier * clip.
* `gaussian_adaptive`: the clip norm follows a target quantile of the update
  norms (Andrew et al., "Differentially Private Learning with Adaptive
  Clipping", NeurIPS 2021); `noise_multiplier` is the effective total, which
  TFF splits between the values and the clipped-count estimate.
* `tree`: DP-FTRL (Kairouz et al., "Practical and Private (Deep) Learning
  without Sampling or Shuffling", ICML 2021): tree-aggregation noise on the
  cumulative sum of clipped updates, released as per-round residuals
  (tensorflow-privacy's `TreeResidualSumQuery`, as TFF's
  `DifferentiallyPrivateFactory.tree_aggregation` builds it), the tree
  restarted every epoch of shuffled cohorts (each user at most once per tree).

With Federated Reconstruction only the global (item-side) update is clipped,
noised and sent; user embeddings never leave the client. The unit of privacy
is one user: cross-device a client; cross-silo the platforms are sampled and
each clips every one of its users' updates on its own (`train_federated`).

Accounting composes the DpEvent of the sampler that ran, per round:
Poisson sampling -> `PoissonSampledDpEvent`, a fixed-size cohort drawn without
replacement -> `SampledWithoutReplacementDpEvent`, both of the Gaussian
mechanism, and reports epsilon at `target_delta` by RDP (Mironov 2017) and by
privacy loss distributions (PLD; only Poisson sampling has a PLD analysis in
dp_accounting, so PLD is None for fixed-size cohorts); `accountant` says whose
epsilon is the budget (calibration and the stop) and the `epsilon` a run
reports: RDP by default, or PLD (Meiser & Mohammadi 2018, Koskela et al.
2020), whose tighter analysis lets the same budget take about 7% less noise
at epsilon 8 (MovieLens: Poisson rate 0.5, 50 rounds). dp_accounting analyses
fixed-size cohorts under replace-one adjacency (one user's data swapped for
another's, which moves the sum of clipped updates by up to twice the clip: the
event's noise multiplier is half the mechanism's) and Poisson sampling under
add-or-remove-one. Tree aggregation
composes one `SingleEpochTreeAggregationDpEvent` per epoch (no sampling
amplification), under replace-special adjacency (a user's data replaced by a
zero contribution), by RDP. `--dp=distributed` (noise added on the clients,
summed securely) is `tff_rec.privacy.distributed`, with its own accounting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tff_rec import atomic
from tff_rec.federated.sampling import SamplingConfig

NONE, GAUSSIAN_FIXED, GAUSSIAN_ADAPTIVE, TREE = 'none', 'gaussian_fixed', 'gaussian_adaptive', 'tree'
DISTRIBUTED = 'distributed'  # tff_rec.privacy.distributed: noise added on clients, summed securely.
MECHANISMS = (NONE, GAUSSIAN_FIXED, GAUSSIAN_ADAPTIVE, TREE, DISTRIBUTED)
RDP, PLD = 'rdp', 'pld'
ACCOUNTANTS = (RDP, PLD)
# PLD's discretised privacy losses grow with epsilon: at noise multiplier 0.02 one composition takes minutes, at
# 1e-9 it exceeds numpy's largest array. Where RDP's epsilon (an upper bound on PLD's) is above this, the guarantee
# is void anyway, and only RDP's is computed.
PLD_EPSILON_LIMIT = 64.0
# TFF's adaptive clipping (gaussian_adaptive, ddp_secure_aggregator) gives the clipped-count estimate a stddev of
# this x the expected cohort, and needs the noise multiplier below twice that (`adaptive_noise_limit`).
_CLIPPED_COUNT_STDDEV = 0.05


class PrivacyConfigError(ValueError):
  """DP settings that cannot work, found once the noise multiplier is known (before any training)."""


def adaptive_noise_limit(clients: float) -> float:
  """The noise multiplier TFF's adaptive clipping must stay below for an expected cohort of `clients`."""
  return 2 * _CLIPPED_COUNT_STDDEV * clients


@dataclasses.dataclass(frozen=True)
class DPConfig:
  mechanism: str = NONE
  noise_multiplier: float = 0.0  # 0 with target_epsilon > 0: calibrated before training.
  clip_norm: float = 1.0  # The fixed clip, or the adaptive clip's initial value.
  target_quantile: float = 0.5  # Adaptive clipping.
  clip_learning_rate: float = 0.2  # Adaptive clipping.
  target_delta: float = 1e-4
  target_epsilon: float = 0.0  # > 0: a budget; calibrates a zero noise_multiplier, else stops the run at it.
  # Whose epsilon the budget is (calibration and stop): RDP, or PLD (tighter; Poisson-sampled Gaussian only).
  accountant: str = RDP

  @property
  def enabled(self) -> bool:
    return self.mechanism != NONE

  def validate(self) -> None:
    if self.mechanism not in MECHANISMS:
      raise ValueError(f'dp must be one of {MECHANISMS}, got {self.mechanism!r}')
    if not self.enabled:
      return
    if self.noise_multiplier < 0 or self.clip_norm <= 0:
      raise ValueError(f'--noise_multiplier must be >= 0 and --clip_norm > 0, got {self.noise_multiplier}, '
                       f'{self.clip_norm}')
    if self.noise_multiplier == 0 and self.target_epsilon <= 0:
      raise ValueError('--dp needs --noise_multiplier > 0, or --target_epsilon > 0 to calibrate it')
    if not 0 < self.target_delta < 1:
      raise ValueError(f'--target_delta must be in (0, 1), got {self.target_delta}')
    if not 0 < self.target_quantile < 1 or self.clip_learning_rate < 0:
      raise ValueError('--target_quantile must be in (0, 1) and --clip_learning_rate >= 0')
    if self.accountant not in ACCOUNTANTS:
      raise ValueError(f'--accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}')


def expected_clients(sampling: SamplingConfig, population: int) -> float:
  """The cohort size the mean divides by (TFF's `clients_per_round`)."""
  if sampling.clients_per_round > 0:
    return float(sampling.clients_per_round)
  return sampling.client_sampling_rate * population


def check_sampling(config: DPConfig, sampling: SamplingConfig) -> None:
  """The accounting needs the sampler it assumes: tree aggregation shuffled epochs, the Gaussian ones sampling."""
  if config.mechanism == TREE and not sampling.shuffle_epochs:
    raise ValueError('--dp=tree accounts for each user at most once per tree: use --epoch_sampling')
  if config.mechanism in (GAUSSIAN_FIXED, GAUSSIAN_ADAPTIVE) and sampling.shuffle_epochs:
    raise ValueError(f'--dp={config.mechanism} is accounted for sampled cohorts, not --epoch_sampling (use --dp=tree)')
  if config.mechanism == DISTRIBUTED and (sampling.clients_per_round <= 0 or sampling.shuffle_epochs):
    raise ValueError('--dp=distributed needs fixed-size cohorts (--clients_per_round > 0, no --epoch_sampling): '
                     'each client adds a noise share, and the accounting needs how many do')
  if config.accountant == PLD and (config.mechanism not in (GAUSSIAN_FIXED, GAUSSIAN_ADAPTIVE)
                                   or sampling.clients_per_round > 0):
    raise ValueError('--accountant=pld: dp_accounting has a PLD analysis only of Poisson-sampled Gaussian rounds '
                     '(--dp=gaussian_fixed|gaussian_adaptive with --client_sampling_rate and --clients_per_round=0); '
                     f'got --dp={config.mechanism} --clients_per_round={sampling.clients_per_round}: use '
                     '--accountant=rdp')


def aggregation_factory(config: DPConfig, clients: float, *, record_specs: Any = None, rounds_per_epoch: int = 0,
                        seed: int = 0) -> tff.aggregators.UnweightedAggregationFactory:
  """TFF's DP aggregator for `config` (what TFF's own processes, the test references, plug in as the model aggregator).

  Tree aggregation needs the update's `record_specs`, the tree's length
  (`rounds_per_epoch`) and a noise `seed` (its noise is stateless, so runs are
  reproducible).
  """
  if config.mechanism == TREE:
    if record_specs is None or rounds_per_epoch < 1:
      raise ValueError('tree aggregation needs the record specs and the rounds per epoch')
    # TFF's DifferentiallyPrivateFactory.tree_aggregation, with the tree restarted every epoch.
    tree = tfp.TreeResidualSumQuery.build_l2_gaussian_query(config.clip_norm, config.noise_multiplier,
                                                             record_specs, noise_seed=seed, use_efficient=True)
    restarted = tfp.RestartQuery(tree, tfp.restart_query.PeriodicRoundRestartIndicator(period=rounds_per_epoch))
    return tff.aggregators.DifferentiallyPrivateFactory(tfp.NormalizedQuery(restarted, denominator=clients))
  if config.mechanism == GAUSSIAN_FIXED:
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        config.noise_multiplier, clients, config.clip_norm)
  if config.mechanism == GAUSSIAN_ADAPTIVE:
    if config.noise_multiplier >= adaptive_noise_limit(clients):
      raise PrivacyConfigError(
          f'--dp=gaussian_adaptive with noise multiplier {config.noise_multiplier:.4g} needs an expected cohort of more '
          f'than {config.noise_multiplier / (2 * _CLIPPED_COUNT_STDDEV):.4g} clients (TFF gives the clipped-count '
          f'estimate noise of {_CLIPPED_COUNT_STDDEV} x the cohort, and its share must stay below half the total); '
          f'got {clients:.4g}: sample more clients a round, or use --dp=gaussian_fixed')
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        config.noise_multiplier, clients, initial_l2_norm_clip=config.clip_norm,
        target_unclipped_quantile=config.target_quantile, learning_rate=config.clip_learning_rate)
  raise ValueError(f'no aggregator for mechanism {config.mechanism!r}')


def dp_query(config: DPConfig, clients: float, **kwargs) -> Any:
  """The tensorflow-privacy DPQuery inside `aggregation_factory` (the shard process's `aggregation.DPFactory` runs
  it per user).

  Read from the factory rather than rebuilt, so both engines use exactly the
  query (and the adaptive-clipping noise split) TFF builds.
  """
  return aggregation_factory(config, clients, **kwargs)._query  # pylint: disable=protected-access  (TFF 0.87)


def round_event(noise_multiplier: float, sampling: SamplingConfig, population: int) -> dp_accounting.DpEvent:
  """The DpEvent of one round, matching the sampler that ran (tree aggregation: of one epoch's tree)."""
  if sampling.shuffle_epochs:
    return dp_accounting.SingleEpochTreeAggregationDpEvent(noise_multiplier, sampling.rounds_per_epoch(population))
  if sampling.clients_per_round > 0:
    # Replace-one adjacency: swapping one user's clipped update for another's moves the sum by up to 2 x clip, and
    # dp_accounting's noise multiplier is the noise stddev over that sensitivity.
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    return dp_accounting.SampledWithoutReplacementDpEvent(population, sampling.clients_per_round, gaussian)
  return dp_accounting.PoissonSampledDpEvent(sampling.client_sampling_rate,
                                             dp_accounting.GaussianDpEvent(noise_multiplier))


def _rdp_accountant(sampling: SamplingConfig) -> rdp.RdpAccountant:
  """dp_accounting analyses fixed-size cohorts under replace-one adjacency, Poisson under add-or-remove-one,
  tree aggregation under replace-special."""
  if sampling.shuffle_epochs:
    return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
  if sampling.clients_per_round > 0:
    return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  return rdp.RdpAccountant()


def run_event(noise_multiplier: float, sampling: SamplingConfig, population: int, rounds: int) -> dp_accounting.DpEvent:
  """The DpEvent of `rounds` rounds: composed rounds, or for tree aggregation one tree per (partial) epoch."""
  if not sampling.shuffle_epochs:
    return dp_accounting.SelfComposedDpEvent(round_event(noise_multiplier, sampling, population), rounds)
  full, partial = divmod(rounds, sampling.rounds_per_epoch(population))
  trees = [dp_accounting.SelfComposedDpEvent(round_event(noise_multiplier, sampling, population), full)]
  if partial:
    trees.append(dp_accounting.SingleEpochTreeAggregationDpEvent(noise_multiplier, partial))
  return dp_accounting.ComposedDpEvent(trees)


def epsilons(noise_multiplier: float, sampling: SamplingConfig, population: int, rounds: int,
             delta: float) -> dict[str, float | None]:
  """Epsilon at `delta` after `rounds` rounds, by RDP and by PLD (None where dp_accounting has no analysis, or
  where RDP's is above `PLD_EPSILON_LIMIT`)."""
  if rounds == 0:
    return {'epsilon_rdp': 0.0, 'epsilon_pld': 0.0}
  event = run_event(noise_multiplier, sampling, population, rounds)
  out = {'epsilon_rdp': _rdp_accountant(sampling).compose(event).get_epsilon(delta), 'epsilon_pld': None}
  accountant = pld.PLDAccountant()
  if accountant.supports(event) and out['epsilon_rdp'] <= PLD_EPSILON_LIMIT:
    out['epsilon_pld'] = accountant.compose(event).get_epsilon(delta)
  return out


def calibrate_noise(target_epsilon: float, sampling: SamplingConfig, population: int, rounds: int,
                    delta: float, accountant: str = RDP) -> float:
  """The smallest noise multiplier whose epsilon (by `accountant`) after `rounds` rounds is <= `target_epsilon`.

  Raises:
    PrivacyConfigError: No noise multiplier up to 1000 meets the budget.
  """
  most = _rdp_accountant(sampling).compose(run_event(1e3, sampling, population, rounds)).get_epsilon(delta)
  if most > target_epsilon:
    raise PrivacyConfigError(f'--target_epsilon={target_epsilon:g} cannot be met: even a noise multiplier of 1000 '
                             f'spends epsilon {most:.3g} over {rounds} rounds at delta {delta:g}; raise the budget or '
                             'train fewer rounds')
  z_rdp = dp_accounting.calibrate_dp_mechanism(
      lambda: _rdp_accountant(sampling),
      lambda z: run_event(z, sampling, population, rounds),
      target_epsilon, delta, bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, 1e3), tol=1e-4)
  if accountant == RDP:
    return z_rdp
  if target_epsilon > PLD_EPSILON_LIMIT:
    raise PrivacyConfigError(f'--accountant=pld computes epsilon up to {PLD_EPSILON_LIMIT:g} (beyond it its '
                             f'discretisation does not fit in memory), got --target_epsilon={target_epsilon:g}: use '
                             '--accountant=rdp')
  # PLD's epsilon is below RDP's (both are upper bounds; PLD's is nearly tight), so its noise is below z_rdp. The
  # bracket starts at half of it: PLD's discretised losses grow as 1/z, and at tiny z would not fit in memory.
  event = run_event(z_rdp, sampling, population, rounds)
  if not pld.PLDAccountant().supports(event):
    raise ValueError(f'dp_accounting has no PLD analysis of {event}: use --accountant=rdp')
  return dp_accounting.calibrate_dp_mechanism(
      pld.PLDAccountant, lambda z: run_event(z, sampling, population, rounds), target_epsilon, delta,
      bracket_interval=dp_accounting.ExplicitBracketInterval(z_rdp / 2, z_rdp * 1.01), tol=1e-4)


class PrivacyLedger:
  """What a DP run spends: epsilon after every round, the budget stop, and privacy_ledger.json."""

  def __init__(self, config: DPConfig, sampling: SamplingConfig, population: int,
               unit_of_privacy: str = 'one client (cross-device: one user)',
               accounting: SamplingConfig | None = None, accounting_note: str | None = None,
               accountant: Any = None):
    """`population`: what is sampled (users cross-device, platforms cross-silo).

    `accounting`: the sampler the accounting assumes, where it cannot be the
    one that ran (cross-silo: `client_sampling_rate=1`, no amplification),
    with `accounting_note` saying why.

    `accountant`: a `distributed.Accountant` (its own RDP analysis) for
    --dp=distributed.
    """
    if not config.enabled or config.noise_multiplier <= 0:
      raise ValueError('a privacy ledger needs a DP mechanism with a noise multiplier (calibrate it first)')
    self.config, self.sampling, self.population = config, sampling, population
    self.unit_of_privacy = unit_of_privacy
    self.accounting, self.accounting_note = accounting or sampling, accounting_note
    self.accountant = accountant
    self._spent: dict[int, dict[str, float | None]] = {}

  def epsilons(self, rounds: int) -> dict[str, float | None]:
    # The loop asks twice per round (the budget check before it, the metrics after it): compose once.
    if rounds not in self._spent and self.accountant is not None:
      self._spent[rounds] = {'epsilon_rdp': self.accountant.epsilon(rounds, self.config.target_delta),
                             'epsilon_pld': None}
    if rounds not in self._spent:
      self._spent[rounds] = epsilons(self.config.noise_multiplier, self.accounting, self.population, rounds,
                                     self.config.target_delta)
    return self._spent[rounds]

  def spent(self, rounds: int) -> float:
    """Epsilon after `rounds` rounds by the chosen accountant; RDP's upper bound where PLD's was not computed
    (above `PLD_EPSILON_LIMIT`)."""
    spent = self.epsilons(rounds)
    chosen = spent[f'epsilon_{self.config.accountant}']
    return spent['epsilon_rdp'] if chosen is None else chosen

  def round_metrics(self, round_num: int) -> dict[str, float]:
    """Epsilon spent once `round_num` has run (metrics.csv and TensorBoard; PLD only where defined)."""
    return {f'privacy/{k}': v for k, v in self.epsilons(round_num).items() if v is not None}

  def budget(self, round_num: int) -> str | None:
    """Why `round_num` must not run (it would exceed --target_epsilon), or None."""
    if self.config.target_epsilon <= 0:
      return None
    spent = self.spent(round_num)
    if spent > self.config.target_epsilon * (1 + 1e-3):  # Calibration is to a tolerance.
      return (f'the privacy budget epsilon={self.config.target_epsilon} (delta={self.config.target_delta}) would be '
              f'exceeded: epsilon ({self.config.accountant.upper()}) after round {round_num} would be {spent:.3f}')
    return None

  def write(self, path: str, rounds: int) -> dict[str, Any]:
    """Writes the ledger; returns the final epsilons for final_metrics.json."""
    spent = self.epsilons(rounds)
    ledger = {
        'mechanism': self.config.mechanism,
        'unit_of_privacy': self.unit_of_privacy,
        'sampling': self.sampling.method,
        'sampling_rate': (self.sampling.clients_per_round / self.population if self.sampling.clients_per_round
                          else self.sampling.client_sampling_rate),
        'clients_per_round': expected_clients(self.sampling, self.population),
        'population': self.population,
        'dp_event': (str(self.accountant.describe()) if self.accountant is not None else
                     str(round_event(self.config.noise_multiplier, self.accounting, self.population))),
        'neighboring_relation': ('replace one user (sensitivities doubled)' if self.accountant is not None else
                                 'replace one user\'s data by a zero contribution (tree aggregation)'
                                 if self.accounting.shuffle_epochs else
                                 'replace one user (the sum moves by up to 2 x clip: the event\'s noise multiplier '
                                 'is half the mechanism\'s)' if self.accounting.clients_per_round else
                                 'add or remove one user'),
        'accounting_note': self.accounting_note,
        'noise_multiplier': self.config.noise_multiplier,
        'clip_norm': self.config.clip_norm if self.accountant is None else self.accountant.initial_clip,
        'adaptive_clipping': self.config.mechanism in (GAUSSIAN_ADAPTIVE, DISTRIBUTED),
        'rounds': rounds,
        'delta': self.config.target_delta,
        'target_epsilon': self.config.target_epsilon or None,
        'accountant': self.config.accountant,
        **spent,
    }
    atomic.write_json(path, ledger)
    return {'epsilon': self.spent(rounds), 'epsilon_rdp': spent['epsilon_rdp'],
            'epsilon_pld': spent['epsilon_pld'], 'delta': self.config.target_delta}
