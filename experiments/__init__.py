"""The absl-flag binaries: python -m experiments.NAME."""

import sys

from tff_rec import quiet

quiet.quiet_unless_verbose(sys.argv)  # Before TensorFlow is imported.
