"""The exported SavedModel: its signature contract, served user = evaluated user, served HR@10 = evaluated HR@10."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

from experiments import export as export_binary
from tff_rec import tasks
from tff_rec.evaluation import client_eval
from tff_rec.models import mf
from tff_rec.serving import export
from tests.serving import conftest

CLI = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')  # TensorFlow's own tool, in the venv.
SETTINGS = conftest.TRAINING

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


@pytest.fixture
def trained(trained_run):
  """(task, run dir, export dir, final metrics) of a 2-round run of each model kind."""
  return trained_run.task, trained_run.run_dir, trained_run.export_dir, trained_run.final


def _requests(task: tasks.RecommendationTask, clients: tasks.EvalClients):
  """Each evaluated user's history (support without recency emphasis) as a request: (item ids [users, H], ''
  padding; ratings [users, H])."""
  histories = []
  for items, labels in clients.support:
    if task.objective == mf.IMPLICIT:
      positives = items[labels == 1.0]
      histories.append(([task.vocabulary[i - 1] for i in positives], np.ones(len(positives), np.float32)))
    else:
      histories.append(([task.vocabulary[i - 1] for i in items], labels))
  longest = max(len(ids) for ids, _ in histories)
  ids = np.array([list(h) + [''] * (longest - len(h)) for h, _ in histories], dtype=object)
  ratings = np.zeros((len(histories), longest), np.float32)
  for u, (_, r) in enumerate(histories):
    ratings[u, :len(r)] = r
  return tf.constant(ids, tf.string), tf.constant(ratings)


def test_signatures_are_exactly_the_contract(trained):
  _, _, export_dir, _ = trained
  shown = subprocess.run([CLI, 'show', '--all', '--dir', export_dir], capture_output=True, text=True, check=True)
  blocks = re.split(r"signature_def\['(\w+)'\]:", shown.stdout)[1:]
  signatures = dict(zip(blocks[::2], blocks[1::2]))
  assert sorted(signatures) == ['__saved_model_init_op', 'recommend', 'score', 'serving_default']

  def tensors(block, kind):
    part = block.split(f'The given SavedModel SignatureDef contains the following {kind}:')[1]
    part = part.split('The given SavedModel SignatureDef contains the following')[0]
    return sorted(re.findall(r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: \(([-\d, ]+)\)", part))

  history = [('history_item_ids', 'DT_STRING', '-1, -1'), ('history_ratings', 'DT_FLOAT', '-1, -1')]
  for name in ('serving_default', 'recommend'):
    assert tensors(signatures[name], 'input(s)') == history
    assert tensors(signatures[name], 'output(s)') == [('item_ids', 'DT_STRING', '-1, 5'), ('scores', 'DT_FLOAT', '-1, 5')]
  assert tensors(signatures['score'], 'input(s)') == [('candidate_item_ids', 'DT_STRING', '-1, -1')] + history
  assert tensors(signatures['score'], 'output(s)') == [('scores', 'DT_FLOAT', '-1, -1')]


def test_saved_model_cli_run_gives_the_reloaded_and_in_memory_scores(trained, tmp_path):
  task, run_dir, export_dir, _ = trained
  ids = [[task.vocabulary[0], task.vocabulary[3], '']]
  ratings = [[4.0, 2.0, 0.0]]
  candidates = [[task.vocabulary[1], task.vocabulary[7], 'no-such-item']]
  subprocess.run([CLI, 'run', '--dir', export_dir, '--tag_set', 'serve', '--signature_def', 'score',
                  '--input_exprs', f'history_item_ids={ids};history_ratings={ratings};candidate_item_ids={candidates}',
                  '--outdir', str(tmp_path), '--overwrite'], capture_output=True, text=True, check=True)
  from_cli = np.load(tmp_path / 'scores.npy')
  reloaded = tf.saved_model.load(export_dir).signatures['score'](
      history_item_ids=tf.constant(ids), history_ratings=tf.constant(ratings),
      candidate_item_ids=tf.constant(candidates))['scores'].numpy()
  config, vocabulary, weights = export.load_model_state(os.path.join(run_dir, export.MODEL_STATE))
  module = export.Recommender(config, vocabulary, weights, 5)
  in_memory = module.score(tf.constant(ids), tf.constant(ratings), tf.constant(candidates))['scores'].numpy()
  np.testing.assert_array_equal(from_cli, reloaded)
  np.testing.assert_array_equal(reloaded, in_memory)
  assert reloaded[0, 2] == export.UNKNOWN_SCORE and np.all(reloaded[0, :2] > export.UNKNOWN_SCORE)


def test_served_user_is_the_client_side_reconstruction(trained):
  """The signature's user = `client_eval.reconstruct` (Keras SGD, TFF's evaluation) on the same support, 1e-4."""
  task, _, export_dir, _ = trained
  loaded = tf.saved_model.load(export_dir)
  ids, ratings = _requests(task, task.eval_clients('test', seed=SETTINGS['seed']))
  # What evaluation reconstructed from: the same histories, with the run's recency emphasis.
  clients = task.eval_clients('test', seed=SETTINGS['seed'], recent_items=2, recent_repeats=2)
  served = loaded.user_embedding(ids, ratings).numpy()
  config, _, weights = export.load_model_state(os.path.join(os.path.dirname(export_dir), 'run', export.MODEL_STATE))
  if config.als_alpha > 0:  # fed_als: the exact ALS solve on the rated support (recency repeats count again).
    assert (config.als_alpha, config.als_regularization) == (3.0, 2.0)
    table = weights[0].astype(np.float64)
    for u, (items, labels) in enumerate(clients.support):
      rated = items[np.asarray(labels).reshape(-1) == 1.0]
      expected = np.linalg.solve(table.T @ table + 3.0 * table[rated].T @ table[rated] + 2.0 * np.eye(table.shape[1]),
                                 4.0 * table[rated].sum(0))
      np.testing.assert_allclose(served[u], expected, rtol=1e-3, atol=1e-5)
    assert np.abs(served).sum() > 0
    return
  bundle = task.model_fn()
  variables = [v for layer in bundle.global_layers for v in layer.trainable_variables]
  for variable, value in zip(variables, weights[:len(variables)]):  # (Two-tower: then its feature tables.)
    variable.assign(value)
  for u, support in enumerate(clients.support[:12]):  # Twelve users, each reconstructed eagerly by Keras.
    client_eval.reconstruct(bundle, task.client_dataset(support), task.loss_fn(), learning_rate=config.learning_rate,
                            epochs=config.epochs)
    np.testing.assert_allclose(served[u], client_eval.local_variables(bundle)[0].numpy()[0], atol=1e-4)
  assert np.abs(served).sum() > 0


def test_served_test_metrics_equal_the_training_evaluation(trained):
  task, _, export_dir, final = trained
  score = tf.saved_model.load(export_dir).signatures['score']
  clients = task.eval_clients('test', seed=SETTINGS['seed'])
  ids, ratings = _requests(task, clients)
  candidates = [q[0] for q in clients.queries]  # Ranking: [1, 100] per user; rating: [n] per user.
  if task.objective == mf.IMPLICIT:
    names = np.array([[task.vocabulary[i - 1] for i in row] for q in candidates for row in q], dtype=object)
    scores = score(history_item_ids=ids, history_ratings=ratings, candidate_item_ids=tf.constant(names))['scores']
    totals = client_eval.ranking_sums(scores)
    served = client_eval.finalize(totals, client_eval.RANKING)
    assert served['hr@10'] == pytest.approx(final['hr@10'], abs=1e-6)
    assert served['ndcg@10'] == pytest.approx(final['ndcg@10'], abs=1e-6)
  else:
    errors = []
    for u, (items, truth) in enumerate(clients.queries):
      names = tf.constant([[task.vocabulary[i - 1] for i in items]])
      predicted = score(history_item_ids=ids[u:u + 1], history_ratings=ratings[u:u + 1],
                        candidate_item_ids=names)['scores'].numpy()[0]
      errors.append(predicted - truth)
    errors = np.concatenate(errors)
    assert np.sqrt(np.mean(errors ** 2)) == pytest.approx(final['rmse'], abs=1e-5)
    assert np.mean(np.abs(errors)) == pytest.approx(final['mae'], abs=1e-5)


def test_recommend_is_the_best_unseen_items_and_ignores_unknown_ids(trained):
  task, _, export_dir, _ = trained
  loaded = tf.saved_model.load(export_dir)
  recommend, score = loaded.signatures['recommend'], loaded.signatures['score']
  history = [task.vocabulary[i] for i in (0, 5, 9)]
  ids, ratings = tf.constant([history + ['']]), tf.constant([[5.0, 3.0, 4.0, 0.0]])
  out = recommend(history_item_ids=ids, history_ratings=ratings)
  top = [t.decode() for t in out['item_ids'].numpy()[0]]
  assert len(top) == 5 and not set(top) & set(history) and np.all(np.diff(out['scores'].numpy()[0]) <= 0)
  everything = score(history_item_ids=ids, history_ratings=ratings, candidate_item_ids=tf.constant([task.vocabulary]))
  unseen = {v: s for v, s in zip(task.vocabulary, everything['scores'].numpy()[0]) if v not in history}
  assert sorted(unseen, key=lambda v: -unseen[v])[:5] == top  # (Ties are vanishingly unlikely with float scores.)
  np.testing.assert_allclose(out['scores'].numpy()[0], [unseen[v] for v in top], rtol=1e-6)
  # Unknown ids in the history are dropped: the same as a history without them.
  noisy = recommend(history_item_ids=tf.constant([['junk', history[0], history[1], '?', history[2]]]),
                    history_ratings=tf.constant([[1.0, 5.0, 3.0, 2.0, 4.0]]))
  np.testing.assert_allclose(noisy['scores'].numpy(), out['scores'].numpy(), rtol=1e-6)
  # An empty history (all padding) still recommends.
  empty = recommend(history_item_ids=tf.constant([['', '']]), history_ratings=tf.zeros([1, 2]))
  assert all(empty['item_ids'].numpy()[0])


def test_mismatched_inputs_are_errors_not_crashes(trained):
  _, _, export_dir, _ = trained
  loaded = tf.saved_model.load(export_dir)
  with pytest.raises(tf.errors.InvalidArgumentError, match='same shape'):
    loaded.signatures['recommend'](history_item_ids=tf.constant([['1', '2']]), history_ratings=tf.constant([[1.0]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='same batch size'):
    loaded.signatures['score'](history_item_ids=tf.constant([['1']]), history_ratings=tf.constant([[1.0]]),
                               candidate_item_ids=tf.constant([['1'], ['2']]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='finite'):
    loaded.signatures['recommend'](history_item_ids=tf.constant([['1']]), history_ratings=tf.constant([[np.nan]]))


def test_metadata_describes_the_run(trained):
  task, run_dir, export_dir, final = trained
  metadata = json.loads(open(os.path.join(export_dir, export.METADATA)).read())
  assert metadata['rounds'] == 2 and metadata['final_metrics'] == pytest.approx(final)
  assert metadata['item_vocabulary_size'] == len(task.vocabulary) and metadata['top_k'] == 5
  assert metadata['experiment_flags'] == json.loads(open(os.path.join(run_dir, 'hparams.json')).read())
  assert metadata['privacy'] == {'mechanism': 'none', 'epsilon': None, 'delta': None}
  assert metadata['reconstruction']['objective'] == task.objective and 'export_time' in metadata


def test_export_binary_replaces_an_export_and_keeps_it_on_error(trained, tmp_path, capsys):
  _, run_dir, _, _ = trained
  target = str(tmp_path / 'model')
  with flagsaver.flagsaver(run_dir=run_dir, export_dir=target, top_k=3):
    assert export_binary.main(['export']) == 0
  first = json.loads(open(os.path.join(target, export.METADATA)).read())
  with flagsaver.flagsaver(run_dir=run_dir, export_dir=target, top_k=0):
    assert export_binary.main(['export']) == 2
  assert 'top_k must be >= 1' in capsys.readouterr().err
  assert json.loads(open(os.path.join(target, export.METADATA)).read()) == first  # The old export is intact.
  with flagsaver.flagsaver(run_dir=str(tmp_path / 'missing'), export_dir=target):
    assert export_binary.main(['export']) == 2
  assert 'missing/model_state.npz does not exist' in capsys.readouterr().err
  with flagsaver.flagsaver(run_dir=run_dir, export_dir=target, top_k=7):
    assert export_binary.main(['export']) == 0
  assert json.loads(open(os.path.join(target, export.METADATA)).read())['top_k'] == 7
  assert sorted(p for p in os.listdir(tmp_path) if p.startswith('.')) == []  # No staging left behind.


def test_explanations_are_the_history_items_whose_shares_make_up_the_score(trained):
  task, run_dir, _, _ = trained
  config, vocabulary, weights = export.load_model_state(os.path.join(run_dir, export.MODEL_STATE))
  plain = export.Recommender(config, vocabulary, weights, 5)
  explained = export.Recommender(config, vocabulary, weights, 5, explain=4)
  known = [vocabulary[i] for i in (0, 5, 9)]
  ids = tf.constant([[known[0], known[1], 'junk', known[2], known[1], '']])  # A repeat, an unknown id, padding.
  ratings = tf.constant([[5.0, 3.0, 2.0, 4.0, 3.0, 0.0]])
  out, expected = explained.recommend(ids, ratings), plain.recommend(ids, ratings)
  np.testing.assert_array_equal(out['item_ids'], expected['item_ids'])  # Explaining changes no recommendation.
  np.testing.assert_allclose(out['scores'], expected['scores'], rtol=1e-6)
  shown, shares = out['explanation_item_ids'].numpy()[0], out['explanation_contributions'].numpy()[0]
  assert shown.shape == shares.shape == (5, 4)
  for k in range(5):  # Each of the three known history items once, largest share first, then nothing.
    assert sorted(x.decode() for x in shown[k, :3]) == sorted(known) and shown[k, 3] == b''
    assert np.all(np.diff(shares[k, :3]) <= 0) and shares[k, 3] == 0.0
  if task.objective == mf.RATING or config.als_alpha > 0:
    # No sampled negatives take a share: the history items' shares are the whole user term of the score,
    # <p_u, v_i> (+ b_u): the score less the item's bias (and the global mean).
    rows = [vocabulary.index(x.decode()) + 1 for x in out['item_ids'].numpy()[0]]
    user_term = out['scores'].numpy()[0] - weights[1][rows, 0] - (weights[2] if task.objective == mf.RATING else 0)
    np.testing.assert_allclose(shares.sum(1), user_term, atol=1e-4)


def test_bucket_sizes_are_the_next_multiple_of_eight_then_power_of_two():
  assert [int(export.next_power_of_two(n)) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65, 1000, 1024, 1025)] == [
      1, 2, 4, 4, 8, 8, 16, 64, 128, 1024, 1024, 2048]
  assert [int(export._batch_bucket(n)) for n in (1, 8, 9, 57, 64, 65, 129)] == [8, 8, 16, 64, 64, 128, 256]


def test_jit_compiled_export_serves_what_the_plain_one_does(trained, tmp_path):
  """--jit_compile (XLA on the SGD reconstruction, inputs padded to buckets) gives the plain export's
  recommendations, scores and explanations, for batches and history lengths that need padding."""
  task, run_dir, _, _ = trained
  config, vocabulary, weights = export.load_model_state(os.path.join(run_dir, export.MODEL_STATE))
  if config.als_alpha > 0:  # ALS solves its users exactly: nothing to compile, and asking is an error.
    with pytest.raises(ValueError, match='jit_compile compiles the SGD reconstruction; an ALS model'):
      export.Recommender(config, vocabulary, weights, 5, jit_compile=True)
    return
  with pytest.raises(ValueError, match='drop it with --format=tflite'):
    export.export_run(run_dir, str(tmp_path / 'no'), fmt=export.TFLITE, jit_compile=True)
  metadata = export.export_run(run_dir, str(tmp_path / 'jit'), 5, explain=2, jit_compile=True)
  assert metadata['jit_compile'] is True
  compiled = tf.saved_model.load(str(tmp_path / 'jit'))
  plain = export.Recommender(config, vocabulary, weights, 5, explain=2)
  rng = np.random.default_rng(0)
  for users, length in ((1, 1), (3, 7), (5, 40)):  # 1, 3 and 5 users: padded to 1, 4 and 8.
    ids = tf.constant(rng.choice(vocabulary + [''], size=(users, length)).astype(object), tf.string)
    ratings = tf.constant(rng.integers(1, 6, size=(users, length)).astype(np.float32))
    out, expected = compiled.signatures['recommend'](history_item_ids=ids, history_ratings=ratings), \
        plain.recommend(ids, ratings)
    np.testing.assert_array_equal(out['item_ids'], expected['item_ids'])
    np.testing.assert_allclose(out['scores'], expected['scores'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out['explanation_contributions'], expected['explanation_contributions'], atol=1e-5)
    candidates = tf.constant(np.array([vocabulary[:4]] * users, dtype=object), tf.string)
    np.testing.assert_allclose(
        compiled.signatures['score'](history_item_ids=ids, history_ratings=ratings,
                                     candidate_item_ids=candidates)['scores'],
        plain.score(ids, ratings, candidates)['scores'], rtol=1e-5, atol=1e-5)
