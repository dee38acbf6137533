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

## Run the test suite against real influxd processes, in one process (see README: two xdist
## workers are faster, but three SIGINT tests fail there for a reason not yet understood).
test: system-deps venv
	$(BIN)/pytest -q

## Refresh constraints.txt from the current environment (after changing dependencies).
lock: venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
