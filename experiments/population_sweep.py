r"""The privacy-utility trade-off against population size: one privacy sweep per synthetic population.

  python -m experiments.population_sweep --flagfile=configs/population_sweep.flags \
      [--populations=6000,60000] [--epsilons=1,2,4,8,inf]

Takes every train_federated flag (the configuration to sweep, e.g. private
federated ALS) and the synthetic generator's; or, with `--population_source`
(a prepared dataset: MovieLens-1M, your own log), populations of N of its users
(`tff_rec.data.subsets`), so anyone gets the curve for their own data. For each population size N it
prepares a synthetic population (`tff_rec.data.synthetic`: Zipfian popularity,
power-law activity, users choosing what they rate by their preference, so the
implicit task is personal) under `--population_data_dir` unless one with the
same generator settings is there, then trains the configuration at each
epsilon (noise calibrated to it; `inf`: no DP) with delta = min(1 / N^1.1,
1e-6). The cohort rule is the configuration's, or with `--population_cohort=C`
a fixed expected cohort: Poisson sampling at rate min(1, C / N) with the
configuration's rounds, so a round costs the same at every N above C (private
ALS: below C every user every round, the noise multiplier of a budget the
same at every N and its effect on the summed statistics shrinking as 1 / N;
above C, amplified by sampling). Writes
`population_sweep.csv` (each N and epsilon: HR@10, NDCG@10, the no-DP HR@10 and
the loss in HR@10 points) and `population_sweep.png` (the loss against N, a line
per epsilon) in `<root_output_dir>/<experiment_name>/`; runs go to
`N_<N>/eps_<epsilon>/` (resumable like any run). `--population_clip_only` also
trains each size with the clip and no noise (`N_<N>/clip_only/`), to separate
what the clip costs from what the noise does. Private ALS's scaling law (Chien
et al., ICML 2021): the users a given error needs grow with the catalogue and
shrink with epsilon.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import sys

from absl import app, flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import logs, privacy_sweep, train_federated
from tff_rec import plotting, runtime
from tff_rec.data import client_data, pipeline, schema, subsets
from tff_rec.data.synthetic import SyntheticConfig
from tff_rec.federated import sampling
from tff_rec.privacy import dp

_POPULATIONS = flags.DEFINE_list('populations', ['6000', '60000'], 'Population sizes (users) to sweep.')
_POP_DATA = flags.DEFINE_string('population_data_dir', 'data/populations', 'Where the synthetic populations are '
                                'prepared (one directory per size; reused when their generator settings match).')
_SOURCE = flags.DEFINE_string('population_source', None, 'A prepared dataset (e.g. data/movielens_1m or your own): '
                              'the populations are then its users, N of them drawn (nested: a larger population '
                              'holds every smaller one) instead of synthetic ones; the generator flags are unused.')
_ITEMS = flags.DEFINE_integer('population_items', 3700, 'Catalogue size (MovieLens-1M: 3,706 rated movies).')
_MEAN = flags.DEFINE_float('population_ratings_per_user', 60.0, 'Mean ratings per user.')
_LEAST = flags.DEFINE_integer('population_min_ratings', 20, 'Fewest ratings per user (MovieLens: 20).')
_RANK = flags.DEFINE_integer('population_rank', 32, 'Rank of the ground truth (preferences and ratings).')
_PREFERENCE = flags.DEFINE_float('population_preference_strength', 2.0, 'Standard deviation of the personal part '
                                 'of a user\'s choice logit (`synthetic.SyntheticConfig.preference_strength`).')

_COHORT = flags.DEFINE_integer('population_cohort', 0, 'Expected users a round at every population size: Poisson '
                               'sampling at rate min(1, C / N), the configuration\'s rounds (0: the configuration\'s '
                               'own sampling at every size).')

_CLIP_ONLY = flags.DEFINE_bool('population_clip_only', False, 'Also train each population with the configuration\'s '
                                'clip and no noise (not private; `clip_only/`): how much of the loss the clip alone '
                                'costs (the `clip_only_hr@10` and `clip_points` columns, a line in the plot).')
# The clip-only run's noise multiplier: DP's configuration needs one > 0 (or a budget); this one adds nothing.
CLIP_ONLY_NOISE = 1e-6

COLUMNS = ('population', 'epsilon', 'delta', 'sampling_rate', 'noise_multiplier', 'hr@10', 'ndcg@10', 'no_dp_hr@10',
           'loss_points', 'clip_only_hr@10', 'clip_points', 'wall_seconds')


def parse_populations(values: list[str]) -> list[int]:
  try:
    sizes = sorted({int(v) for v in values})
  except ValueError as e:
    raise ValueError(f'--populations must be integers, got {values}') from e
  if not sizes or sizes[0] < 10:
    raise ValueError(f'--populations must be at least 10 users each, got {values}')
  return sizes


def population_config(size: int, seed: int) -> SyntheticConfig:
  config = SyntheticConfig(num_users=size, num_items=_ITEMS.value, seed=seed, mean_ratings_per_user=_MEAN.value,
                           rank=_RANK.value, preference_strength=_PREFERENCE.value,
                           min_ratings_per_user=_LEAST.value)
  config.validate()
  return config


def prepared(config: SyntheticConfig, root: str) -> str:
  """The directory of `config`'s population under `root`, prepared unless it is there with the same settings."""
  out = os.path.join(root, f'synthetic_u{config.num_users}_i{config.num_items}_s{config.seed}')
  db = os.path.join(out, schema.CLIENTS_DB)
  if os.path.exists(db):
    found = client_data.read_metadata(db).get('synthetic')
    if found == dataclasses.asdict(config):
      return out
    raise ValueError(f'{out} holds a population of other generator settings ({found}); move it away or choose '
                     'another --population_data_dir')
  # The per-user view only (num_platforms=0): the sweep trains cross-device, and a second view doubles the disk.
  pipeline.prepare_synthetic(config, out, pipeline.PrepareOptions(seed=config.seed), num_platforms=0,
                             progress=False, workers=pipeline.default_workers())
  return out


