"""Session-wide test setup.

The test session stops every TFF worker_binary it started when it ends, so a
test run never leaves a process holding its output pipe open (CI would hang).
"""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF's C++ start-up chatter.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  from tff_rec import runtime  # pylint: disable=g-import-not-at-top
  runtime.stop_all_workers()


@pytest.fixture(autouse=True)
def no_op_determinism_left_over():
  """Experiment runs switch TF op determinism on process-wide; each test starts with it off, as a process does."""
  from tff_rec import experiment  # pylint: disable=g-import-not-at-top
  experiment.configure_determinism(False)


@pytest.fixture
def parsed_flags():
  """absl's flags parsed once, each at its default, for tests that call a binary's `main` or read its flags (a
  module's tests ask for it with `pytestmark = pytest.mark.usefixtures('parsed_flags')`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['tests', '--experiment_name=unset'])


@pytest.fixture(scope='session')
def movielens_archive() -> str:
  """The real MovieLens-100K archive, fetched once into the project's raw cache."""
  from tff_rec.data import movielens  # pylint: disable=g-import-not-at-top
  return movielens.fetch(os.path.join(ROOT, 'data', 'raw'), grouplens_timeout_s=2.0)


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory) -> str:
  """A prepared 40-user, 150-item synthetic dataset directory (cross-device and cross-silo)."""
  from tff_rec.data import pipeline  # pylint: disable=g-import-not-at-top
  from tff_rec.data.synthetic import SyntheticConfig  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('tiny'))
  pipeline.prepare_synthetic(SyntheticConfig(num_users=40, num_items=150, seed=0), out,
                             pipeline.PrepareOptions(seed=0), num_platforms=3, progress=False)
  return out
