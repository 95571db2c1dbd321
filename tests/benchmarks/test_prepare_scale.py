"""benchmarks/prepare_scale.py end to end at its smallest size: each --processes value prepared and compared."""

import os
import re
import subprocess
import sys


def test_each_processes_value_is_prepared_and_compared_with_the_first(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'benchmarks.prepare_scale', '--ratings=100000',
                        f'--work_dir={tmp_path}', '--processes=0,2'], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
  runs = re.findall(r'--processes=(\d): prepare of ([\d,]+) ratings .* \(([\d.]+)x the first\); peak memory of all '
                    r'its processes ([\d,]+) MB', out)
  assert [(p, n) for p, n, _, _ in runs] == [('0', '100,000'), ('2', '100,000')], out
  assert runs[0][2] == '1.00' and float(runs[1][2]) > 0
  assert all(int(mb.replace(',', '')) > 0 for *_, mb in runs)
  assert sorted(os.listdir(tmp_path)) == ['ml-25m-like-100000.zip']  # The prepared databases are removed.
