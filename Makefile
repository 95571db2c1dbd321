# The two commands of the README:
#   make demo   set up the virtualenv from nothing (if needed), prepare MovieLens-100K
#               (if absent), train Federated Reconstruction MF and print its results
#   make test   set up if needed and run the test suite
# and `make bench` runs every benchmark (docs/performance.md).
PY := .venv/bin/python
DATA_DIR ?= data
RUNS_DIR ?= runs
# TensorFlow's C++ start-up lines off, as the binaries have them (tff_rec/quiet.py).
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup demo test prepare bench clean
setup:
	@bash scripts/setup_env.sh

$(DATA_DIR)/movielens_100k/clients.sqlite: | setup
	$(PY) -m experiments.prepare_data --flagfile=configs/prepare_movielens_100k.flags --data_dir=$(DATA_DIR)

prepare: setup $(DATA_DIR)/movielens_100k/clients.sqlite

demo: prepare
	$(PY) -m experiments.train_federated --flagfile=configs/demo_fedrecon_mf.flags \
	  --data_dir=$(DATA_DIR)/movielens_100k --root_output_dir=$(RUNS_DIR)

test: setup
	$(PY) -m pytest

SYNTHETIC_1M := $(DATA_DIR)/synthetic_u1000000_i2000_s0
$(SYNTHETIC_1M)/clients.sqlite: | setup
	$(PY) -m experiments.prepare_data --flagfile=configs/prepare_synthetic_1m.flags --data_dir=$(DATA_DIR)

# Every benchmark (docs/performance.md); the first run also prepares the 1M-user population (~5 min, 27 GB).
bench: prepare $(SYNTHETIC_1M)/clients.sqlite
	$(PY) -m benchmarks.federated_speed --data_dir=$(DATA_DIR)/movielens_100k
	$(PY) -m benchmarks.population_scaling --large_dir=$(SYNTHETIC_1M) --small_dir=$(DATA_DIR)/synthetic_u1000_i2000_s0
	$(PY) -m benchmarks.serving_speed
	$(PY) -m benchmarks.group_metrics_cost
	$(PY) -m benchmarks.defence_cost --defences=none,row_bound,trimmed_mean --bench_rounds=40
	$(PY) -m benchmarks.serving_speed --model=sequence_two_tower --history=200 --calls=1000

clean:
	rm -rf .venv .pytest_cache
