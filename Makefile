# Two commands for a fresh machine: `make demo` and `make test`. Everything else is a detail.
PYTHON ?= python3
VENV := .venv
STACKS := new old
PYTEST_ARGS ?=
# The new stack also gets the docs tools: `make docs`, and the suite's strict build of the site (test_docs.py).
EXTRAS_new := test,lint,bench,docs
EXTRAS_old := test,lint,bench

.PHONY: demo docs test test-all lint test-new test-old bench bench-full soak clean

$(VENV)/%/.installed: pyproject.toml stacks/%.txt
	$(PYTHON) -m venv $(VENV)/$*
	$(VENV)/$*/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/$*/bin/pip install --quiet --disable-pip-version-check -r stacks/$*.txt -e '.[$(EXTRAS_$*)]'
	touch $@

demo: $(VENV)/new/.installed
	$(VENV)/new/bin/hub-prefetch demo

# The documentation site, docs/ -> build/site, in strict mode: a broken link, a page missing from the nav or a
# public member without a docstring (docs/_hooks.py) fails the build.
docs: $(VENV)/new/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/new/bin/mkdocs build --strict

lint: $(VENV)/new/.installed
	$(VENV)/new/bin/ruff check src tests benchmarks
	$(VENV)/new/bin/ruff format --check src tests benchmarks
	$(VENV)/new/bin/mypy
	$(VENV)/new/bin/mypy --config-file tests/mypy.ini tests/unit tests/integration tests/support tests/conftest.py benchmarks
	@$(MAKE) --no-print-directory docs  # a few seconds: the strict site build (links, nav, docstrings)

# Explicit targets: GNU make does not apply pattern rules to .PHONY targets.
# One pytest cache per stack: the two suites may run at the same time.
test-new: $(VENV)/new/.installed
	HUB_PREFETCH_STACK=new $(VENV)/new/bin/python -m pytest -o cache_dir=.pytest_cache/new --durations=15 $(PYTEST_ARGS)

test-old: $(VENV)/old/.installed
	HUB_PREFETCH_STACK=old $(VENV)/old/bin/python -m pytest -o cache_dir=.pytest_cache/old --durations=15 $(PYTEST_ARGS)

# Lint and the two stacks' suites run side by side (TEST_JOBS=1: one after the other; the 15 slowest tests of
# each stack are listed). The suites spend much of
# their time waiting (worker start-up, lock TTLs, throttled links), so on 2 cores the second one fills those
# waits; both venvs are built side by side too. Each target's output is shown whole when it finishes.
TEST_JOBS ?= 3

test:
	@echo "make test: lint, test-new and test-old, $(TEST_JOBS) at a time; each one's output appears when it ends"
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-all

test-all: lint test-new test-old

# Then the download engine's cells (benchmarks/engine.py): quick = 128 MB shards, full = 512 MB shards (GB of
# random bytes under /tmp, deleted as each run ends).
bench: $(VENV)/new/.installed $(VENV)/old/.installed
	$(VENV)/new/bin/python -m benchmarks.run --quick
	$(VENV)/new/bin/python -m benchmarks.engine --quick
	$(VENV)/new/bin/python -m benchmarks.fanout
	$(VENV)/new/bin/python -m benchmarks.fanout --link-mbit 80 --repeat 3
	$(VENV)/new/bin/python -m benchmarks.fanout --link-mbit 80 --bandwidth-mb 9 --repeat 3

bench-full: $(VENV)/new/.installed $(VENV)/old/.installed
	$(VENV)/new/bin/python -m benchmarks.run --full
	$(VENV)/new/bin/python -m benchmarks.engine --full

# The soak: random fault rounds (benchmarks/soak.py), then the full-size versions of the suite's many-worker
# and many-run scenarios (the tests marked `soak`, which `make test` deselects) on both stacks.
soak: $(VENV)/new/.installed $(VENV)/old/.installed
	$(VENV)/new/bin/python -m benchmarks.soak
	HUB_PREFETCH_STACK=new $(VENV)/new/bin/python -m pytest -m soak $(PYTEST_ARGS)
	HUB_PREFETCH_STACK=old $(VENV)/old/bin/python -m pytest -m soak $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/site
