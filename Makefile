# Two commands do all set-up on a fresh Linux machine with Python 3.11:
#   make demo   a real 2-process distributed training run of examples/digits.py (CPU when no GPU)
#   make test   the whole test suite (as root it also installs and starts a local Slurm cluster)
# Both create ./.venv and install what they need into it. torch is pinned so that a CPU
# build is used for the tests (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-range bench lint docs clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,examples,tuner,docs]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/distengine launch --cpus 2 examples/digits.py --max-epochs 10

# The whole suite (no PYTEST_ARGS) first checks that the disk has room for the run (the range
# environments are CUDA builds of torch, about 5.5 GB each) and stops at once if not; then it
# starts, in the background, the build of the reference
# Lightning environments of tests/conformance that are needed (2.x always: a few tests run real
# Lightning each time; 1.x only for scripts whose Lightning result is not stored in
# tests/conformance/reference/), the build of the
# torch-range environments (tests/torch_range.py: one for the oldest and one for the newest
# supported torch, a few minutes of pip, one install at a time) and the range run on the oldest
# torch (the torch-sensitive tests, one process). Beside it the main suite runs on the pinned
# torch in two pytest-xdist workers (PYTEST_PAR; tests/conftest.py keeps a file with a module
# fixture, and the Slurm tests, on one worker): much of a distributed test is waiting on its
# processes, so three pytest processes keep the two cores busy. When the main suite is done the
# range run on the newest torch takes its place, in two workers. The range runs' output is
# printed at the end. Any of them failing fails `make test`.
PYTEST_PAR ?= -n 2 --dist loadgroup
test: $(VENV)/.installed
	@rm -f .torch-range/*.rc; if [ -z "$(PYTEST_ARGS)" ]; then \
	  $(PY) -m tests.torch_range disk || exit 1; \
	  $(PY) -m tests.conformance.envs --needed > /dev/null 2>&1 & mkdir -p .torch-range; \
	  echo "the torch-range run goes on in the background (.torch-range/oldest.log), printed at the end"; \
	  $(PY) -m tests.torch_range build > .torch-range/build.log 2>&1 & \
	  ($(PY) -m tests.torch_range run --version oldest > .torch-range/oldest.log 2>&1; \
	   echo $$? > .torch-range/oldest.rc) & fi; \
	bash .ci/slurm-setup.sh && $(PY) -m pytest -q -ra --durations=25 $(PYTEST_PAR) $(PYTEST_ARGS); rc=$$?; \
	if [ -z "$(PYTEST_ARGS)" ]; then \
	  echo "the torch-range run on the newest torch (.torch-range/newest.log), printed at the end"; \
	  $(PY) -m tests.torch_range run --version newest $(PYTEST_PAR) > .torch-range/newest.log 2>&1 \
	    || rc=1; fi; \
	wait; if [ -z "$(PYTEST_ARGS)" ]; then cat .torch-range/oldest.log .torch-range/newest.log; \
	  [ "$$(cat .torch-range/oldest.rc 2>/dev/null)" = 0 ] || rc=1; fi; exit $$rc

# The suite without the tests marked slow (soak, chaos, the longest resume and Slurm requeue
# runs): no Slurm set-up, no torch-range run. `make test` runs everything.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_PAR) $(PYTEST_ARGS)

# Only the torch-sensitive tests on the oldest and newest supported torch (tests/torch_range.py).
test-range: $(VENV)/.installed
	$(PY) -m tests.torch_range run $(PYTEST_PAR) $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m benchmarks

# The documentation site (mkdocs, Material theme, API pages from docstrings) into ./site;
# --strict fails on a broken link or reference. `mkdocs serve` previews it while you edit.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check distengine tests benchmarks examples

clean:
	rm -rf $(VENV) build site *.egg-info
