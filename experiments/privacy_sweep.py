r"""Trains one configuration at several privacy budgets and plots quality and attack AUC against epsilon.

  python -m experiments.privacy_sweep --flagfile=configs/dp_fedrecon_mf_eps8.flags --epsilons=1,2,4,8,inf

Takes every train_federated flag. For each epsilon the noise multiplier is
calibrated to it over --rounds (--noise_multiplier is ignored); `inf` trains
without DP. Runs go to `<root_output_dir>/<experiment_name>/eps_<epsilon>/`
(each resumable like any run); the sweep writes `sweep.csv` and `sweep.png`
(HR@10 or RMSE against epsilon, with the membership-inference AUC) beside them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys

from absl import app, flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import common_flags, logs, train_federated
from tff_rec import atomic, experiment, runtime
from tff_rec.privacy import dp

_EPSILONS = flags.DEFINE_list('epsilons', ['1', '2', '4', '8', 'inf'], 'Privacy budgets (inf: no DP).')

COLUMNS = ('epsilon', 'noise_multiplier', 'hr@10', 'ndcg@10', 'rmse', 'mae', 'mia/auc', 'mia/advantage',
           'epsilon_spent', 'rounds', 'wall_seconds')


def parse_epsilons(values: list[str]) -> list[float]:
  try:
    epsilons = [float(v) for v in values]
  except ValueError as e:
    raise ValueError(f'--epsilons must be numbers or inf, got {values}') from e
  if not epsilons or any(not e > 0 for e in epsilons):
    raise ValueError(f'--epsilons must be > 0, got {values}')
  return sorted(set(epsilons))


def sweep_configs(base: train_federated.ExperimentConfig,
                  epsilons: list[float]) -> list[tuple[float, train_federated.ExperimentConfig]]:
  """One config per epsilon: calibrated DP (the base's mechanism, gaussian_adaptive if none), or none at inf."""
  mechanism = base.dp.mechanism if base.dp.enabled else dp.GAUSSIAN_ADAPTIVE
  out = []
  for epsilon in epsilons:
    private = dataclasses.replace(base.dp, mechanism=mechanism, noise_multiplier=0.0, target_epsilon=epsilon)
    config = dataclasses.replace(
        base, dp=private if math.isfinite(epsilon) else dataclasses.replace(base.dp, mechanism=dp.NONE),
        output_dir=os.path.join(base.output_dir, f'eps_{epsilon:g}'))
    out.append((epsilon, config))
  return out


def write_outputs(rows: list[dict], output_dir: str, metric: str) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  atomic.write_bytes(os.path.join(output_dir, 'sweep.csv'), text.getvalue().encode())
  finite = [r for r in rows if math.isfinite(r['epsilon'])]
  figure, axis = plt.subplots(figsize=(6, 4))
  axis.plot([r['epsilon'] for r in finite], [r[metric] for r in finite], 'o-', label=f'{metric} (DP)')
  for r in rows:
    if not math.isfinite(r['epsilon']):
      axis.axhline(r[metric], linestyle='--', color='gray', label=f'{metric} (no DP)')
  for r in finite:
    if r.get('mia/auc') is not None:
      axis.annotate(f"AUC {r['mia/auc']:.2f}", (r['epsilon'], r[metric]), textcoords='offset points', xytext=(4, 6))
  axis.set_xscale('log')
  axis.set_xlabel('epsilon (delta fixed)')
  axis.set_ylabel(metric)
  axis.legend()
  figure.tight_layout()
  with atomic.replacing(os.path.join(output_dir, 'sweep.png'), '.png') as temp:
    figure.savefig(temp, format='png')
  plt.close(figure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.configure_logging()
  base = train_federated.config_from_flags()
  try:
    epsilons = parse_epsilons(_EPSILONS.value)
    configs = sweep_configs(base, epsilons)
    task = train_federated.build_task(configs[0][1])
    for _, config in configs:
      config.validate()
  except (ValueError, FileNotFoundError) as e:
    print(f'privacy_sweep: error: {e}', file=sys.stderr)
    return 2
  rows = []
  try:
    for epsilon, config in configs:
      final = train_federated.run(config, task)
      hparams = experiment.read_hparams(config.output_dir)
      rows.append({**final, 'epsilon': epsilon, 'epsilon_spent': final.get('epsilon'),
                   'noise_multiplier': hparams['dp']['noise_multiplier'] if math.isfinite(epsilon) else 0.0})
  finally:
    runtime.stop_all_workers()
  metric = 'hr@10' if rows[0].get('hr@10') is not None else 'rmse'
  write_outputs(rows, base.output_dir, metric)
  print(f'Wrote {base.output_dir}/sweep.csv and sweep.png')
  for row in rows:
    print(', '.join(f'{k}={row.get(k)}' for k in COLUMNS))
  return 0


if __name__ == '__main__':
  app.run(main)
