# Two set-up commands: `make run` and `make test`. Everything else is for working on the project.
SHELL := /bin/bash
PYTHON ?= python3.11
TORCH  ?= torch==2.13.0
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME_VENV ?= .venv-runtime
WORKSPACE ?= workspace

.PHONY: run test test-fast test-steps test-notebooks test-pytest test-docs check-sync runtime-env check-runtime readme lab docs bench install install-dev clean
.DEFAULT_GOAL := run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, from $(TORCH), so that nothing later can pull a different (multi-GB) build.
$(VENV)/.mlsys-installed: $(BIN)/python setup.py settings.ini
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip check
	@touch $@

$(VENV)/.mlsys-installed-dev: $(VENV)/.mlsys-installed
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	-$(BIN)/nbdev_install_hooks >/dev/null 2>&1
	@touch $@

install: $(VENV)/.mlsys-installed
install-dev: $(VENV)/.mlsys-installed-dev

run: install
	$(BIN)/mlsys run --workspace $(WORKSPACE)

# Fails, with the files named, when nbdev_clean or nbdev_export would change anything, or README.md is stale.
check-sync: install-dev
	@before=$$(find nbs mlsys -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs md5sum); \
	$(BIN)/nbdev_clean >/dev/null && $(BIN)/nbdev_export >/dev/null; \
	after=$$(find nbs mlsys -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs md5sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "ERROR: notebooks were not clean or the library was out of sync; nbdev_clean/nbdev_export changed:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^>' | awk '{print "   ", $$3}'; \
	  echo "Commit those changes (they are now in your tree) and rerun."; exit 1; fi
	@$(BIN)/python .ci/readme.py --check
	@echo "check-sync: notebooks clean, library in sync, README in sync"

# The package as a user gets it: `pip install .` (not editable, no extras) in a second environment, used from outside
# the repository. Every module and every job notebook's imports must load there, and the pipeline must run end to end.
$(RUNTIME_VENV)/.installed: setup.py settings.ini $(wildcard mlsys/*.py) $(wildcard nbs/jobs/*.ipynb)
	rm -rf $(RUNTIME_VENV) build
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install --quiet --no-compile $(TORCH)
	$(RUNTIME_VENV)/bin/pip install --quiet --no-compile .
	$(RUNTIME_VENV)/bin/pip check
	@touch $@

runtime-env: $(RUNTIME_VENV)/.installed

# The pipeline with one BLAS/OpenMP thread a process (TEST_THREADS, below): .ci/run runs it beside the two test workers,
# where a second thread only spins (its training stage took 81 s with two threads there, 21 s alone with one).
check-runtime: runtime-env
	cd $$(mktemp -d) && $(CURDIR)/$(RUNTIME_VENV)/bin/python $(CURDIR)/.ci/imports.py
	cd $$(mktemp -d) && $(TEST_THREADS) $(CURDIR)/$(RUNTIME_VENV)/bin/mlsys run --workspace workspace

# Two notebooks or two test workers share the machine's cores, each with its kernels and `mlsys run` subprocesses: one
# BLAS/OpenMP thread per process. With two each, PyTorch's threads spin against each other (a training step measured
# 2.1 ms with one thread and 10.3 ms with two while another process ran).
TEST_THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# The chapters run as `nbdev_test --flags slow --n_workers 2 --timing` runs them (same cells, flags, failures and timing
# table), and each executed chapter is kept, with its outputs, in _build/executed/: `make docs` renders the site from
# there instead of executing every chapter a second time. A chapter whose text, library and flags are unchanged since
# its last passing run is not run again (a clean clone, as in CI, runs them all); FORCE=1 runs them all anyway.
test-notebooks: install-dev
	$(TEST_THREADS) $(BIN)/python -m mlsys.site execute --flags slow --n_workers 2 --timing $(if $(FORCE),--force)

test-pytest: install-dev
	$(TEST_THREADS) $(BIN)/pytest tests -q -p no:cacheprovider -n 2 --dist loadgroup --durations 15 -m 'not docs'

# The site from the chapters test-notebooks executed (`make docs`; only stale chapters run again), then its pages in
# headless Chromium (tests/test_site.py), and the five ipywidgets panels dragged in a real JupyterLab (tests/test_lab.py);
# marked docs, skipped, saying why, where chromium is not installed.
test-docs: install-dev
	$(TEST_THREADS) $(BIN)/pytest tests/test_site.py tests/test_lab.py -q -p no:cacheprovider -m docs -rs --durations 5

# `make test` runs these in order; .ci/run runs the same list (runtime-env and check-runtime beside test-pytest, whose two
# workers leave a core idle at times) and prints how long each step took and the wall-clock time after the install.
TEST_STEPS := install-dev check-sync test-notebooks test-docs test-pytest runtime-env check-runtime
test-steps:
	@echo $(TEST_STEPS)

test: $(TEST_STEPS)

test-fast: check-sync
	$(TEST_THREADS) $(BIN)/nbdev_test --n_workers 2
	$(TEST_THREADS) $(BIN)/pytest tests -q -m 'not slow and not service and not docs' -p no:cacheprovider -n 2 --dist loadgroup

readme: install-dev
	$(BIN)/python .ci/readme.py

lab: install-dev
	$(BIN)/jupyter lab --notebook-dir nbs

# The site in _docs/: chapters executed where stale (see test-notebooks), processed as nbdev_docs does, rendered by
# Quarto where it is on PATH (the conda environment brings it) and as static HTML by nbconvert where it is not.
# Open _docs/index.html. STATIC=1 uses nbconvert even where Quarto is installed.
docs: install-dev
	$(TEST_THREADS) $(BIN)/python -m mlsys.site docs $(if $(STATIC),--static)

bench: install
	$(BIN)/mlsys bench all --workspace $(WORKSPACE)

clean:
	rm -rf _docs _proc _build nbs/_site .pytest_cache
