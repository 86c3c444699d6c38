# The project's front door. `make run` and `make test` need nothing installed beforehand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DEPS := clients/node/node_modules/.installed
PATRONI := .patroni/.installed
OIDC_DEPS := tests/oidc/node_modules/.installed

.PHONY: run stop test mutate proto bench lint fmt clean node-deps oidc-deps chromium patroni etcd

run: $(STAMP)  ## embedded PostgreSQL, migrations, demo seed, authority on :50051, REST on :8084; Ctrl-C stops it all
	@$(BIN)/python -m credit_service up

# What `make run` left running: a `make run` of this checkout (another terminal), the embedded PostgreSQL under
# .data/ (CREDIT_EMBEDDED_PG_KEEP=1, or a run killed with SIGKILL). Without .venv, PostgreSQL's own pid file.
stop:  ## stop a running `make run` and the embedded PostgreSQL under .data/
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m credit_service stop; \
	elif [ -f .data/pg/postmaster.pid ] && kill -0 $$(head -1 .data/pg/postmaster.pid) 2>/dev/null; then \
		pid=$$(head -1 .data/pg/postmaster.pid); echo "stopping PostgreSQL (pid $$pid)"; kill -INT $$pid; \
		while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; \
	fi

test: lint $(NODE_DEPS) $(OIDC_DEPS) chromium patroni  ## lint, every test (real PostgreSQL, real gRPC servers), then 3 mutants of the day
	$(BIN)/python -m pytest
	$(BIN)/python -m mutation --rotate 3 --no-baseline

mutate: $(STAMP)  ## the mutation gate: every deliberate breakage in mutation/mutants.py must fail its tests
	$(BIN)/python -m mutation

proto: $(STAMP)  ## regenerate credit/v1 (code and mypy stubs) from protos/
	$(BIN)/python -m credit_service.protogen .

bench: $(STAMP)  ## benchmarks (figures, not tests)
	@command -v h2load >/dev/null || apt-get install -y -q nghttp2-client >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nghttp2-client >/dev/null 2>&1) \
		|| echo "h2load (Debian's nghttp2-client) could not be installed: the compiled-client transport check is skipped"
	$(BIN)/python -m bench

lint: $(STAMP)  ## ruff and mypy (with mypy-protobuf stubs of the generated code)
	$(BIN)/ruff check .
	$(BIN)/python -m mypy

fmt: $(STAMP)  ## sort imports and apply ruff's safe fixes
	$(BIN)/ruff check --fix .

clean: stop  ## stop what is running (make stop), then remove the virtualenv and all local data
	rm -rf $(VENV) .patroni .data .pytest_cache .hypothesis

# The virtualenv and the packages; on a terminal every step named with its duration and pip's own progress
# (CREDIT_QUIET=1, or no terminal: pip --quiet, nothing printed unless a step fails).
$(STAMP): pyproject.toml
	@$(PY) -m credit_service.bootstrap $(VENV) $(if $(filter 1 true yes,$(CREDIT_QUIET)),--quiet)
	@touch $(STAMP)

node-deps: $(NODE_DEPS)  ## Node.js client deps and the pinned buf CLI (npm ci from clients/node/package-lock.json)

$(NODE_DEPS): clients/node/package.json clients/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "installing Debian's nodejs and npm (the Node client and buf tests need them)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd clients/node && npm ci --no-audit --no-fund && touch node_modules/.installed

oidc-deps: $(OIDC_DEPS)  ## the tests' OpenID provider (oidc-provider; npm ci from tests/oidc/package-lock.json)

$(OIDC_DEPS): tests/oidc/package.json tests/oidc/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "installing Debian's nodejs and npm (the SSO tests' OpenID provider needs them)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd tests/oidc && npm ci --no-audit --no-fund && touch node_modules/.installed

chromium:  ## Debian's headless Chromium for the console's browser tests (apt, only when /usr/bin/chromium is missing)
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium (the console's browser tests need it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

patroni: etcd $(PATRONI)  ## etcd and Patroni for the HA failover test (tests/faults/test_patroni_failover.py)

# Patroni runs as PostgreSQL's unprivileged system user, who cannot execute the project's interpreter when it
# lives under /root (pyenv): its own virtualenv of Debian's /usr/bin/python3, pinned by requirements.txt.
$(PATRONI): deploy/patroni/requirements.txt
	@test -x /usr/bin/python3 && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || { echo "installing Debian's python3-venv (Patroni's virtualenv needs it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; }
	test -x .patroni/bin/python || /usr/bin/python3 -m venv .patroni
	.patroni/bin/python -m pip install --quiet -r deploy/patroni/requirements.txt
	touch $(PATRONI)

etcd:  ## Debian's etcd 3.4 (apt, only when /usr/bin/etcd is missing): Patroni's consensus store
	@test -x /usr/bin/etcd || { echo "installing Debian's etcd-server (the Patroni failover test needs it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }
