"""train_federated end to end on tiny data: outputs, resume, determinism, bad flags."""

import csv
import json
import os
import shutil

import pytest
from absl.testing import flagsaver

from experiments import train_federated
from tff_rec import training_loop

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


def _run(tiny_dataset, out, name, **overrides):
  settings = dict(data_dir=tiny_dataset, root_output_dir=str(out), experiment_name=name, rounds=2,
                  clients_per_round=3, batch_size=8, embedding_dim=4, eval_every=1, checkpoint_every=1,
                  eval_reconstruction_epochs=1, progress=False, group_metrics='none')
  settings.update(overrides)
  with flagsaver.flagsaver(**settings):
    config = train_federated.config_from_flags()
    return train_federated.run(config, train_federated.build_task(config))


@pytest.mark.slow
@pytest.mark.parametrize('overrides', [
    {'group_metrics': 'all'},  # The shard process (TFF's runtime), 3 users in one shard.
    {'view': 'cross_silo', 'clients_per_round': 2, 'group_metrics': 'all'},  # Each sampled platform a TFF client.
    {'algorithm': 'fed_avg', 'server_optimizer': 'yogi', 'server_learning_rate': 0.01, 'client_weighting': 'uniform'},
    {'algorithm': 'fed_prox', 'view': 'cross_silo', 'clients_per_round': 2},
    {'model': 'two_tower', 'group_metrics': 'all'},  # On the shard process.
    {'model': 'two_tower', 'dp': 'gaussian_fixed', 'noise_multiplier': 0.5, 'clip_norm': 0.1,
     'row_norm_bound': 0.05},  # DP with each user's rows clipped first.
    {'secure_aggregation': True, 'row_norm_bound': 0.05},  # Each user's rows clipped before the secure sum.
    {'compression': True, 'embedding_dim': 160},  # 151 x 160 item values > 20,000: quantized.
    {'dp': 'tree', 'noise_multiplier': 0.5, 'epoch_sampling': True, 'clients_per_round': 20},  # 1 epoch = 1 round.
    {'dp': 'gaussian_fixed', 'noise_multiplier': 0.5, 'view': 'cross_silo', 'clients_per_round': 2},
    {'dp': 'distributed', 'target_epsilon': 50.0, 'clients_per_round': 12},  # Calibrated by its own accounting.
    {'algorithm': 'fed_als', 'group_metrics': 'all', 'eval_users': 5},  # Evaluated on a sample of 5 users.
    # Malicious users joined, ER@10 reported; the robust mean: every user's update collected, each item row trimmed
    # over the users touching it (the per-user norm bound end to end: test_attack_sweep).
    {'attack': 'model_poisoning', 'malicious_fraction': 0.2, 'num_target_items': 2, 'robust_mean': 'trimmed_mean',
     'trim_fraction': 0.2, 'robust_mean_over': 'touched', 'row_norm_bound': 0.1, 'users_per_shard': 2},
    {'algorithm': 'fed_als', 'dp': 'gaussian_adaptive', 'noise_multiplier': 0.5, 'clients_per_round': 20,
     'als_item_prior': True},
    {'model': 'sequence_two_tower', 'algorithm': 'fed_avg', 'max_history': 5, 'dp': 'gaussian_fixed',
     'noise_multiplier': 0.5, 'clip_norm': 0.1, 'group_metrics': 'all'},  # DP-FedAvg of the whole model.
], ids=['shards', 'cross_silo', 'fed_avg', 'fed_prox_cross_silo', 'two_tower', 'dp_two_tower', 'secure_aggregation',
        'compression', 'tree', 'dp_cross_silo', 'distributed_dp', 'fed_als', 'attack', 'dp_fed_als', 'dp_sequence'])