def drawn(source: str, size: int, seed: int, root: str) -> str:
  """The directory of `size` users drawn from the prepared dataset `source` (`subsets.write_subset`)."""
  out = os.path.join(root, f'{os.path.basename(os.path.normpath(source))}_u{size}_s{seed}')
  subsets.write_subset(source, out, size, seed)
  return out


def cohort_sampling(base: sampling.SamplingConfig, size: int, cohort: int) -> sampling.SamplingConfig:
  """`base`, or with `cohort` > 0 Poisson sampling of `cohort` users a round in expectation (all of them when the
  population is no larger)."""
  if cohort < 0:
    raise ValueError(f'--population_cohort must be >= 0, got {cohort}')
  if not cohort:
    return base
  return dataclasses.replace(base, clients_per_round=0, client_sampling_rate=min(1.0, cohort / size),
                             shuffle_epochs=False)


def delta_for(size: int) -> float:
  """min(1 / N^1.1, 1e-6): below 1 / N, as a meaningful delta must be."""
  return min(1.0 / size ** 1.1, 1e-6)


def clip_only_config(config: train_federated.ExperimentConfig) -> train_federated.ExperimentConfig:
  """`config` (a population's, before the sweep's budgets) clipped as its DP mechanism clips, without noise."""
  mechanism = config.dp.mechanism if config.dp.enabled else dp.GAUSSIAN_ADAPTIVE  # As privacy_sweep's budgets.
  return dataclasses.replace(
      config, dp=dataclasses.replace(config.dp, mechanism=mechanism, noise_multiplier=CLIP_ONLY_NOISE,
                                     target_epsilon=0.0),
      output_dir=os.path.join(config.output_dir, 'clip_only'))


def loss_rows(rows: list[dict], clip_only: dict[int, float] | None = None) -> list[dict]:
  """Each row with its population's no-DP HR@10 and the loss against it in points (None without an inf run),
  and its clip-only HR@10 (`clip_only`: population -> HR@10) and what the clip alone loses (None without)."""
  baseline = {r['population']: r['hr@10'] for r in rows if not math.isfinite(r['epsilon'])}
  clip_only = clip_only or {}
  out = []
  for r in rows:
    reference, clipped = baseline.get(r['population']), clip_only.get(r['population'])
    loss = None if reference is None or r['hr@10'] is None else 100.0 * (reference - r['hr@10'])
    clip_loss = None if reference is None or clipped is None else 100.0 * (reference - clipped)
    out.append({**r, 'no_dp_hr@10': reference, 'loss_points': loss, 'clip_only_hr@10': clipped,
                'clip_points': clip_loss})
  return out


