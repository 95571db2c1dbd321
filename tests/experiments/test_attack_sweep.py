"""attack_sweep on tiny data: one run per (defence, malicious fraction), a CSV and a PNG."""

import csv
import os
import re

import pytest
from absl.testing import flagsaver

from experiments import attack_sweep
from tff_rec import attacks

SETTINGS = dict(rounds=2, clients_per_round=5, batch_size=8, embedding_dim=4, eval_every=2, checkpoint_every=2,
                eval_reconstruction_epochs=1, progress=False, group_metrics='none', attack='model_poisoning',
                num_target_items=1, norm_bound=0.05)

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


@pytest.mark.slow
def test_sweep_writes_one_row_per_defence_and_fraction(tiny_dataset, tmp_path):
  with flagsaver.flagsaver(data_dir=tiny_dataset, root_output_dir=str(tmp_path), experiment_name='sweep',
                           malicious_fractions=['0.2', '0'], defences=['none', 'norm_bound'], **SETTINGS):
    assert attack_sweep.main(['attack_sweep']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep.csv')))
  assert [(r['defence'], float(r['malicious_fraction']), int(r['malicious_users'])) for r in rows] == [
      ('none', 0.0, 0), ('none', 0.2, 9), ('norm_bound', 0.0, 0), ('norm_bound', 0.2, 9)]  # 9 join 36: 20%.
  clean = rows[0]
  assert float(clean['hr@10_lost_points']) == 0.0
  for r in rows:
    assert 0.0 <= float(r['er@10']) <= 1.0 and float(r['round_seconds']) > 0
    floor = max(float(clean['er@10']), 1.0 / 36)  # The ratio's floor: one test user of 36.
    assert float(r['er@10_ratio']) == pytest.approx(float(r['er@10']) / floor)
  assert sorted(os.listdir(tmp_path / 'sweep')) == ['none', 'norm_bound', 'sweep.csv', 'sweep.png']
  assert sorted(os.listdir(tmp_path / 'sweep' / 'none')) == ['fraction_0', 'fraction_0.2']


@pytest.mark.parametrize('overrides, message', [
    ({'attack': 'none'}, '--attack must name the attack to sweep'),
    ({'norm_bound': 0.0}, '--defences=norm_bound needs the bound'),
    ({'defences': ['none', 'krum']}, r"--defences must be some of none, norm_bound, row_bound, trimmed_mean, median, dp, got "
     r"\['none', "),
    ({'defences': ['row_bound']}, '--defences=row_bound needs the bound: --row_norm_bound'),
    ({'malicious_fractions': ['0', '1']}, r'--malicious_fractions must be in \[0, 1\)'),
    ({'target_items': ['nope'], 'num_target_items': 0}, '--target_items nope are not in the catalogue'),
])
def test_bad_sweeps_fail_before_training(tiny_dataset, tmp_path, capsys, overrides, message):
  settings = dict(SETTINGS, data_dir=tiny_dataset, root_output_dir=str(tmp_path), experiment_name='bad',
                  malicious_fractions=['0', '0.2'], defences=['none', 'norm_bound'])
  settings.update(overrides)
  with flagsaver.flagsaver(**settings):
    assert attack_sweep.main(['attack_sweep']) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not os.path.exists(tmp_path / 'bad')


def test_each_defence_runs_alone_with_the_flags_settings():
  flags_defence = attacks.DefenceConfig(norm_bound=0.5, row_bound=0.02, robust_mean=attacks.MEDIAN, trim_fraction=0.2,
                                        robust_over=attacks.TOUCHED)
  assert attack_sweep.defence_config(flags_defence, 'none') == attacks.DefenceConfig()
  assert attack_sweep.defence_config(flags_defence, 'row_bound') == attacks.DefenceConfig(row_bound=0.02)
  assert attack_sweep.defence_config(flags_defence, 'norm_bound') == attacks.DefenceConfig(
      norm_bound=0.5, trim_fraction=0.2, robust_over=attacks.TOUCHED)
  trimmed = attack_sweep.defence_config(flags_defence, 'trimmed_mean')
  assert trimmed == attacks.DefenceConfig(robust_mean=attacks.TRIMMED_MEAN, trim_fraction=0.2,
                                          robust_over=attacks.TOUCHED) and trimmed.trim == 0.2
  assert attack_sweep.defence_config(flags_defence, 'median').trim == 0.5