# (One TFF client per user, --users_per_shard=1: tests/federated/test_process.py, equal to any shard size; DP of MF
# by a calibrated budget: test_privacy_budget_calibrates_noise_and_stops_the_run.)
def test_two_rounds_write_every_output(tiny_dataset, tmp_path, overrides):
  final = _run(tiny_dataset, tmp_path, 'smoke', **overrides)
  run_dir = tmp_path / 'smoke'
  expected = ['checkpoints', 'final_metrics.json', 'hparams.json', 'learning_curve.png', 'metrics.csv', 'tensorboard']
  expected += ['privacy_ledger.json'] if 'dp' in overrides else []
  expected += ['model_state.npz']  # What export reads.
  assert sorted(os.listdir(run_dir)) == sorted(expected)
  written = json.loads((run_dir / 'final_metrics.json').read_text())
  for key in ('rmse', 'mae', 'hr@10', 'ndcg@10', 'recall@20', 'rounds', 'wall_seconds'):
    assert key in written
  assert written['rounds'] == 2 and 0.0 <= written['hr@10'] <= 1.0 and written == pytest.approx(final)
  assert 0.0 <= written['mia/auc'] <= 1.0 and 0.0 <= written['mia/advantage'] <= 1.0  # The audit.
  rows = list(csv.DictReader(open(run_dir / 'metrics.csv')))
  assert [r['key'] for r in rows] == ['1', '2'] and 'val/hr@10' in rows[0]
  # Metrics by group (--group_metrics=all: this data has every attribute), at test and at validation; the other
  # runs leave them out (their evaluation computations are the same but for the groups' sums).
  for attribute in ('activity', 'item_popularity', 'gender', 'age', 'occupation', 'platform'):
    by_group = [k for k in written if k.startswith(f'by_{attribute}/') and k.endswith('/users')]
    assert bool(by_group) == (overrides.get('group_metrics') == 'all'), attribute
    assert any(k.startswith(f'val/by_{attribute}/') for k in rows[0]) == bool(by_group), attribute
  assert json.loads((run_dir / 'hparams.json').read_text())['loop']['rounds'] == 2
  if 'eval_users' in overrides:  # Of 36 test and 4 held-out users.
    assert written['count'] == 5 and float(rows[0]['val/count']) == 5 and written['heldout_users/count'] == 4
  else:
    assert written['count'] == 36  # Every training user's test query.
  assert ('er@10' in written and 'val/er@10' in rows[0]) == ('attack' in overrides)
  if 'attack' in overrides:  # 9 malicious users joined the 36: 20%.
    assert 0.0 <= written['er@10'] <= 1.0 and 'heldout_users/er@10' in written
    # The robust mean: every user taking part collected (3 a round), 0 trimmed at 20%, their norms reported.
    assert float(rows[0]['aggregator/participants']) == 3 and float(rows[0]['aggregator/trimmed_each_end']) == 0
    assert 0.0 < float(rows[0]['aggregator/update_norm_median']) <= float(rows[0]['aggregator/update_norm_max'])
  if 'compression' in overrides:  # 8-bit item table up, float32 down.
    assert float(rows[0]['communication/upload_bytes_per_client']) < 0.4 * float(
        rows[0]['communication/download_bytes_per_client'])
  if overrides.get('dp') in ('gaussian_fixed', 'gaussian_adaptive', 'tree'):  # DP's clip in force, also with a row bound.
    assert float(rows[0]['aggregator/clip_norm']) > 0
  if 'dp' in overrides:
    ledger = json.loads((run_dir / 'privacy_ledger.json').read_text())
    tree = overrides['dp'] == 'tree'
    assert ledger['rounds'] == 2 and ledger['sampling'] == ('epochs' if tree else 'uniform')
    if overrides.get('view') == 'cross_silo':  # Platforms sampled (2 of 3), every user clipped on its own ...
      assert ledger['population'] == 3 and 'cross-silo' in ledger['unit_of_privacy']
      assert float(rows[0]['clients']) > 3  # The round's clients are the sampled platforms' users.
      # ... and no amplification claimed: every round a plain Gaussian mechanism.
      assert 'PoissonSampledDpEvent(sampling_probability=1.0' in ledger['dp_event'] and ledger['accounting_note']
    elif overrides['dp'] == 'distributed':  # Its own accounting (Skellam, Wang et al.'s sampling bound).
      assert 'distributed Skellam' in ledger['dp_event'] and 'Theorem 9' in ledger['dp_event']
      assert written['epsilon'] == pytest.approx(50.0, rel=1e-2) and written['epsilon'] <= 50.0  # Calibrated.
    else:
      assert ('SingleEpochTreeAggregation' if tree else 'SampledWithoutReplacement') in ledger['dp_event']
    assert 0 < float(rows[0]['privacy/epsilon_rdp']) < float(rows[1]['privacy/epsilon_rdp']) == written['epsilon']


