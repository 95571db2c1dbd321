"""Malicious clients: target choice, fake profiles, the poisoned population, crafted and boosted updates."""

import numpy as np
import pytest
import tensorflow as tf

from tff_rec import attacks
from tff_rec.data import arrays

#                   item: 0   1   2  3  4  5  6  7  8
RATERS = np.array([0, 50, 40, 1, 2, 3, 0, 30, 2])  # Item 6 unrated; median of rated items 1-5,7,8: 3.


def test_popular_items_and_unpopular_targets_by_a_seeded_rule():
  np.testing.assert_array_equal(attacks.popular(RATERS, 3), [1, 2, 7])
  np.testing.assert_array_equal(attacks.popular(RATERS, 100), [1, 2, 3, 4, 5, 6, 7, 8])  # Never item 0.
  pool = {3, 4, 8}  # Rated, below the median (3): not 5 (at it), not 6 (unrated).
  drawn = attacks.choose_targets(RATERS, 2, seed=0)
  assert set(drawn) <= pool and len(set(drawn)) == 2
  np.testing.assert_array_equal(drawn, attacks.choose_targets(RATERS, 2, seed=0))
  assert {tuple(attacks.choose_targets(RATERS, 1, seed=s)) for s in range(20)} == {(3,), (4,), (8,)}
  with pytest.raises(ValueError, match='--num_target_items=4: only 3 items are below the median popularity'):
    attacks.choose_targets(RATERS, 4, seed=0)


def test_target_ids_are_looked_up_in_the_catalogue():
  vocabulary = ['a', 'b', 'c']
  config = attacks.AttackConfig(target_items=('c', 'a'))
  np.testing.assert_array_equal(attacks.resolve_targets(config, vocabulary, RATERS[:4], 0), [1, 3])
  with pytest.raises(ValueError, match=r"--target_items zz, yy are not in the catalogue \(3 items, e.g. 'a'\)"):
    attacks.resolve_targets(attacks.AttackConfig(target_items=('zz', 'a', 'yy')), vocabulary, RATERS[:4], 0)
  assert attacks.resolve_targets(attacks.AttackConfig(), vocabulary, RATERS[:4], 0).size == 0


