# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv
# when it is missing and installs the project into it; the install re-runs only
# when pyproject.toml changes (a stamp file), so a second run starts in seconds.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vitkit-installed
# The PyTorch build to install when the venv has none (override on other machines,
# e.g. `make test TORCH_SPEC="torch torchvision"`).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# pytest workers: the suite is CPU-bound and sized for a 2-core machine
TEST_WORKERS ?= 2

.PHONY: demo test install clean chromium mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitkit demo

test: $(STAMP) chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# The page test (tests/test_serve_browser.py) drives Debian's chromium with Playwright. Installed here where
# apt-get can (as root); otherwise that one test skips and says why. Never fails the target.
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: tests/test_serve_browser.py will skip"

# Mutation testing, not part of `test` or CI: installs mutmut into the venv when missing, runs it at
# the lowest CPU priority (tools/mutation.py, config in pyproject.toml) and writes the record
# benchmarks/mutation.md. By default only the functions changed since the record (the rest carry
# over); a part: MUTANTS='vitkit.train.ema.*' (globs, not expanded by the shell: set -f);
# every mutant: ALL=1 (hours on 2 cores).
MUTANTS ?=
ALL ?=
MUTATION_JOBS ?= $(TEST_WORKERS)

mutation: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e '.[dev,mutation]'
	set -f; $(PY) tools/mutation.py run --jobs $(MUTATION_JOBS) $(if $(MUTANTS),$(MUTANTS),$(if $(ALL),,--changed))

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