@pytest.mark.slow
def test_privacy_budget_calibrates_noise_and_stops_the_run(tiny_dataset, tmp_path):
  final = _run(tiny_dataset, tmp_path, 'calibrated', dp='gaussian_fixed', target_epsilon=5.0, rounds=3)
  hparams = json.loads((tmp_path / 'calibrated' / 'hparams.json').read_text())
  assert hparams['dp']['noise_multiplier'] > 0 and final['rounds'] == 3
  assert final['epsilon'] == pytest.approx(5.0, rel=1e-2)
  # A fixed noise multiplier that cannot afford 3 rounds at epsilon 5: the run stops, and says how far it got.
  stopped = _run(tiny_dataset, tmp_path, 'stopped', dp='gaussian_fixed', target_epsilon=5.0, rounds=3,
                 noise_multiplier=hparams['dp']['noise_multiplier'] * 0.8)
  assert stopped['rounds'] < 3 and stopped['epsilon'] <= 5.0


@pytest.mark.slow
def test_pld_accountant_calibrates_and_reports_its_own_epsilon(tiny_dataset, tmp_path):
  poisson = dict(dp='gaussian_fixed', target_epsilon=2.0, rounds=2, clients_per_round=0, client_sampling_rate=0.2)
  final = _run(tiny_dataset, tmp_path, 'pld', accountant='pld', **poisson)
  ledger = json.loads((tmp_path / 'pld' / 'privacy_ledger.json').read_text())
  assert ledger['accountant'] == 'pld' and final['epsilon'] == ledger['epsilon_pld'] == pytest.approx(2.0, rel=1e-2)
  # The same budget by RDP (the looser bound) needs more noise; the PLD run's RDP epsilon is over the budget.
  pld_noise = json.loads((tmp_path / 'pld' / 'hparams.json').read_text())['dp']['noise_multiplier']
  # (An RDP-calibrated run: test_privacy_budget_calibrates_noise_and_stops_the_run; RDP's noise above PLD's for one
  # budget: tests/privacy/test_dp.py.)
  assert ledger['noise_multiplier'] == pld_noise and final['epsilon_rdp'] > 2.0


@pytest.mark.slow
@pytest.mark.parametrize('overrides', [
    {},
    # Every user's rounding and noise share drawn under (seed, round, user): a resumed run draws the same.
    {'dp': 'distributed', 'noise_multiplier': 1.0, 'clients_per_round': 12, 'users_per_shard': 5},
], ids=['plain', 'distributed_dp'])
def test_resume_reaches_the_same_metrics_and_same_seed_same_metrics(tiny_dataset, tmp_path, overrides):
  straight = _run(tiny_dataset, tmp_path, 'straight', rounds=3, **overrides)
  _run(tiny_dataset, tmp_path, 'resumed', rounds=2, **overrides)  # "Killed" after round 2 ...
  resumed = _run(tiny_dataset, tmp_path, 'resumed', rounds=3, **overrides)  # ... and started again.
  for metrics in (straight, resumed):
    metrics.pop('wall_seconds')
  assert resumed == straight
  rows = list(csv.DictReader(open(tmp_path / 'resumed' / 'metrics.csv')))
  assert [r['key'] for r in rows] == ['1', '2', '3']
  # The plotted history spans both invocations.
  assert [h['round'] for h in training_loop.read_history(str(tmp_path / 'resumed'))] == [1.0, 2.0, 3.0]


