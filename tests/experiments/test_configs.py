"""Every checked-in training flagfile in configs/ parses into a valid config of its binary, without training."""

import pathlib

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import population_sweep, train_centralized, train_federated  # pylint: disable=unused-import

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAINING_CONFIGS = sorted(p.name for p in (ROOT / 'configs').glob('*.flags') if not p.name.startswith('prepare_'))

pytestmark = pytest.mark.usefixtures('parsed_flags')  # tests/conftest.py


def test_every_training_config_is_checked():
  assert 'demo_fedrecon_mf.flags' in TRAINING_CONFIGS and 'dp_fedals_mf_eps8.flags' in TRAINING_CONFIGS


@pytest.mark.parametrize('name', TRAINING_CONFIGS)
def test_flagfile_builds_a_valid_config_named_after_it(name, monkeypatch):
  monkeypatch.chdir(ROOT)  # Flagfiles include each other by paths relative to the repository root.
  binary = train_centralized if name.startswith('centralized_') else train_federated
  with flagsaver.flagsaver():
    FLAGS(['binary', f'--flagfile=configs/{name}'])
    config = binary.config_from_flags()
  config.validate()
  assert pathlib.Path(config.output_dir).name == name.removesuffix('.flags')
