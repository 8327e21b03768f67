# `make run`  — set up .venv if needed and start the app on its embedded default.
# `make test` — set up .venv (with test tools) and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# then builds the C++ CPU kernels (cfd/cpu_kernel.py) ahead of serving, again
# when their sources change; a failed build does not fail the install (the app
# then renders with pure torch and says so)
$(STAMP): requirements.txt cfd/_composite_cpu.cpp cfd/_project_cpu.cpp | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m cfd.cpu_kernel || echo "cfd: the C++ CPU kernels did not build; pure torch stands in"
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(STAMP)
	$(PY) app.py

# one intra-op thread: the suite is many small tensor ops, which run several
# times slower with two threads on these 2-core machines
test: $(DEV_STAMP)
	sh scripts/setup_browser.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m cfd.bench render --json outputs/bench_render.json

clean:
	rm -rf $(VENV) .pytest_cache outputs
