"""The user guide points at things that exist: flagfiles, modules and flags named in README.md and docs/.

docs/log.md is history (it names flags since removed) and is not checked.
"""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))
                               if not p.endswith('log.md'))
ABSL_FLAGS = {'flagfile', 'verbosity', 'helpfull', 'help', 'logtostderr', 'alsologtostderr'}
OTHER_TOOLS = {'all'}  # saved_model_cli show --all.
FLAG = re.compile(r'(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])')


def defined_flags() -> set[str]:
  """Every flag a binary, benchmark or shared flag module of the project defines (absl's DEFINE_*)."""
  names = set()
  for pattern in ('experiments/*.py', 'benchmarks/*.py', 'tff_rec/**/*.py'):
    for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
      with open(path) as f:
        names |= set(re.findall(r"DEFINE_\w+\(\s*'(\w+)'", f.read()))
  return names


def undefined(text: str, defined: set[str]) -> list[str]:
  """The `--flags` of `text` that nothing defines (`--noX` is boolean X's negation)."""
  known = defined | ABSL_FLAGS | OTHER_TOOLS
  return sorted({n for n in FLAG.findall(text) if n not in known and not (n.startswith('no') and n[2:] in known)})


def test_the_check_catches_an_undefined_flag_and_knows_negations():
  assert undefined('run --rounds=3 --nosplit_dataset --made_up=1 and pip --no-deps', {'rounds', 'split_dataset'}) == [
      'made_up']


@pytest.mark.parametrize('doc', GUIDE)
def test_every_flagfile_module_and_flag_the_guide_names_exists(doc):
  with open(os.path.join(ROOT, doc)) as f:
    text = f.read()
  flagfiles = re.findall(r'configs/[\w.-]+\.flags', text)
  assert [f for f in flagfiles if not os.path.exists(os.path.join(ROOT, f))] == []
  modules = [m for m in re.findall(r'-m ((?:experiments|benchmarks)\.\w+)', text) if not m.split('.')[1].isupper()]
  assert [m for m in modules if not os.path.exists(os.path.join(ROOT, *m.split('.')) + '.py')] == []
  assert undefined(text, defined_flags()) == []
