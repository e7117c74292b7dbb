# Khala: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000

# Defaults used by `make test` (override on the command line or in the environment).
TEST_DATABASE_URL ?= postgres://root@127.0.0.1:5432/khala
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: database dev-signing-keys run test test-python test-proto test-js venv deps-base deps-test migrate demo-user serve serve-uvicorn pytest proto-check js-deps js-test bench clean

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Khala needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(VENV)/bin/activate

# Stamp files: reinstall only when a requirements file changes.
# The Python client (and its `khala` CLI) needs nothing beyond base.txt, so `make run` installs it
# too: a newcomer can `.venv/bin/khala tail ...` against the server it just started.
$(VENV)/.deps-base: requirements/base.txt clients/python/pyproject.toml | venv
	$(PIP) install --quiet -r requirements/base.txt
	$(PIP) install --quiet -e clients/python
	touch $@

$(VENV)/.deps-test: $(VENV)/.deps-base requirements/test.txt | venv
	$(PIP) install --quiet -r requirements/test.txt
	touch $@

deps-base: $(VENV)/.deps-base
deps-test: $(VENV)/.deps-test

# With DATABASE_URL set: create that PostgreSQL database if it is missing (one clear line when it
# cannot). Without it: nothing (the embedded SQLite file is created by migrate).
database: deps-base
	@$(PY) -m khala_project.create_database

migrate: database
	$(PY) manage.py migrate --noinput

demo-user: migrate
	$(PY) manage.py ensure_demo_user --url http://$(HOST):$(PORT)

# Both go through the one server entry (khala_project/serve.py), which sets the WebSocket limits the
# protocol documents; the Dockerfile, docker-compose.yml and the test harness use it too.
serve: deps-base
	$(PY) -m khala_project.serve --server daphne --host $(HOST) --port $(PORT)

serve-uvicorn: deps-base
	$(PY) -m khala_project.serve --server uvicorn --host $(HOST) --port $(PORT)

# A development signing key in var/dev-signing-keys, generated once, used only when
# KHALA_SIGNING_KEYS is unset (see README "Sync tokens" and docs/sync/KEY_ROTATION.md).
run dev-signing-keys: export KHALA_SIGNING_KEYS_FILE ?= $(CURDIR)/var/dev-signing-keys
dev-signing-keys: deps-base
	@if [ -z "$$KHALA_SIGNING_KEYS" ] && [ ! -s "$$KHALA_SIGNING_KEYS_FILE" ]; then \
		$(PY) manage.py sync_keys generate --output "$$KHALA_SIGNING_KEYS_FILE"; fi

## make run: install everything, create the database (DATABASE_URL) if missing, migrate, ensure the
## demo user, start daphne on $(HOST):$(PORT) (default 127.0.0.1:8000; `make run PORT=8001`).
## /live/ uses the WebSocket lane here (KHALA_WEB_SYNC_ENABLED defaults on under make run only;
## a deployment keeps the documented default, off, until its cutover).
run: export KHALA_WEB_SYNC_ENABLED ?= 1
run: dev-signing-keys demo-user serve

## make test: the whole suite against PostgreSQL and Redis, plus proto checks and client suites.
test: deps-test test-proto test-python test-js test-browser

TEST_ENV = DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)}

# Python suite: server tests (tests/) and the Python client's tests.
test-python: deps-test
	$(TEST_ENV) $(VENV)/bin/pytest -p no:cacheprovider --ignore=tests/browser $(PYTEST_ARGS)

# Proto contract checks: buf lint, buf breaking against the released baseline, generated code up to date.
# buf comes from the @bufbuild/buf npm package pinned in package.json/package-lock.json.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

test-proto: deps-test node_modules/.package-lock.json
	scripts/proto-check.sh
	PYTHON=$(PY) scripts/verify-proto-generate.sh

# JavaScript suites (client package; node's test runner against a real server).
test-js: deps-test
	npm ci --prefix tests/phoenix_js --no-audit --no-fund
	$(TEST_ENV) node --test tests/phoenix_js/*.test.mjs
	npm ci --prefix clients/js --no-audit --no-fund
	$(TEST_ENV) npm test --prefix clients/js

# Browser suite: the admin and /live/ in Debian's headless Chromium (/usr/bin/chromium, installed by
# .ci/run) driven by playwright-core (pinned in tests/browser/package.json; it downloads no browser).
# KHALA_UPDATE_SCREENSHOTS=1 refreshes docs/img/.
test-browser: deps-test
	npm ci --prefix tests/browser --no-audit --no-fund
	$(TEST_ENV) $(VENV)/bin/pytest -p no:cacheprovider tests/browser $(PYTEST_ARGS)
	node --test tests/browser/*.test.mjs

bench: deps-test
	@echo "see bench/README.md for each benchmark's command"

clean:
	rm -rf $(VENV) var node_modules
