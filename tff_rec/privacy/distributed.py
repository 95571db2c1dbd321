"""Distributed DP: discrete noise added on every user's device and summed securely; its parameters and accounting.

The mechanism is TFF's `tff.learning.ddp_secure_aggregator`, applied per user
by the shard aggregator `tff_rec.federated.aggregation.DistributedDPFactory`:
each user's update is flattened, rotated (randomised Hadamard transform),
L2-clipped (the clip adapts to the median norm, Andrew et al. NeurIPS 2021,
its clipped count securely summed), scaled and stochastically rounded to
integers, and gets a share of distributed Skellam noise (Agarwal, Kairouz &
Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
NeurIPS 2021) before the secure sum (modular, `bits` wide): the server only
ever sees the noisy sum. Without TFF's adaptive zeroing (`zeroing=False`): it
estimates its threshold from a securely summed count with no noise, a release
no DP analysis covers (non-finite updates are already zeroed by the client
work). `round_parameters` tunes a round from the clip as TFF does.

Accounting is written here because dp_accounting 0.4.3 has no Skellam event:

* One round, per RDP order alpha (Agarwal et al. 2021, Theorem 3.5 as the
  authors' accounting computes it, google-research/federated
  distributed_dp/accounting_utils.py), in the scaled integer domain:
  alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu)),
  mu = clients x local variance (every client of a fixed-size cohort adds
  one share), D2 the clip inflated by the rounding (TFF's bound) and
  D1 = ceil(D2 min(sqrt(padded dim), D2)); plus the Gaussian mechanism of
  the adaptive clip's clipped count (stddev `below_estimate_stddev`, records
  in [-0.5, 0.5]). Under replace-one adjacency both sensitivities double.
* Cohorts are a fixed size drawn without replacement (the noise adds up to
  the accounted variance only if the expected clients all take part), so
  amplification is Wang, Balle & Kasiviswanathan (AISTATS 2019), Theorem 9,
  the bound for any mechanism (dp_accounting implements it for the Gaussian
  only).
* The per-round RDP is computed from the aggregator's initial parameters
  with a `MARGIN`; each round's actual parameters (the aggregator reports
  them) are checked against it, and a round that would exceed it fails the
  run rather than under-report epsilon. (Scale and noise follow the adaptive
  clip, so the ratios barely move.)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dp_accounting
import numpy as np
from scipy import optimize, special
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import differential_privacy as _tff_dp
from tensorflow_federated.python.aggregators import discretization as _tff_discretization
from tensorflow_federated.python.aggregators import distributed_dp as _tff_ddp

from tff_rec import runtime  # noqa: F401  Managed TFF context (no leaked worker).
from tff_rec.privacy import dp

BITS = 20  # tff.learning.ddp_secure_aggregator's default field: 2^20 per coordinate.
ORDERS = tuple(range(2, 257))
INITIAL_CLIP = 0.1  # tff.learning.ddp_secure_aggregator's initial L2 clip (it then adapts to the median norm).
MARGIN = 0.01  # Per-round RDP accounted above the initial parameters' (see the module docstring).


class DriftError(RuntimeError):
  """A round's distributed-DP parameters cost more privacy than the accounting assumed."""


@dataclasses.dataclass(frozen=True)
class SkellamRound:
  """One round's mechanism, in the scaled integer domain."""

  l2_bound: float  # A client's record after clipping, scaling and rounding: its L2 norm bound.
  local_stddev: float  # Each client's noise share.
  clients: int  # Shares summed (the fixed cohort size).
  padded_dim: int  # Coordinates after the rotation's padding.
  count_stddev: float  # Gaussian noise on the adaptive clip's clipped count (records in [-0.5, 0.5]).

  @property
  def l1_bound(self) -> float:
    # As TFF's DistributedDpSumFactory: integer coordinates give L1 <= L2^2, and always L1 <= sqrt(d) L2.
    return math.ceil(self.l2_bound * min(math.sqrt(self.padded_dim), self.l2_bound))


def round_rdp(mechanism: SkellamRound, orders: Sequence[int] = ORDERS) -> np.ndarray:
  """RDP of one unsampled round under replace-one adjacency (sensitivities doubled)."""
  d2, d1 = 2 * mechanism.l2_bound, 2 * mechanism.l1_bound
  mu = mechanism.clients * mechanism.local_stddev**2
  out = []
  for a in orders:
    skellam = a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
    count = a * 1.0**2 / (2 * mechanism.count_stddev**2) if mechanism.count_stddev > 0 else math.inf
    out.append(skellam + count)
  return np.array(out)


