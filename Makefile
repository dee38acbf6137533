# The two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv system-deps lock clean

$(BIN)/federation: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,postgres]'
	touch $@

venv: $(BIN)/federation

system-deps:
	bash scripts/install-system-deps.sh

## Run a whole federation on this machine (local influxd per DC + central, coordinator, agents).
demo: system-deps venv
	$(BIN)/federation demo

## Run the test suite against real influxd processes, on two pytest-xdist workers: the tests
## on the wall clock in two groups (real Kapacitor; the other scenarios), one per worker.
test: system-deps venv
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=15

## Refresh constraints.txt from the current environment (after changing dependencies).
lock: venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
