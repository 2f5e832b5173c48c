# Koppeltaal Hub — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SOURCES := hub tests examples tools bench
# `make run PORT=8090` serves another port, and the hub's public URL (token audience,
# links) follows it unless HUB_PUBLIC_URL says otherwise.
PORT ?= 8080

.PHONY: install lock run test lint format bench demo clean browser

install: $(INSTALLED)

# The virtualenv is rebuilt from the hashed lock whenever the lock or pyproject changes.
$(INSTALLED): requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Re-pin both locks after a change to the dependencies in pyproject.toml. uv keeps every
# version already in a lock (it upgrades nothing unless asked with --upgrade-package), so
# only new or dropped packages change; the next `make install` then installs the result.
lock: install
	$(BIN)/uv pip compile --quiet pyproject.toml requirements-build.in --python-version 3.11 --generate-hashes -o requirements.lock
	$(BIN)/uv pip compile --quiet pyproject.toml requirements-build.in --extra dev --python-version 3.11 --generate-hashes -o requirements-dev.lock

run: install
	HUB_PUBLIC_URL="$${HUB_PUBLIC_URL:-http://127.0.0.1:$(PORT)}" $(BIN)/hub serve --port $(PORT)

test: lint browser
	$(BIN)/pytest -n auto --dist loadgroup

# The pages (the delivery console, the portal's push opt-in) are tested in a real headless
# browser: Debian's Chromium, driven by Playwright (HUB_TEST_CHROMIUM names another one).
browser:
	@command -v chromium >/dev/null || { \
		echo "Installing Chromium for the browser tests (apt-get)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy hub tests examples tools bench
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

bench: install
	$(BIN)/python -m bench

# `make demo DEMO_PORT=8091 PORTAL_PORT=9443`: the demo's hub (default: a free port) and
# its portal (default: 8443, the port examples/apps.yaml registers).
demo: install
	$(BIN)/python -m examples.demo $(if $(DEMO_PORT),--hub-port $(DEMO_PORT)) $(if $(PORTAL_PORT),--portal-port $(PORTAL_PORT))

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
