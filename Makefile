# The two commands of the README:
#   make demo   set up the virtualenv from nothing (if needed) and run the main job
#   make test   set up if needed and run the test suite
PY := .venv/bin/python
DATA_DIR ?= data

.PHONY: setup demo test prepare clean
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m experiments.prepare_data --dataset=movielens_100k --data_dir=$(DATA_DIR)

test: setup
	$(PY) -m pytest

clean:
	rm -rf .venv .pytest_cache
