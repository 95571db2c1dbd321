r"""Trains one configuration under an attack at several malicious fractions, for each defence; plots the targets'
exposure and benign HR@10 against the fraction.

  python -m experiments.attack_sweep --flagfile=configs/attack_sweep_mf.flags \
      [--malicious_fractions=0,0.001,0.01,0.05] [--defences=none,row_bound,norm_bound]

Takes every train_federated flag: `--attack` and the target items
(`--num_target_items` or `--target_items`) are the attack's; a fraction of 0 is
the clean run (no attack, the same targets measured). Defences: `none`,
`norm_bound` (the flags' `--norm_bound` / `--adaptive_norm_bound`), `row_bound` (`--row_norm_bound`),
`trimmed_mean` (`--trim_fraction`) and `median` (the robust means), `dp` (the flags' `--dp` settings; their noise
as given); each alone. Runs go to
`<root_output_dir>/<experiment_name>/<defence>/fraction_<f>/` (each resumable
like any run); the sweep writes `sweep.csv` (per run: ER@10, its ratio to the
undefended clean run's, HR@10 / NDCG@10 and the HR@10 points lost against that
run, the median round time) and `sweep.png` beside them.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import logs, privacy_sweep, train_federated
from tff_rec import attacks, plotting, runtime, training_loop
from tff_rec.privacy import dp

FRACTIONS = flags.DEFINE_list('malicious_fractions', ['0', '0.001', '0.01', '0.05'],
                              'Malicious fractions of the population (0: the clean run).')
DEFENCES = flags.DEFINE_list('defences', ['none', 'row_bound'], 'Defences: none, norm_bound (the --norm_bound '
                             'flags), row_bound (--row_norm_bound), trimmed_mean (--trim_fraction), median, dp (the '
                             '--dp flags); each alone.')

NONE, NORM_BOUND, ROW_BOUND, DP = 'none', 'norm_bound', 'row_bound', 'dp'
TRIMMED_MEAN, MEDIAN = attacks.TRIMMED_MEAN, attacks.MEDIAN
KNOWN = (NONE, NORM_BOUND, ROW_BOUND, TRIMMED_MEAN, MEDIAN, DP)
COLUMNS = ('defence', 'malicious_fraction', 'malicious_users', 'er@10', 'er@10_ratio', 'hr@10', 'ndcg@10',
           'hr@10_lost_points', 'round_seconds', 'wall_seconds')


def parse_fractions(values: list[str]) -> list[float]:
  try:
    fractions = sorted({float(v) for v in values})
  except ValueError as e:
    raise ValueError(f'--malicious_fractions must be numbers, got {values}') from e
  if not fractions or any(not 0.0 <= f < 1.0 for f in fractions):
    raise ValueError(f'--malicious_fractions must be in [0, 1), got {values}')
  return fractions


def sweep_configs(base: train_federated.ExperimentConfig, fractions: list[float],
                  defences: list[str]) -> list[tuple[str, float, train_federated.ExperimentConfig]]:
  """One config per (defence, fraction): the base's attack at the fraction (none at 0), with the defence."""
  if base.attack.attack == attacks.NONE:
    raise ValueError('--attack must name the attack to sweep (fake_profiles or model_poisoning)')
  unknown = [d for d in defences if d not in KNOWN]
  if unknown or not defences:
    raise ValueError(f'--defences must be some of {", ".join(KNOWN)}, got {defences}')
  if NORM_BOUND in defences and not base.defence.norm_bound > 0:
    raise ValueError('--defences=norm_bound needs the bound: --norm_bound (and --adaptive_norm_bound)')
  if ROW_BOUND in defences and not base.defence.row_bound > 0:
    raise ValueError('--defences=row_bound needs the bound: --row_norm_bound')
  if DP in defences and not base.dp.enabled:
    raise ValueError('--defences=dp needs the DP settings: --dp and --noise_multiplier (or --target_epsilon)')
  out = []
  for defence in dict.fromkeys(defences):
    for fraction in fractions:
      attack = dataclasses.replace(base.attack, attack=base.attack.attack if fraction else attacks.NONE,
                                   malicious_fraction=fraction)
      config = dataclasses.replace(
          base, attack=attack,
          defence=defence_config(base.defence, defence),
          dp=base.dp if defence == DP else dataclasses.replace(base.dp, mechanism=dp.NONE),
          output_dir=os.path.join(base.output_dir, defence, f'fraction_{fraction:g}'))
      out.append((defence, fraction, config))
  return out


