r"""Trains one configuration at several privacy budgets and plots quality and attack AUC against epsilon.

  python -m experiments.privacy_sweep --flagfile=configs/dp_fedrecon_mf_eps8.flags --epsilons=1,2,4,8,inf

Takes every train_federated flag. For each epsilon the noise multiplier is
calibrated to it over --rounds (--noise_multiplier is ignored); `inf` trains
without DP. Runs go to `<root_output_dir>/<experiment_name>/eps_<epsilon>/`
(each resumable like any run); the sweep writes `sweep.csv` and `sweep.png`
(HR@10 or RMSE against epsilon, with the membership-inference AUC) beside them,
and, from the runs' metrics by group (`--group_metrics`), `sweep_groups.csv`:
each group's metric per epsilon and its loss against the run without DP (with
`inf` among the epsilons), which the plot's lower panels show per attribute.
Who pays for privacy: DP costs some groups more than others (Bagdasaryan et
al., NeurIPS 2019).
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
from tff_rec import atomic, experiment, plotting, runtime
from tff_rec.evaluation import groups
from tff_rec.privacy import dp

EPSILONS = flags.DEFINE_list('epsilons', ['1', '2', '4', '8', 'inf'], 'Privacy budgets (inf: no DP).')

COLUMNS = ('epsilon', 'noise_multiplier', 'hr@10', 'ndcg@10', 'rmse', 'mae', 'mia/auc', 'mia/advantage',
           'epsilon_spent', 'rounds', 'wall_seconds')
GROUP_COLUMNS = ('epsilon', 'attribute', 'group', 'users', 'small', 'metric', 'value', 'no_dp', 'loss')


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


def noise_multiplier(config: train_federated.ExperimentConfig, epsilon: float) -> float:
  """The noise multiplier a finished sweep run was calibrated to (0 without DP)."""
  return experiment.read_hparams(config.output_dir)['dp']['noise_multiplier'] if math.isfinite(epsilon) else 0.0


def group_rows(rows: list[dict], metric: str) -> list[dict]:
  """Each (epsilon, group): the group's `metric`, its value without DP and the loss: how much worse than without
  DP (HR@10: no-DP minus DP; RMSE: DP minus no-DP), empty without an `inf` run or for a group without queries."""
  lower_is_better = metric == 'rmse'
  baseline = next((r for r in rows if not math.isfinite(r['epsilon'])), None)
  no_dp = dict(groups.table(baseline)) if baseline else {}
  out = []
  for row in rows:
    for name, values in groups.table(row):
      attribute, _, value = name[len(groups.PREFIX):].partition('/')
      reference = no_dp.get(name, {}).get(metric)
      current = values.get(metric)
      loss = None
      if current is not None and reference is not None:
        loss = current - reference if lower_is_better else reference - current
      out.append({'epsilon': row['epsilon'], 'attribute': attribute, 'group': value, 'users': int(values['users']),
                  'small': groups.small(values['users']), 'metric': metric, 'value': current, 'no_dp': reference,
                  'loss': loss})
  return out


def write_csv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
  """`rows` as CSV with `columns` (other keys ignored), written atomically."""
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=columns, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  atomic.write_bytes(path, text.getvalue().encode())


def _epsilon_axis(axis, finite: list[dict]) -> None:
  """A log scale ticked at the sweep's budgets, written as numbers."""
  axis.set_xscale('log')
  axis.set_xticks([r['epsilon'] for r in finite], [f"{r['epsilon']:g}" for r in finite])
  axis.minorticks_off()


def write_outputs(rows: list[dict], output_dir: str, metric: str) -> None:
  by_group = group_rows(rows, metric)
  write_csv(os.path.join(output_dir, 'sweep.csv'), COLUMNS, rows)
  write_csv(os.path.join(output_dir, 'sweep_groups.csv'), GROUP_COLUMNS, by_group)
  finite = [r for r in rows if math.isfinite(r['epsilon'])]
  attributes = list(dict.fromkeys(r['attribute'] for r in by_group if r['loss'] is not None))
  columns = max(1, min(3, len(attributes)))
  grid = 1 + math.ceil(len(attributes) / columns)
  figure = plt.figure(figsize=(6 * columns, 4 * grid))
  axis = figure.add_subplot(grid, 1, 1)
  axis.plot([r['epsilon'] for r in finite], [r[metric] for r in finite], 'o-', label=f'{metric} (DP)')
  for r in rows:
    if not math.isfinite(r['epsilon']):
      axis.axhline(r[metric], linestyle='--', color='gray', label=f'{metric} (no DP)')
  for r in finite:
    if r.get('mia/auc') is not None:
      axis.annotate(f"AUC {r['mia/auc']:.2f}", (r['epsilon'], r[metric]), textcoords='offset points', xytext=(4, 6))
  _epsilon_axis(axis, finite)
  axis.set_xlabel('epsilon (delta fixed)')
  axis.set_ylabel(metric)
  axis.legend()
  for i, attribute in enumerate(attributes):  # Who pays for privacy: each group's loss against no DP.
    axis = figure.add_subplot(grid, columns, columns + 1 + i)
    for group in dict.fromkeys(r['group'] for r in by_group if r['attribute'] == attribute):
      points = [r for r in by_group if r['attribute'] == attribute and r['group'] == group and
                math.isfinite(r['epsilon']) and r['loss'] is not None]
      if points:
        users = points[0]['users']
        axis.plot([r['epsilon'] for r in points], [r['loss'] for r in points], marker='o',
                  linestyle=':' if groups.small(users) else '-', label=f'{group} ({users})')
    axis.axhline(0.0, color='gray', linewidth=0.5)
    _epsilon_axis(axis, finite)
    axis.set_xlabel('epsilon')
    axis.set_ylabel(f'{metric} lost to DP')
    axis.set_title(f'by {attribute} (users; dotted: fewer than {groups.MIN_USERS})')
    axis.legend(fontsize='x-small', ncol=2)
  plotting.save(figure, os.path.join(output_dir, 'sweep.png'))


def main(argv):
  logs.start(argv)
  base = train_federated.config_from_flags()
  try:
    epsilons = parse_epsilons(EPSILONS.value)
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
      rows.append({**final, 'epsilon': epsilon, 'epsilon_spent': final.get('epsilon'),
                   'noise_multiplier': noise_multiplier(config, epsilon)})
  finally:
    runtime.stop_all_workers()
  metric = 'hr@10' if rows[0].get('hr@10') is not None else 'rmse'
  write_outputs(rows, base.output_dir, metric)
  print(f'Wrote {base.output_dir}/sweep.csv, sweep_groups.csv and sweep.png')
  for row in rows:
    print(', '.join(f'{k}={row.get(k)}' for k in COLUMNS))
  worst = sorted((r for r in group_rows(rows, metric) if r['loss'] is not None and not r['small']),
                 key=lambda r: (r['epsilon'], -r['loss']))
  for epsilon in dict.fromkeys(r['epsilon'] for r in worst if math.isfinite(r['epsilon'])):
    most = [r for r in worst if r['epsilon'] == epsilon][:3]
    print(f'epsilon {epsilon:g}: the groups losing most {metric}: ' + ', '.join(
        f"{r['attribute']}={r['group']} ({r['users']} users) {r['loss']:+.4f}" for r in most))
  return 0


if __name__ == '__main__':
  app.run(main)
