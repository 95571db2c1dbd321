"""The binaries' shared main: errors become one line on stderr and an exit status, never a traceback."""

from tff_rec import experiment
from tff_rec.privacy import distributed, dp


def _fails(error):
  def train(_):
    raise error
  return train


def test_bad_input_exits_2_before_training(capsys, tmp_path):
  def build():
    raise ValueError('--clip_norm must be > 0')
  trained = []
  assert experiment.main('prog', build, trained.append, str(tmp_path)) == 2
  assert capsys.readouterr().err == 'prog: error: --clip_norm must be > 0\n' and not trained


def test_a_drifting_distributed_dp_round_stops_the_run_with_one_line(capsys, tmp_path):
  status = experiment.main('prog', lambda: None, _fails(distributed.DriftError('distributed DP: 49 clients added '
                                                                               'noise shares')), str(tmp_path))
  err = capsys.readouterr().err
  assert status == 1 and err.count('\n') == 1 and 'Traceback' not in err
  assert err.startswith('prog: error: distributed DP: 49 clients') and 'end at the round before' in err


def test_dp_settings_that_cannot_work_exit_2_before_training(capsys, tmp_path):
  status = experiment.main('prog', lambda: None, _fails(dp.PrivacyConfigError('--target_epsilon=1e-05 cannot be met')),
                           str(tmp_path))
  assert status == 2 and capsys.readouterr().err == 'prog: error: --target_epsilon=1e-05 cannot be met\n'


def test_success_prints_the_results_table(capsys, tmp_path):
  final = {'hr@10': 0.5, 'ndcg@10': 0.25, 'rmse': None, 'mae': None, 'recall@20': 0.1, 'rounds': 2}
  assert experiment.main('prog', lambda: None, lambda _: final, str(tmp_path)) == 0
  out = capsys.readouterr().out
  assert out.startswith(f'Results ({tmp_path}/final_metrics.json):') and '0.5' in out
