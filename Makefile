# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
STAMP := $(VENV)/.xrayfx-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,lite0,dicom,dist,openvino,fp16]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xrayfx demo --out demo-output $(ARGS)

test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf cache demo-output .pytest_cache
