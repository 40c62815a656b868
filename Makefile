# The two commands a user needs: `make demo` (the main job) and `make test`. Both install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONWARNINGS ?= ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning
export HF_HUB_OFFLINE ?= 0

.PHONY: install test test-fast demo lint benchmark clean

install:
	@bash tools/install_env.sh

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(PY) demo/make_demo.py

lint: install
	$(PY) -m ruff check glip_d2 tests tools demo train_net.py

benchmark: install
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) output datasets/synthetic
