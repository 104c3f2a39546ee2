# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/royalty demo

# Two workers, one per core; worksteal rebalances around the long state-machine and crash tests.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal

bench: $(STAMP)
	# Each benchmark exits 1 when it misses a target; '-' runs the rest anyway (the table in docs/BENCHMARKS.md says which).
	-$(PY) benchmarks/journal.py
	-$(PY) benchmarks/datanet.py
	-$(PY) benchmarks/ledger.py
	-$(PY) benchmarks/fees.py
	-$(PY) benchmarks/ledger_verify.py
	-$(PY) benchmarks/train.py
	-$(PY) benchmarks/attribution/b0.py
	-$(PY) benchmarks/attribution/spans.py
	-$(PY) benchmarks/attribution/b1.py
	-$(PY) benchmarks/attribution/b1.py --all-linear
	-$(PY) benchmarks/attribution/b1.py --base-seed 1
	-$(PY) benchmarks/attribution/query.py
	-$(PY) benchmarks/attribution/capture.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis benchmarks/.work
