"""The TFLite export: the SavedModel's signatures and scores on the device, through tflite-runtime and TensorFlow."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tff_rec.data import histories, schema
from tff_rec.serving import export, tflite


@pytest.fixture
def run(trained_run):
  """(run dir, SavedModel dir, data dir) of a 2-round run of each model kind."""
  return trained_run.run_dir, trained_run.export_dir, trained_run.data_dir


def _users(data_dir, count=4):
  return list(histories.histories(os.path.join(data_dir, schema.CLIENTS_DB), limit=count))


@pytest.mark.slow
def test_tflite_signatures_give_the_saved_model_scores_on_both_interpreters(run, tmp_path):
  run_dir, saved_model, data_dir = run
  metadata = export.export_run(run_dir, str(tmp_path / 'float'), top_k=5, fmt=export.TFLITE)
  assert metadata['format'] == 'tflite' and metadata['quantize'] == 'none'
  path = str(tmp_path / 'float' / tflite.MODEL_FILE)
  served = tf.saved_model.load(saved_model).signatures
  candidates = ['1', '2', '3', '4', 'no-such-item']
  for runtime in ('tflite_runtime', 'tensorflow'):
    device = tflite.OnDeviceRecommender(path, runtime=runtime)
    for user in _users(data_dir):
      top = device.recommend(user.item_ids, user.ratings)
      history = dict(history_item_ids=tf.constant([user.item_ids]), history_ratings=tf.constant([user.ratings]))
      expected = served['recommend'](**history)
      assert [i for i, _ in top] == [i.decode() for i in expected['item_ids'].numpy()[0] if i]
      np.testing.assert_allclose([s for _, s in top], expected['scores'].numpy()[0][:len(top)], rtol=1e-4,
                                 atol=1e-5)
      scores = device.score(user.item_ids, user.ratings, candidates)
      expected = served['score'](**history, candidate_item_ids=tf.constant([candidates]))['scores'].numpy()[0]
      np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
      assert not set(user.item_ids) & {i for i, _ in top}  # The history is excluded, on the device too.


@pytest.mark.slow
@pytest.mark.parametrize('trained_run', ['fed_als'], indirect=True)  # Conversions are the cost: one model suffices.
def test_quantised_models_are_smaller_and_rank_alike(run, tmp_path):
  run_dir, _, data_dir = run
  sizes, tops = {}, {}
  for quantize in tflite.QUANTIZATIONS:
    export.export_run(run_dir, str(tmp_path / quantize), top_k=5, fmt=export.TFLITE, quantize=quantize)
    path = str(tmp_path / quantize / tflite.MODEL_FILE)
    sizes[quantize] = os.path.getsize(path)
    device = tflite.OnDeviceRecommender(path)
    tops[quantize] = [[i for i, _ in device.recommend(u.item_ids, u.ratings)] for u in _users(data_dir)]
  assert sizes['float16'] < sizes['none'] and sizes['dynamic_int8'] < sizes['float16']
  for quantize in ('float16', 'dynamic_int8'):  # Most of each top 5 survives quantisation.
    overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(tops['none'], tops[quantize])])
    assert overlap >= 0.6, (quantize, overlap)


def test_bad_quantisation_and_missing_signatures_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='--quantize must be one of none, float16, dynamic_int8, got .int4.'):
    tflite.convert(str(tmp_path), 'int4')

  class Module(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def double(self, x):
      return {'y': 2 * x}

  module = Module()
  tf.saved_model.save(module, str(tmp_path / 'other'), signatures={'double': module.double})
  converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / 'other'))
  (tmp_path / 'other.tflite').write_bytes(converter.convert())
  with pytest.raises(ValueError, match='has no recommend, score signature'):
    tflite.OnDeviceRecommender(str(tmp_path / 'other.tflite'))


@pytest.mark.slow
@pytest.mark.parametrize('trained_run', ['fed_als'], indirect=True)
def test_on_device_binary_prints_the_users_top_k_with_titles(run, tmp_path):
  run_dir, _, data_dir = run
  export.export_run(run_dir, str(tmp_path / 'model'), top_k=5, fmt=export.TFLITE, explain=2)
  user = _users(data_dir, 1)[0]
  model = tflite.OnDeviceRecommender(str(tmp_path / 'model' / tflite.MODEL_FILE))
  explained = model.recommend_explained(user.item_ids, user.ratings)
  assert [(i, s) for i, s, _ in explained] == pytest.approx(model.recommend(user.item_ids, user.ratings))
  assert all(len(reasons) == 2 and {h for h, _ in reasons} <= set(user.item_ids) and reasons[0][1] >= reasons[1][1]
             for _, _, reasons in explained)
  command = [sys.executable, '-m', 'experiments.on_device', f'--model={tmp_path / "model" / tflite.MODEL_FILE}',
             f'--data_dir={data_dir}']
  result = subprocess.run([*command, f'--user={user.user_id}'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert f'user {user.user_id}: {len(user.item_ids)} history items on the device' in result.stdout
  titles = histories.titles(os.path.join(data_dir, schema.CLIENTS_DB), [user.item_ids[-1]])
  assert titles[user.item_ids[-1]] in result.stdout
  assert '  5. ' in result.stdout and result.stdout.count('because of: ') == 5
  result = subprocess.run([*command, '--user=nobody'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 2 and "has no user 'nobody'" in result.stderr