def defence_config(flags_defence: attacks.DefenceConfig, defence: str) -> attacks.DefenceConfig:
  """The flags' settings of `defence` alone (`norm_bound`: the per-user bound; `row_bound`: the per-row one;
  `trimmed_mean` / `median`: the robust mean, without a bound)."""
  if defence == NORM_BOUND:
    return dataclasses.replace(flags_defence, row_bound=0.0, robust_mean=NONE)
  if defence == ROW_BOUND:
    return attacks.DefenceConfig(row_bound=flags_defence.row_bound)
  if defence in (TRIMMED_MEAN, MEDIAN):
    return attacks.DefenceConfig(robust_mean=defence, trim_fraction=flags_defence.trim_fraction,
                                 robust_over=flags_defence.robust_over)
  return attacks.DefenceConfig()


def summarise(rows: list[dict]) -> list[dict]:
  """Each row with its ER@10 ratio to the undefended clean run's (floored at one user's share, so that a clean
  ER@10 of 0 gives a finite ratio) and the HR@10 points it lost against that run."""
  clean = next((r for r in rows if r['defence'] == NONE and r['malicious_fraction'] == 0), None)
  for row in rows:
    if clean is not None:
      floor = 1.0 / max(row.get('users') or 1.0, 1.0)
      row['er@10_ratio'] = row['er@10'] / max(clean['er@10'], floor)
      row['hr@10_lost_points'] = 100.0 * (clean['hr@10'] - row['hr@10'])
  return rows


def write_outputs(rows: list[dict], output_dir: str) -> None:
  privacy_sweep.write_csv(os.path.join(output_dir, 'sweep.csv'), COLUMNS, rows)
  figure, (exposure, quality) = plt.subplots(1, 2, figsize=(12, 4.5))
  fractions = sorted({r['malicious_fraction'] for r in rows})
  positions = {f: i for i, f in enumerate(fractions)}  # Evenly spaced: 0 has no place on a log axis.
  for defence in dict.fromkeys(r['defence'] for r in rows):
    points = [r for r in rows if r['defence'] == defence]
    xs = [positions[r['malicious_fraction']] for r in points]
    exposure.plot(xs, [r['er@10'] for r in points], 'o-', label=defence)
    quality.plot(xs, [r['hr@10'] for r in points], 'o-', label=defence)
  for axis, name in ((exposure, 'ER@10 of the target items (benign users)'), (quality, 'HR@10 (benign users)')):
    axis.set_xticks(range(len(fractions)), [f'{100 * f:g}%' for f in fractions])
    axis.set_xlabel('malicious fraction of the population')
    axis.set_ylabel(name)
    axis.legend(title='defence')
  plotting.save(figure, os.path.join(output_dir, 'sweep.png'))


def main(argv):
  logs.start(argv)
  base = train_federated.config_from_flags()
  try:
    configs = sweep_configs(base, parse_fractions(FRACTIONS.value), DEFENCES.value)
    tasks = {}
    for _, fraction, config in configs:  # Every configuration checked before any training.
      if fraction not in tasks:
        tasks[fraction] = train_federated.build_task(config)
      config.validate()
  except (ValueError, FileNotFoundError) as e:
    print(f'attack_sweep: error: {e}', file=sys.stderr)
    return 2
  rows = []
  try:
    for defence, fraction, config in configs:
      task = tasks[fraction]
      final = train_federated.run(config, task)
      malicious = len(getattr(task.train_data, 'malicious_ids', ()))  # `attacks.PoisonedPopulation`'s.
      times = [r['round_seconds'] for r in training_loop.read_history(config.output_dir) if 'round_seconds' in r]
      rows.append({**final, 'defence': defence, 'malicious_fraction': fraction, 'malicious_users': malicious,
                   'users': final.get('count'), 'round_seconds': float(np.median(times)) if times else None})
  finally:
    runtime.stop_all_workers()
  write_outputs(summarise(rows), base.output_dir)
  print(f'Wrote {base.output_dir}/sweep.csv and sweep.png')
  for row in rows:
    print(', '.join(f'{k}={row.get(k)}' for k in COLUMNS))
  return 0


if __name__ == '__main__':
  app.run(main)