def test_killed_cosine_run_resumes_on_its_schedule(tiny_dataset, tmp_path):
  """A run with a decaying server rate killed after round 2's checkpoint (its round-3 checkpoint and final metrics
  never written) and started again with the same flags ends as the uninterrupted run: the step count is state."""
  settings = dict(rounds=3, server_lr_schedule='cosine', server_learning_rate=2.0, client_weighting='uniform')
  straight = _run(tiny_dataset, tmp_path, 'cosine', **settings)
  rows = list(csv.DictReader(open(tmp_path / 'cosine' / 'metrics.csv')))
  shutil.rmtree(tmp_path / 'cosine' / 'checkpoints' / 'program_state_3')
  (tmp_path / 'cosine' / 'final_metrics.json').unlink()
  resumed = _run(tiny_dataset, tmp_path, 'cosine', **settings)
  again = list(csv.DictReader(open(tmp_path / 'cosine' / 'metrics.csv')))
  assert again[:2] == rows[:2] and again[2]['key'] == '3'  # Rounds 1-2 (and their timings) not run again.
  assert again[2]['round_seconds'] != rows[2]['round_seconds']  # Round 3 was.
  for metrics in (straight, resumed):
    metrics.pop('wall_seconds')
  assert resumed == straight
  constant = _run(tiny_dataset, tmp_path, 'constant', **dict(settings, server_lr_schedule='constant'))
  assert constant['hr@10'] != straight['hr@10'] or constant['ndcg@10'] != straight['ndcg@10']


