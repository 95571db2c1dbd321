# The two commands of the README:
#   make demo   set up the virtualenv from nothing (if needed) and run the main job
#   make test   set up if needed and run the test suite
PY := .venv/bin/python
DATA_DIR ?= data
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test prepare clean
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m experiments.prepare_data --flagfile=configs/prepare_movielens_100k.flags --data_dir=$(DATA_DIR)

test: setup
	$(PY) -m pytest

clean:
	rm -rf .venv .pytest_cache
