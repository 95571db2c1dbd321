"""Model versions: the newest served, new ones swapped in without dropping requests, broken ones skipped."""

import os
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from tff_rec.models import mf
from tff_rec.serving import export, servables

VOCABULARY = ['a', 'b', 'c', 'd', 'e']
HISTORY = {'history_item_ids': np.array([[b'a', b'c']], object), 'history_ratings': np.array([[1.0, 1.0]], np.float32)}


def _export(path, seed):
  rng = np.random.default_rng(seed)
  weights = [rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 1)).astype(np.float32)]
  config = export.ServingConfig(mf.IMPLICIT, 0.0, 4, 1, 0.5, 1, 0)
  export.save(export.Recommender(config, VOCABULARY, weights, top_k=3), str(path), {})


@pytest.fixture(scope='module')
def versions(tmp_path_factory):
  """Two exported versions with different weights, kept aside to be copied into base paths."""
  root = tmp_path_factory.mktemp('versions')
  _export(root / 'first', 0)
  _export(root / 'second', 1)
  return root


def _install(versions, name, base, version):
  """Copies a version in as an exporter should: written beside, then renamed into place."""
  staging = base / f'.staging-{version}'
  shutil.copytree(versions / name, staging)
  os.replace(staging, base / str(version))


def _scores(servable):
  return servable.run('recommend', HISTORY)['scores']


def test_the_newest_version_is_served_and_a_new_one_swapped_in(versions, tmp_path):
  base = tmp_path / 'rec'
  base.mkdir()
  _install(versions, 'first', base, 1)
  (base / 'notes').mkdir()  # Not a version: ignored.
  loads = []
  manager = servables.ModelManager('rec', str(base), on_load=lambda v, outcome: loads.append((v, outcome)))
  assert manager.current.version == 1 and not manager.poll()
  _install(versions, 'second', base, 10)  # Versions are numbers: 10 is newer than 9 would be.
  _install(versions, 'first', base, 9)
  assert manager.poll() and manager.current.version == 10
  expected = tf.saved_model.load(str(versions / 'second')).signatures['recommend'](
      **{k: tf.constant(v) for k, v in HISTORY.items()})['scores'].numpy()
  np.testing.assert_array_equal(_scores(manager.servable('rec')), expected)
  with pytest.raises(servables.ServableNotFound, match=r'Specific\(rec, 1\)'):
    manager.servable('rec', 1)
  assert manager.servable('rec', 10).version == 10
  # A version that cannot load is skipped, once: the served one stays.
  (base / '11').mkdir()
  (base / '11' / 'saved_model.pb').write_bytes(b'not a SavedModel')
  assert not manager.poll() and not manager.poll() and manager.current.version == 10
  assert loads == [(1, 'ok'), (10, 'ok'), (11, 'error')]
  (base / '11' / 'saved_model.pb').write_bytes(b'still not a SavedModel')  # Changed: tried again.
  assert not manager.poll() and loads[-1] == (11, 'error') and len(loads) == 4
  # A version copied in file by file is tried again once its files change: half-copied it fails, complete it loads.
  shutil.rmtree(base / '11')
  (base / '12').mkdir()
  shutil.copy(versions / 'second' / 'saved_model.pb', base / '12')
  assert not manager.poll() and manager.current.version == 10
  shutil.copytree(versions / 'second' / 'variables', base / '12' / 'variables')
  assert manager.poll() and manager.current.version == 12
  shutil.rmtree(base / '12')
  assert manager.poll() and manager.current.version == 10
  # Removing the served version falls back to the newest left (as TF Serving unloads it).
  shutil.rmtree(base / '10')
  assert manager.poll() and manager.current.version == 9


def test_requests_in_flight_across_a_switch_all_succeed(versions, tmp_path):
  base = tmp_path / 'rec'
  base.mkdir()
  _install(versions, 'first', base, 1)
  manager = servables.ModelManager('rec', str(base), poll_seconds=0.05)
  manager.start()
  seen, failures, switched = [], [], threading.Event()
  def client():
    for _ in range(2000):  # Bounded: the switch comes well within it.
      try:
        servable = manager.servable('rec')
        _scores(servable)
        seen.append(servable.version)
      except Exception as e:  # pylint: disable=broad-except
        failures.append(e)
      if switched.is_set() and seen[-1] == 2:
        return
  threads = [threading.Thread(target=client) for _ in range(4)]
  for thread in threads:
    thread.start()
  _install(versions, 'second', base, 2)
  switched.set()
  for thread in threads:
    thread.join(timeout=120)
  manager.stop()
  assert failures == [] and seen.count(2) >= 4 and seen[0] == 1


def test_one_saved_model_is_version_1_and_nothing_else_is_a_model(versions, tmp_path):
  manager = servables.ModelManager('rec', str(versions / 'first'))
  assert manager.current.version == 1 and not manager.poll()
  with pytest.raises(FileNotFoundError, match='nor a base path of numbered versions'):
    servables.ModelManager('rec', str(tmp_path))
  (tmp_path / '1').mkdir()
  (tmp_path / '1' / 'saved_model.pb').write_bytes(b'broken')
  with pytest.raises(FileNotFoundError, match='no version under .* could be loaded'):
    servables.ModelManager('rec', str(tmp_path))
  with pytest.raises(ValueError, match='max_batch_size'):
    servables.ModelManager('rec', str(versions / 'first'), max_batch_size=0)