def sampled_without_replacement_rdp(rdp: np.ndarray, q: float, orders: Sequence[int] = ORDERS) -> np.ndarray:
  """Wang, Balle & Kasiviswanathan (AISTATS 2019), Theorem 9: a mechanism with RDP `rdp` (at integer `orders`
  2, 3, ...) run on a fixed-size sample without replacement of a fraction `q`, replace-one adjacency.

  Written by hand: dp_accounting applies the theorem to the Gaussian only. With
  no bound on eps(inf), the theorem's min{2, (e^eps(inf) - 1)^j} terms are 2.
  """
  if list(orders) != list(range(2, 2 + len(orders))):
    raise ValueError('orders must be the integers 2, 3, ...')
  if q >= 1:
    return np.asarray(rdp, float)
  eps = dict(zip(orders, rdp))
  out = []
  for a in orders:
    terms = [0.0]  # log 1
    e2 = eps[2]
    terms.append(2 * math.log(q) + _log_comb(a, 2) + min(math.log(4) + _log_expm1(e2), math.log(2) + e2))
    for j in range(3, a + 1):
      terms.append(math.log(2) + (j - 1) * eps[j] + j * math.log(q) + _log_comb(a, j))
    out.append(min(special.logsumexp(terms) / (a - 1), eps[a]))  # Sampling never costs more than not.
  return np.array(out)


def _log_comb(n: int, k: int) -> float:
  return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def _log_expm1(x: float) -> float:
  return x + math.log1p(-math.exp(-x)) if x > 0 else -math.inf


def epsilon(per_round: np.ndarray, q: float, rounds: int, delta: float) -> float:
  """Epsilon at `delta` after `rounds` sampled rounds (RDP, dp_accounting's conversion)."""
  if rounds == 0:
    return 0.0
  rdp = rounds * sampled_without_replacement_rdp(per_round, q)
  return float(dp_accounting.rdp.compute_epsilon(ORDERS, rdp, delta)[0])


def padded_dim(dim: int) -> int:
  """The coordinates of an update of `dim` values after the Hadamard rotation's padding (a power of two)."""
  return 2 ** math.ceil(math.log2(max(1, dim)))


def k_stddevs(wrap_probability: float = 1e-4) -> float:
  """TFF's default probability of the sum wrapping around the field, as standard deviations (eager)."""
  return _tff_ddp._clip_prob_to_num_stddevs(wrap_probability)  # pylint: disable=protected-access


def noise_split(noise_multiplier: float, clients: int) -> tuple[float, float]:
  """(the value's noise multiplier, the adaptive clip count's stddev): TFF's split of `noise_multiplier` between
  the update and the clip's below-count (Andrew et al. 2021)."""
  return _tff_dp.adaptive_clip_noise_params(noise_multiplier, clients, None)


def round_parameters(clip, value_noise_multiplier: float, clients: int, padded_dim: int, bits: int,
                   k_stddevs: float) -> collections.OrderedDict:
  """A distributed-DP round's parameters for L2 clip `clip`, as TFF 0.87's `DistributedDpSumFactory` tunes them:
  the scale (TFF's heuristic, capped at 1e6), the scaled norm bounds after rounding (L2 with TFF's 1e-5 leeway;
  L1 <= L2 min(sqrt(d), L2)) and each user's noise stddev, scaled. `k_stddevs`: the aggregate's standard
  deviations kept inside the field (1e-4's)."""
  clip = tf.cast(clip, tf.float32)
  local = value_noise_multiplier * clip / np.sqrt(clients)
  # pylint: disable-next=protected-access
  heuristic = _tff_ddp._heuristic_scale_factor(local, clip, bits, clients, padded_dim, k_stddevs)
  scale = tf.cast(tf.minimum(heuristic, tf.constant(_tff_ddp.MAX_SCALE_FACTOR, tf.float64)), tf.float32)
  inflated = _tff_discretization.inflated_l2_norm_bound(clip, 1.0 / scale, 0.0, padded_dim)
  l2 = (inflated + 1e-5) * scale
  l1 = tf.cast(tf.math.ceil(l2 * tf.minimum(float(np.sqrt(padded_dim)), l2)), tf.int32)
  return collections.OrderedDict(clip=clip, scale=scale, l2=l2, l1=l1, local_stddev=local * scale)


