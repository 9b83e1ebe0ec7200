# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
STAMP := $(VENV)/.xrayfx-installed

.PHONY: demo test test-slow install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,lite0,dicom,dist,openvino,fp16]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xrayfx demo --out demo-output $(ARGS)

# Tests run in parallel worker processes (one per core, at most 4; TEST_WORKERS=0 runs them in one process);
# each test file stays in one worker, so its module fixtures are built once.
# `make test` leaves out the three largest paper-backbone exports (marker `slow`); `make test-slow` runs them.
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile)

test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf cache demo-output .pytest_cache