def write_outputs(rows: list[dict], output_dir: str) -> None:
  privacy_sweep.write_csv(os.path.join(output_dir, 'population_sweep.csv'), COLUMNS, rows)
  figure, axis = plt.subplots(figsize=(6, 4))
  for epsilon in sorted({r['epsilon'] for r in rows if math.isfinite(r['epsilon'])}):
    points = [r for r in rows if r['epsilon'] == epsilon and r['loss_points'] is not None]
    axis.plot([r['population'] for r in points], [r['loss_points'] for r in points], marker='o',
              label=f'epsilon {epsilon:g}')
  clipped = {r['population']: r['clip_points'] for r in rows if r['clip_points'] is not None}
  if clipped:
    axis.plot(sorted(clipped), [clipped[n] for n in sorted(clipped)], marker='x', linestyle=':', color='black',
              label='clip alone (no noise)')
  axis.axhline(2.0, linestyle='--', color='gray', label='2 points')
  axis.set_xscale('log')
  sizes = sorted({r['population'] for r in rows})
  axis.set_xticks(sizes, [f'{size:,}' for size in sizes])
  axis.minorticks_off()
  axis.set_ylim(bottom=0)
  axis.set_xlabel('users')
  axis.set_ylabel('HR@10 lost to DP (points)')
  axis.legend()
  plotting.save(figure, os.path.join(output_dir, 'population_sweep.png'))


def main(argv):
  logs.start(argv)
  base = train_federated.config_from_flags()
  try:
    sizes = parse_populations(_POPULATIONS.value)
    cohort_sampling(base.sampling, sizes[0], _COHORT.value)  # A bad --population_cohort, refused before any work.
    epsilons = privacy_sweep.parse_epsilons(privacy_sweep.EPSILONS.value)
    if _SOURCE.value:
      available = len(subsets.user_ids(os.path.join(_SOURCE.value, schema.CLIENTS_DB)))
      if sizes[-1] > available:
        raise ValueError(f'--populations: {sizes[-1]} users cannot be drawn from {_SOURCE.value}, which has '
                         f'{available}')
      populations = sizes
    else:
      populations = [population_config(size, base.seed) for size in sizes]
  except (ValueError, sqlite3.Error) as e:
    print(f'population_sweep: error: {e}', file=sys.stderr)
    return 2
  rows, clip_only = [], {}
  try:
    for population in populations:
      if _SOURCE.value:
        size, data_dir = population, drawn(_SOURCE.value, population, base.seed, _POP_DATA.value)
      else:
        size, data_dir = population.num_users, prepared(population, _POP_DATA.value)
      data = dataclasses.replace(base.data, data_dir=data_dir)
      at_size = dataclasses.replace(base, data=data, dp=dataclasses.replace(base.dp, target_delta=delta_for(size)),
                                    sampling=cohort_sampling(base.sampling, size, _COHORT.value),
                                    output_dir=os.path.join(base.output_dir, f'N_{size}'))
      configs = privacy_sweep.sweep_configs(at_size, epsilons)
      task = train_federated.build_task(configs[0][1])
      for epsilon, config in configs:
        final = train_federated.run(config, task)
        noise = privacy_sweep.noise_multiplier(config, epsilon)
        rate = dp.expected_clients(config.sampling, size) / size
        rows.append({'population': size, 'epsilon': epsilon, 'delta': config.dp.target_delta, 'sampling_rate': rate,
                     'noise_multiplier': noise, 'hr@10': final.get('hr@10'), 'ndcg@10': final.get('ndcg@10'),
                     'wall_seconds': final.get('wall_seconds')})
        print(f'N={size} epsilon={epsilon:g}: HR@10 {final.get("hr@10"):.4f}', flush=True)
      if _CLIP_ONLY.value:
        clip_only[size] = train_federated.run(clip_only_config(at_size), task).get('hr@10')
        print(f'N={size} clip only: HR@10 {clip_only[size]:.4f}', flush=True)
  except (ValueError, FileNotFoundError) as e:
    print(f'population_sweep: error: {e}', file=sys.stderr)
    return 2
  finally:
    runtime.stop_all_workers()
  rows = loss_rows(rows, clip_only)
  os.makedirs(base.output_dir, exist_ok=True)
  write_outputs(rows, base.output_dir)
  print(f'Wrote {base.output_dir}/population_sweep.csv and population_sweep.png')
  for r in rows:
    loss = '' if r['loss_points'] is None else f', {r["loss_points"]:+.1f} points against no DP'
    print(f'N={r["population"]:,} epsilon={r["epsilon"]:g} (delta {r["delta"]:.1e}): HR@10 {r["hr@10"]:.4f}{loss}')
  for size, hr in clip_only.items():
    row = next(r for r in rows if r['population'] == size)
    loss = '' if row['clip_points'] is None else f', {row["clip_points"]:+.1f} points against no DP'
    print(f'N={size:,} clip only (no noise, not private): HR@10 {hr:.4f}{loss}')
  return 0


if __name__ == '__main__':
  app.run(main)
