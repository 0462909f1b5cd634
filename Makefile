# The two commands of the README, plus helpers. Needs python3 >= 3.11. As root on
# Debian (CI), `make test` also apt-installs the Debian packages whose real tools check
# our artefacts or serve the tests (devstack/test_tools.py TOOLS; README.md lists the
# tests that skip without them).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo up check test faults bench lint install clean

demo: install          ## one purchase end to end on the local stack, then stop it all
	$(PY) -m devstack.demo

up: install            ## start the local stack (Web UI on) and keep it running
	$(PY) -m devstack.demo --up

# The inner loop: no stack, no outside program. pytest exits 5 when the selection is
# empty and fails on an unknown marker, so `check` cannot pass having run nothing.
CHECK_TESTS := not stack and not integration

# On CHECK_WORKERS pytest-xdist workers (each its own time-skipping server). Two left
# a fifth of the 2 cores idle while workflow tests wait on their server; on a quiet
# 2-core machine pytest took 84 s on 2 workers, 66-73 s on 3, 76 s on 4 (before the
# workflow tests' sandbox passed the contracts through: 55-63 s on 3 since).
# CHECK_WORKERS=0 runs them in this one process.
CHECK_WORKERS ?= 3

check: lint            ## lint, then the unit, workflow and replay tests (under 2 minutes)
	$(PY) -m pytest -q -n $(CHECK_WORKERS) -m "$(CHECK_TESTS)"

# Modules run whole on TEST_WORKERS parallel workers, each with its own stack (free
# ports, own temp dirs): the suite mostly waits on boots, retries and SSH (a quiet
# 4-worker run used 0.8 of the 2 cores), so 6 workers overlap the waits. Modules are
# handed out in collection order, the longest first (tests/conftest.py), and a worker
# still busy with a slow one is handed a short one (tests/scheduling.py); xdist's own
# reordering (most tests first) put the long one-test fault runs last, where they ran
# alone. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 6

test: install          ## every test: unit, workflow (time-skipping), end to end, replay
	$(PY) -m devstack.test_tools
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

faults: install        ## break the local stack on purpose; prints the table and "faults: ... lost"
	$(PY) -m devstack.faults_run $(FAULTS_ARGS)

bench: install         ## in-memory Temporal: overhead vs a bare workflow, actions per purchase, waiting at scale
	$(PY) -m bench.run $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

# Current bytecode beside every module of ours, written here because the machines we run
# on set PYTHONDONTWRITEBYTECODE (so Python never caches it itself): the workflow sandbox
# executes workflows/*.py afresh for every run, and `make test` starts ~130 VPS stand-ins,
# ~150 starter commands and ~25 workers, each of which otherwise compiled the modules it
# imports (0.2 s of CPU for a VPS stand-in, 0.5 s for the starter).
SOURCES := workflows activities runtime deploy devstack bench tests starter.py worker.py codec_server.py

install: $(VENV)/.installed
	@$(PY) -m compileall -q $(SOURCES)

# uv resolves, downloads and compiles in parallel: a fresh clone's install took 14 s with it and
# 40 s with pip (quiet 2-core machine), most of `make check`'s budget. pip installs uv
# (a wheel from PyPI); should uv fail, pip installs the same requirements.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.5'
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]' \
	  || { echo "uv failed (above); installing with pip instead" >&2; \
	       $(PY) -m pip install --quiet -e '.[dev]'; }
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
