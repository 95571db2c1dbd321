#!/usr/bin/env bash
# Creates (or verifies) the project virtualenv from requirements.lock.
#
# Idempotent: the venv records a hash of the lock file, pyproject.toml and this
# script; when they match, nothing is installed and this returns in well under
# a second. Any change to them rebuilds the venv from nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.tff-rec-installed"

want="$(cat requirements.lock pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  echo "setup: $VENV is up to date (lock $(echo "$want" | cut -c1-12))"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: error: $PYTHON not found; tff-rec needs Python 3.11 (TFF 0.87 supports <3.12)." >&2
  exit 1
fi

echo "setup: building $VENV from requirements.lock (one-time, about a minute)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# Quiet pip, but keep its errors. --no-deps: the lock is the complete set.
"$VENV/bin/pip" install --quiet --no-deps -r requirements.lock 2>&1 \
  | grep -v "^WARNING: Location '.*' is ignored" || true
"$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v "^WARNING: Location '.*' is ignored" || true

# The lock must be complete and consistent; the only accepted mismatch is
# TFF's jaxlib pin (see requirements.lock).
check="$("$VENV/bin/pip" check 2>&1 || true)"
unexpected="$(echo "$check" | grep -v -E '^No broken requirements|tensorflow-federated 0\.87\.0 has requirement jaxlib==0\.4\.14' | grep -v '^$' || true)"
if [[ -n "$unexpected" ]]; then
  echo "setup: error: the installed set is inconsistent:" >&2
  echo "$unexpected" >&2
  exit 1
fi
"$VENV/bin/python" -c "import tensorflow_federated, tensorflow_recommenders, tff_rec" 2>/dev/null \
  || { echo "setup: error: imports failed after install" >&2; exit 1; }

echo "$want" > "$STAMP"
echo "setup: done: $("$VENV/bin/python" --version), tensorflow-federated 0.87.0"
