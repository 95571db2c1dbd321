"""Binaries print their own output, not TensorFlow's C++ start-up lines, unless --verbosity is given."""

import os
import subprocess
import sys

from tests.conftest import ROOT
from tff_rec import quiet


def test_quiet_unless_asked(monkeypatch):
  monkeypatch.delenv(quiet.LEVEL, raising=False)
  assert not quiet.quiet_unless_verbose(['prog', '--rounds=3', '--verbosity=1']) and quiet.LEVEL not in os.environ
  assert quiet.quiet_unless_verbose(['prog', '--rounds=3']) and os.environ[quiet.LEVEL] == '3'
  monkeypatch.setenv(quiet.LEVEL, '0')  # A level the user set is kept.
  assert not quiet.quiet_unless_verbose(['prog']) and os.environ[quiet.LEVEL] == '0'


def test_a_binary_starts_without_tensorflows_lines():
  env = {k: v for k, v in os.environ.items() if k != quiet.LEVEL}
  run = subprocess.run([sys.executable, '-m', 'experiments.train_federated', '--helpshort'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert 'train_federated' in run.stdout + run.stderr  # Its help ...
  assert not [line for line in run.stderr.splitlines() if 'tensorflow/' in line]  # ... and none of TF's C++ lines.
  # Importing the package sets the level before TensorFlow loads, unless --verbosity is on the command line.
  probe = "import os, sys; sys.argv = ['x'] + sys.argv[1:]; import experiments; print(os.environ.get('{}'))"
  levels = [subprocess.run([sys.executable, '-c', probe.format(quiet.LEVEL), *args], cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True, timeout=60).stdout.strip() for args in ([], ['--verbosity=0'])]
  assert levels == ['3', 'None']
