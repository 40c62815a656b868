# The two commands a user needs: `make demo` (the main job) and `make test`. Both install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONWARNINGS ?= ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning
export HF_HUB_OFFLINE ?= 0

.PHONY: install test test-fast demo app lint benchmark clean

install:
	@bash tools/install_env.sh

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# make demo IMAGE=photo.jpg PROMPT="person. dog." grounds your own picture (GLIP-T when cached, else the embedded model)
demo:
	@EXTRAS="" bash tools/install_env.sh
	$(PY) demo/make_demo.py $(if $(IMAGE),--image "$(IMAGE)") $(if $(PROMPT),--prompt "$(PROMPT)")

# The web demo on http://127.0.0.1:7860 (demo/app.py); e.g. make app APP_ARGS="--port 8080 --weights GLIP-T"
app: install
	$(PY) demo/app.py $(APP_ARGS)

lint: install
	$(PY) -m ruff check glip_d2 tests tools demo train_net.py

benchmark: install
	$(PY) tools/speed_report.py

clean:
	rm -rf $(VENV) output datasets/synthetic
