"""MF model and loss, with hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.models import mf


def _set(bundle, *, user, user_bias=None, items, item_bias, mean=None):
  layers = {layer.name: layer for layer in bundle.model.layers}
  layers['user'].embedding.assign([user])
  if user_bias is not None:
    layers['user'].bias.assign([[user_bias]])
  layers['item_embedding'].embeddings.assign(items)
  layers['item_bias'].embeddings.assign(np.asarray(item_bias, np.float32)[:, None])
  if mean is not None:
    layers['global_mean'].mean.assign(mean)


def test_rating_prediction_and_penalty():
  bundle = mf.build_mf(mf.MFConfig(num_items=2, embedding_dim=2, l2=0.1, objective=mf.RATING))
  _set(bundle, user=[1.0, 2.0], user_bias=0.5, items=[[0, 0], [1.0, 0.0], [0.5, 1.0]], item_bias=[0, -0.25, 0.25],
       mean=3.0)
  out = bundle.model(tf.constant([1, 2], tf.int64)).numpy()
  # item 1: 3 + 0.5 - 0.25 + (1*1 + 2*0) = 4.25;  item 2: 3 + 0.5 + 0.25 + (0.5 + 2) = 6.25
  np.testing.assert_allclose(out[:, 0], [4.25, 6.25])
  # penalty 0.1 * (|p|^2 + |q|^2): 0.1 * (5 + 1) = 0.6;  0.1 * (5 + 1.25) = 0.625
  np.testing.assert_allclose(out[:, 1], [0.6, 0.625], rtol=1e-6)
  loss = mf.RegularizedLoss(mf.RATING)(tf.constant([[4.0], [5.0]]), out)
  # mean of (0.25^2 + 0.6, 1.25^2 + 0.625) = (0.6625 + 2.1875) / 2
  np.testing.assert_allclose(loss.numpy(), 1.425, rtol=1e-6)


def test_implicit_logit_has_no_user_bias_or_mean():
  bundle = mf.build_mf(mf.MFConfig(num_items=2, embedding_dim=2, objective=mf.IMPLICIT))
  assert [v.name.split('/')[-1] for v in bundle.local_layers[0].trainable_variables] == ['user_embedding:0']
  _set(bundle, user=[1.0, -1.0], items=[[0, 0], [2.0, 1.0], [0.0, 3.0]], item_bias=[0, 0.5, 0.0])
  out = bundle.model(tf.constant([1, 2, 0], tf.int64)).numpy()
  np.testing.assert_allclose(out[:, 0], [1.5, -3.0, 0.0])  # (2 - 1) + 0.5;  (0 - 3);  OOV row is 0.
  loss = mf.RegularizedLoss(mf.IMPLICIT)(tf.constant([[1.0], [0.0], [0.0]]), out).numpy()
  expected = np.mean([np.log1p(np.exp(-1.5)), np.log1p(np.exp(-3.0)), np.log(2.0)])  # BCE with logits.
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_global_and_local_layers():
  bundle = mf.build_mf(mf.MFConfig(num_items=5, embedding_dim=3, objective=mf.RATING))
  assert [layer.name for layer in bundle.global_layers] == ['item_embedding', 'item_bias', 'global_mean']
  assert [layer.name for layer in bundle.local_layers] == ['user']
  assert bundle.global_layers[0].embeddings.shape == (6, 3)  # + OOV row 0.


def test_same_seed_same_initialization():
  first = mf.build_mf(mf.MFConfig(num_items=5, seed=3)).global_layers[0].embeddings.numpy()
  again = mf.build_mf(mf.MFConfig(num_items=5, seed=3)).global_layers[0].embeddings.numpy()
  other = mf.build_mf(mf.MFConfig(num_items=5, seed=4)).global_layers[0].embeddings.numpy()
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


@pytest.mark.parametrize('kwargs, message', [
    ({'objective': 'bpr'}, 'objective must be one of'),
    ({'l2': -1.0}, 'l2 must be >= 0'),
    ({'embedding_dim': 0}, 'must be >= 1'),
])
def test_bad_config(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mf.build_mf(mf.MFConfig(num_items=3, **kwargs))


@pytest.mark.parametrize('objective', [mf.IMPLICIT, mf.RATING])
def test_user_table_model_scores_like_the_single_user_model(objective):
  config = mf.MFConfig(num_items=5, embedding_dim=3, objective=objective, l2=0.1, seed=1)
  single, table = mf.build_mf(config), mf.build_mf_user_table(config, num_users=4, users_are_local=True)
  for a, b in zip(single.global_layers, table.global_layers):
    for va, vb in zip(a.weights, b.weights):
      vb.assign(va)
  row = np.array([[0.5, -1.0, 2.0]], np.float32)
  single.local_layers[0].embedding.assign(row)
  table.local_layers[0].embeddings.assign(np.vstack([np.zeros((2, 3)), row, np.zeros((1, 3))]))
  if objective == mf.RATING:
    single.local_layers[0].bias.assign([[0.3]])
    table.local_layers[1].embeddings.assign([[0.0], [0.0], [0.3], [0.0]])
  items = np.array([1, 4, 2], np.int64)
  np.testing.assert_allclose(table.model(np.stack([np.full(3, 2), items], 1)).numpy(), single.model(items).numpy(),
                             rtol=1e-6)


def test_global_user_table_is_a_global_layer():
  config = mf.MFConfig(num_items=5, embedding_dim=3)
  local = mf.build_mf_user_table(config, num_users=4, users_are_local=True)
  shared = mf.build_mf_user_table(config, num_users=4, users_are_local=False)
  assert [l.name for l in local.local_layers] == ['user_embedding']
  assert not shared.local_layers and shared.global_layers[0].name == 'user_embedding'