@pytest.mark.parametrize('config, message', [
    (attacks.AttackConfig('fake_profiles', 1.0, num_target_items=1), r'must be in \[0, 1\), got 1.0'),
    (attacks.AttackConfig('fake_profiles', -0.1, num_target_items=1), r'must be in \[0, 1\), got -0.1'),
    (attacks.AttackConfig('none', 0.1), 'an attack needs a malicious fraction > 0, and a fraction needs an attack'),
    (attacks.AttackConfig('fake_profiles', 0.0, num_target_items=1), 'an attack needs a malicious fraction > 0'),
    (attacks.AttackConfig('model_poisoning', 0.1), 'promotes target items: give --target_items or'),
    (attacks.AttackConfig('sybil', 0.1), 'must be one of none, fake_profiles, model_poisoning'),
    (attacks.AttackConfig(target_items=('1',), num_target_items=2), 'not both'),
    (attacks.AttackConfig('model_poisoning', 0.1, num_target_items=1, poison_norm=0.0), '--poison_norm must be > 0'),
])
def test_bad_attacks_are_named(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate()


def test_bad_defences_are_named():
  with pytest.raises(ValueError, match='--norm_bound must be >= 0'):
    attacks.DefenceConfig(norm_bound=-1.0).validate()
  with pytest.raises(ValueError, match='and > 0 with --adaptive_norm_bound'):
    attacks.DefenceConfig(adaptive=True).validate()
  with pytest.raises(ValueError, match='--norm_bound_quantile must be in'):
    attacks.DefenceConfig(norm_bound=1.0, target_quantile=1.0).validate()


def test_malicious_users_are_the_fraction_of_the_population_they_join():
  assert attacks.num_malicious(0.0, 849) == 0
  assert attacks.num_malicious(0.01, 849) == 9  # 9 / 858 = 1.05%.
  assert attacks.num_malicious(0.001, 849) == 1  # At least one.
  assert attacks.num_malicious(0.5, 10) == 10


def test_fake_profiles_hold_the_targets_and_popular_filler():
  profiles = attacks.fake_profiles(3, np.array([8, 3]), np.array([1, 2, 3, 7]), filler=2, seed=0)
  assert len(profiles) == 3
  for p in profiles:
    assert len(p) == 4 and {3, 8} <= set(p)
    assert set(p) - {3, 8} <= {1, 2, 7}  # Filler from the pool, never a target twice.
  again = attacks.fake_profiles(3, np.array([8, 3]), np.array([1, 2, 3, 7]), filler=2, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(profiles, again))
  assert len({tuple(p) for p in profiles}) > 1  # Each user its own draw.


class _Benign:
  client_ids = ['u1', 'u2']

  def get(self, ids):
    return [arrays.ClientArrays(items=np.array([int(c[1:])]), ratings=np.ones(1, np.float32)) for c in ids]


def test_the_poisoned_population_holds_both_and_says_who_is_malicious():
  population = attacks.PoisonedPopulation(_Benign(), [np.array([5, 6]), np.array([7])])
  assert population.client_ids == ['u1', 'u2', 'sybil_000000', 'sybil_000001']
  assert list(population.id_array) == sorted(population.client_ids)
  got = population.get(['sybil_000001', 'u2', 'sybil_000000'])
  assert [list(g.items) for g in got] == [[7], [2], [5, 6]]
  assert list(got[2].ratings) == [5.0, 5.0]
  np.testing.assert_array_equal(population.is_malicious(['u1', 'sybil_000001']), [False, True])


def test_the_crafted_update_raises_the_targets_for_the_estimated_users():
  embedding = tf.constant([[0.0, 0.0], [1.0, 3.0], [9.0, 9.0], [3.0, 1.0], [5.0, 5.0]])
  poison = attacks.Poison(targets=(2,), popular=(1, 3), norm=6.0)
  rows = tf.constant([[1, 2, 0], [3, 4, 0]], tf.int64)  # User 0 holds target 2; user 1 none.
  emb, bias = attacks.crafted_deltas(embedding, rows, poison)
  # Direction: the popular rows' mean (2, 2) and +1 for the bias; norm sqrt(4 + 4 + 1) = 3, scaled to 6; negated.
  np.testing.assert_allclose(emb.numpy()[0], [[0, 0], [-4, -4], [0, 0]], atol=1e-6)
  np.testing.assert_allclose(bias.numpy()[0], [[0], [-2], [0]], atol=1e-6)
  assert not emb.numpy()[1].any() and not bias.numpy()[1].any()  # No target: nothing to move.
  # Applied as every update (weights - rate x delta): the target's score for the estimated users rises.
  moved = embedding.numpy()[2] - emb.numpy()[0, 1]
  users = embedding.numpy()[[1, 3]]
  assert (users @ moved > users @ embedding.numpy()[2]).all()


def test_only_the_malicious_users_updates_are_replaced():
  embedding = tf.constant([[0.0, 0.0], [1.0, 3.0], [9.0, 9.0], [3.0, 1.0]])
  honest = [tf.fill([2, 3, 2], 0.5), tf.fill([2, 3, 1], 0.25)]
  updates = {'rows': [tf.constant([[1, 2, 0], [1, 2, 0]], tf.int64)] * 2, 'deltas': honest,
             'weight': tf.ones([2])}
  poison = attacks.Poison(targets=(2,), popular=(1, 3), norm=3.0)
  out = attacks.poison_updates(updates, [embedding, tf.zeros([4, 1])], tf.constant([0.0, 1.0]), poison)
  np.testing.assert_array_equal(out['deltas'][0][0].numpy(), honest[0][0].numpy())  # Benign: as it was.
  np.testing.assert_allclose(out['deltas'][0][1].numpy(), [[0, 0], [-2, -2], [0, 0]], atol=1e-6)
  np.testing.assert_allclose(out['deltas'][1][1].numpy(), [[0], [-1], [0]], atol=1e-6)
  boosted = attacks.poison_updates(updates, [embedding, tf.zeros([4, 1])], tf.constant([1.0, 0.0]),
                                   attacks.Poison((2,), (1,), 1.0, boost=4.0))
  np.testing.assert_allclose(boosted['deltas'][0].numpy()[0], 2.0)  # 4 x 0.5.
  np.testing.assert_allclose(boosted['deltas'][1].numpy()[1], 0.25)