def initial_round(noise_multiplier: float, clients: int, value_type: Any, bits: int = BITS) -> SkellamRound:
  """The parameters of the first round (clip `INITIAL_CLIP`) for updates of `value_type` (tested equal to the
  initial state of TFF's `ddp_secure_aggregator`)."""
  dim = sum(int(np.prod(t.shape)) for t in tf.nest.flatten(
      tff.types.structure_from_tensor_type_tree(lambda t: t, value_type)))
  value_noise, count_stddev = noise_split(noise_multiplier, clients)
  params = round_parameters(INITIAL_CLIP, value_noise, clients, padded_dim(dim), bits, k_stddevs())
  return SkellamRound(l2_bound=float(params['l2']), local_stddev=float(params['local_stddev']), clients=clients,
                      padded_dim=padded_dim(dim), count_stddev=float(count_stddev))


def from_measurements(measurements: Mapping[str, Any], count_stddev: float) -> SkellamRound:
  """The parameters a round used, from the aggregator's measurements (`mean_value`)."""
  return SkellamRound(l2_bound=float(measurements['scaled_inflated_l2']),
                      local_stddev=float(measurements['scaled_local_stddev']),
                      clients=int(measurements['actual_num_clients']), padded_dim=int(measurements['padded_dim']),
                      count_stddev=count_stddev)


class Accountant:
  """Epsilon of distributed-DP rounds: the accounted per-round RDP, and the check of every round against it."""

  def __init__(self, noise_multiplier: float, clients: int, population: int, value_type: Any, bits: int = BITS):
    self.first = initial_round(noise_multiplier, clients, value_type, bits)
    self.per_round = round_rdp(self.first) * (1 + MARGIN)
    self.q = clients / population

  initial_clip = INITIAL_CLIP

  def epsilon(self, rounds: int, delta: float) -> float:
    return epsilon(self.per_round, self.q, rounds, delta)

  def describe(self) -> dict[str, Any]:
    """What the ledger records as the round's event."""
    return {'mechanism': 'distributed Skellam + Gaussian clipped count (adaptive clip), per round',
            'first_round': dataclasses.asdict(self.first), 'l1_bound': self.first.l1_bound,
            'accounted_margin': MARGIN,
            'sampling': f'fixed-size cohorts without replacement, q = {self.q:.6g} (Wang et al. 2019, Theorem 9)'}

  def check(self, measurements: Mapping[str, Any]) -> None:
    """Raises `DriftError` if the round that reported `measurements` cost more than is accounted."""
    actual = from_measurements(measurements, self.first.count_stddev)
    if actual.clients != self.first.clients:
      raise DriftError(f'distributed DP: {actual.clients} clients added noise shares, the accounting assumes '
                       f'{self.first.clients}')
    if np.any(round_rdp(actual) > self.per_round):
      raise DriftError(f'distributed DP: a round\'s parameters ({actual}) exceed the accounted ones ({self.first} '
                       f'+ {MARGIN:.0%}); epsilon would be under-reported')


def calibrate(target_epsilon: float, clients: int, population: int, rounds: int, delta: float, value_type: Any,
              bits: int = BITS) -> float:
  """The smallest noise multiplier whose accounted epsilon after `rounds` is <= `target_epsilon`."""
  upper = dp.adaptive_noise_limit(clients) * 0.999  # TFF's adaptive clip needs the noise strictly below it.

  def excess(log_z: float) -> float:
    with warnings.catch_warnings():  # TFF warns of the clip count's share of large trial noise multipliers.
      warnings.simplefilter('ignore', UserWarning)
      return Accountant(math.exp(log_z), clients, population, value_type, bits).epsilon(rounds, delta) - target_epsilon

  if excess(math.log(upper)) > 0:
    raise dp.PrivacyConfigError(f'no noise multiplier below {upper:.3g} (TFF\'s limit for {clients} clients a round) '
                                f'reaches epsilon {target_epsilon} in {rounds} rounds: use more clients per round or '
                                'fewer rounds')
  log_z = optimize.brentq(excess, math.log(1e-2), math.log(upper), xtol=1e-4)
  return math.exp(log_z) * (1 + 1e-4)  # The bracket's upper side of the tolerance.
