"""Speed and memory benchmarks: python -m benchmarks.NAME."""

import sys

from tff_rec import quiet

quiet.quiet_unless_verbose(sys.argv)  # Before TensorFlow is imported.