@pytest.mark.parametrize('overrides, message', [
    ({'algorithm': 'fed_prox', 'proximal_strength': 0.0}, 'needs --proximal_strength > 0'),
    ({'model': 'two_tower', 'objective': 'rating'},
     r'^--model=two_tower trains --objective=implicit --view=cross_device \(got '),
    ({'model': 'two_tower', 'view': 'cross_silo'}, '--model=two_tower trains --objective=implicit --view=cross_device'),
    ({'model': 'two_tower', 'algorithm': 'fed_avg'}, r'--algorithm=fed_avg \(FedAvg with a global user table\) trains '
     '--model=mf'),
    ({'model': 'sequence_two_tower'}, r'--algorithm=fed_recon \(Federated Reconstruction.*\) trains '
     '--model=mf\|two_tower'),
    ({'model': 'sequence_two_tower', 'algorithm': 'fed_avg', 'dp': 'distributed', 'noise_multiplier': 1.0},
     r'--dp=distributed with --algorithm=fed_avg .*: the sequence two-tower takes central DP.*it takes --dp=none\|gaussian_fixed\|gaussian_adaptive'),
    ({'dp': 'gaussian_fixed'}, 'needs --noise_multiplier > 0, or --target_epsilon'),
    ({'secure_aggregation': True, 'dp': 'gaussian_fixed', 'noise_multiplier': 1.0}, 'use --dp=distributed'),
    ({'dp': 'distributed', 'noise_multiplier': 1.0, 'clients_per_round': 0, 'client_sampling_rate': 0.3},
     '--dp=distributed needs fixed-size cohorts'),
    ({'dp': 'distributed', 'noise_multiplier': 1.0, 'view': 'cross_silo'},
     r'^--dp=distributed with --algorithm=fed_recon --view=cross_silo: a platform clips each of its users.*; it '
     r'takes --dp=none\|gaussian_fixed\|gaussian_adaptive$'),
    ({'dp': 'tree', 'noise_multiplier': 1.0}, 'each user at most once per tree: use --epoch_sampling'),
    ({'dp': 'gaussian_fixed', 'noise_multiplier': 1.0, 'epoch_sampling': True}, 'not --epoch_sampling'),
    ({'dp': 'gaussian_fixed', 'noise_multiplier': 1.0, 'accountant': 'pld'},
     '--accountant=pld: .* Poisson-sampled Gaussian.*--clients_per_round=3: use --accountant=rdp'),
    ({'dp': 'tree', 'noise_multiplier': 1.0, 'epoch_sampling': True, 'accountant': 'pld'},
     'got --dp=tree .* use --accountant=rdp'),

    ({'dp': 'gaussian_fixed', 'target_epsilon': 1e-5}, '--target_epsilon=1e-05 cannot be met: even a noise'),
    ({'dp': 'gaussian_adaptive', 'noise_multiplier': 1.0}, 'needs an expected cohort of more than 10 clients'),
    ({'algorithm': 'fed_als', 'objective': 'rating'},
     r'^--algorithm=fed_als \(federated implicit ALS\) trains --model=mf --objective=implicit --view=cross_device '
     r'\(got --model=mf --objective=rating --view=cross_device\)$'),
    ({'algorithm': 'fed_als', 'view': 'cross_silo'}, r'--algorithm=fed_als .*--view=cross_device \(got .*cross_silo'),
    ({'algorithm': 'fed_als', 'dp': 'tree', 'noise_multiplier': 1.0, 'epoch_sampling': True},
     r'^--dp=tree with --algorithm=fed_als --view=cross_device: .*; it takes --dp=none\|gaussian_fixed\|'
     r'gaussian_adaptive$'),
    ({'algorithm': 'fed_als', 'als_alpha': 0.0}, '--als_alpha and --als_regularization must be > 0'),
    ({'als_item_prior': True}, '--als_item_prior is a prior of --algorithm=fed_als.s item step, not of fed_recon'),
    ({'algorithm': 'fed_als', 'als_item_prior': True, 'als_prior_regularization': 0.0},
     '--als_prior_regularization must be > 0'),
    ({'algorithm': 'fed_als', 'server_lr_schedule': 'cosine'}, '--algorithm=fed_als has none'),
    ({'item_text_features': True}, r'--item_text_features feeds .*two-tower models.*--als_item_prior; this run has '
     'neither'),
    ({'algorithm': 'fed_als', 'als_item_prior': True, 'item_text_features': True},
     'no title vector for 150 of 150 items .*prepare it again with --item_text_encoder=glove'),
    ({'server_lr_final_fraction': 0.1}, 'not of a constant rate'),
    ({'server_lr_schedule': 'linear', 'server_lr_final_fraction': 2.0}, r'must be in \[0, 1\], got 2.0'),
    ({'clients_per_round': 0}, 'set exactly one of --clients_per_round'),
    ({'clients_per_round': 1000}, 'exceeds the 36 training clients'),
    ({'client_learning_rate': 0.0}, 'client_learning_rate must be > 0'),
    ({'data_dir': '/nonexistent'}, 'does not exist; prepare it'),
    ({'export_dir': '/tmp/never', 'top_k': 0}, '--top_k must be >= 1'),
    ({'compression': True, 'dp': 'gaussian_fixed', 'noise_multiplier': 1.0}, '--compression is not composed'),
    ({'users_per_shard': 0}, '--users_per_shard must be >= 1, got 0'),
    ({'shard_examples': -1}, r'--shard_examples must be >= 0 \(0: shards of --users_per_shard users\), got -1'),
    ({'eval_users': -1}, r'--eval_users must be >= 0 \(0: every user\), got -1'),
    ({'group_metrics': 'activity,colour'}, r"^--group_metrics: unknown \['colour'\] \(known: \['activity', "),
    ({'engine': 'vectorized'}, r'^--engine=vectorized was removed: every configuration runs on the one .*drop '
     'the flag$'),
    ({'engine': 'tff'}, r'^--engine=tff was removed: '),
    ({'users_per_shard': 4}, r'--users_per_shard=4 is larger than a round.s cohort \(--clients_per_round=3\)'),
    ({'algorithm': 'fed_avg', 'dp': 'gaussian_fixed', 'noise_multiplier': 1.0},
     '^--dp=gaussian_fixed with --algorithm=fed_avg --view=cross_device: its global user table holds a row per user'),
    ({'attack': 'fake_profiles', 'malicious_fraction': 1.0, 'num_target_items': 1},
     r'--malicious_fraction must be in \[0, 1\), got 1.0'),
    ({'attack': 'model_poisoning', 'malicious_fraction': 0.1, 'target_items': ['nope']},
     r'--target_items nope are not in the catalogue \(150 items'),
    ({'attack': 'model_poisoning', 'malicious_fraction': 0.1, 'num_target_items': 1, 'algorithm': 'fed_als'},
     'fed_als uploads ALS statistics'),
    ({'attack': 'fake_profiles', 'malicious_fraction': 0.1, 'num_target_items': 1, 'view': 'cross_silo'},
     'not --view=cross_silo'),
    ({'attack': 'model_poisoning', 'malicious_fraction': 0.1, 'num_target_items': 1, 'model': 'two_tower'},
     'for --model=two_tower --algorithm=fed_recon use its explicit boosting variant'),
    ({'norm_bound': 1.0, 'dp': 'gaussian_fixed', 'noise_multiplier': 1.0}, '--norm_bound is DP.s clip without noise'),
    ({'robust_mean': 'median', 'secure_aggregation': True}, '--robust_mean=median needs every user.s update at the '
     'server: not with --dp, --secure_aggregation'),
    ({'robust_mean': 'trimmed_mean', 'clients_per_round': 0, 'client_sampling_rate': 0.1},
     '--robust_mean=trimmed_mean collects a fixed cohort of users: it takes --clients_per_round'),
    ({'robust_mean': 'trimmed_mean', 'trim_fraction': 0.5}, r'--trim_fraction must be in \(0, 0.5\) '
     r'\(--robust_mean=median for the median\), got 0.5'),
])
def test_bad_flags_fail_before_training(tiny_dataset, tmp_path, overrides, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    _run(tiny_dataset, tmp_path, 'bad', **overrides)
  assert not os.path.exists(tmp_path / 'bad' / 'metrics.csv')


def test_checkpoints_of_another_configuration_are_a_clear_error(tiny_dataset, tmp_path):
  _run(tiny_dataset, tmp_path, 'changed', rounds=1)
  hparams = (tmp_path / 'changed' / 'hparams.json').read_text()
  # Another state shape, and the same shapes with another setting (which would otherwise resume silently).
  for overrides, named in (({'embedding_dim': 8}, 'embedding_dim: 4 -> 8'), ({'l2': 0.5}, 'l2: 0.0 -> 0.5')):
    with pytest.raises(training_loop.IncompatibleCheckpointError,
                       match=f'checkpoints in .* are of a run with other settings \\({named}\\).*--experiment_name'):
      _run(tiny_dataset, tmp_path, 'changed', rounds=2, **overrides)
    assert (tmp_path / 'changed' / 'checkpoints' / 'program_state_1').exists()  # Nothing written is lost.
    assert (tmp_path / 'changed' / 'hparams.json').read_text() == hparams
  # A decaying server rate spans --rounds: a cosine run cannot be extended by resuming it with more rounds.
  _run(tiny_dataset, tmp_path, 'cosine', rounds=1, server_lr_schedule='cosine')
  with pytest.raises(training_loop.IncompatibleCheckpointError, match='server_lr_schedule.*rounds.* 1 -> 2'):
    _run(tiny_dataset, tmp_path, 'cosine', rounds=2, server_lr_schedule='cosine')
  # Without the run's hparams.json, the state shapes are still checked.
  (tmp_path / 'changed' / 'hparams.json').unlink()
  with pytest.raises(training_loop.IncompatibleCheckpointError, match='do not fit this run.s state.*--experiment_name'):
    _run(tiny_dataset, tmp_path, 'changed', rounds=2, embedding_dim=8)


@pytest.mark.slow
def test_a_movielens_1m_format_dataset_trains_exports_and_serves(tmp_path):
  """The binaries take a new dataset unchanged: a small archive in ml-1m.zip's layout, prepared (unverified),
  trained for two rounds with export, and one request to the exported model's `recommend`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tests.data.test_movielens import ml1m_zip  # pylint: disable=g-import-not-at-top
  from tff_rec.data import movielens, pipeline  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / 'movielens_1m'
  pipeline.prepare_movielens(ml1m_zip(tmp_path / 'ml-1m.zip', users=30, movies=120), str(data_dir),
                             pipeline.PrepareOptions(seed=0), num_platforms=1, progress=False,
                             dataset=movielens.ML1M, verify=False)
  export_dir = str(tmp_path / 'export')
  final = _run(str(data_dir), tmp_path, 'ml1m', export_dir=export_dir, top_k=5)
  assert 0.0 <= final['hr@10'] <= 1.0
  recommend = tf.saved_model.load(export_dir).signatures['recommend']
  out = recommend(history_item_ids=tf.constant([['1', '2', '3']]), history_ratings=tf.constant([[5.0, 4.0, 3.0]]))
  items = [i.decode() for i in out['item_ids'].numpy()[0]]
  assert len(items) == 5 and not {'1', '2', '3'} & set(items)  # Unseen movies, by their MovieLens ids.


@pytest.mark.slow
def test_an_implicit_interactions_file_trains_exports_and_serves(tmp_path):
  """The same for an interaction log with string ids, play counts and no timestamp (implicit feedback)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tff_rec.data import interactions, pipeline  # pylint: disable=g-import-not-at-top
  log = tmp_path / 'plays.tsv'
  log.write_text('listener\ttrack\tplays\n' + ''.join(f'user-{u}\ttrack-{(u * 5 + k) % 150}\t{1 + k % 3}\n'
                                                       for u in range(30) for k in range(6)))
  data_dir = tmp_path / 'plays'
  pipeline.prepare_interactions(
      interactions.InteractionsSpec(str(log), {'user': 'listener', 'item': 'track', 'count': 'plays'}), str(data_dir),
      pipeline.PrepareOptions(seed=0), num_platforms=1, progress=False)
  export_dir = str(tmp_path / 'export')
  final = _run(str(data_dir), tmp_path, 'plays', export_dir=export_dir, top_k=5, group_metrics='all')
  assert 0.0 <= final['hr@10'] <= 1.0 and final['rmse'] is None  # No rating splits: no RMSE.
  # No demographics: groups by activity, popularity and the (one) platform, and asking for age is a clear error.
  assert {k.split('/')[0] for k in final if k.startswith('by_')} == {'by_activity', 'by_item_popularity',
                                                                       'by_platform'}
  with pytest.raises(ValueError, match=r"--group_metrics: \['age'\] not in this data; this data has "
                                       r"\['activity', 'item_popularity', 'platform'\]"):
    _run(str(data_dir), tmp_path, 'plays_by_age', group_metrics='age')
  recommend = tf.saved_model.load(export_dir).signatures['recommend']
  history = ['track-0', 'track-1', 'track-2']
  out = recommend(history_item_ids=tf.constant([history]), history_ratings=tf.constant([[1.0, 1.0, 1.0]]))
  items = [i.decode() for i in out['item_ids'].numpy()[0]]
  assert len(items) == 5 and all(i.startswith('track-') for i in items) and not set(history) & set(items)
