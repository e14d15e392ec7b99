# callmfa: `make demo` and `make test` do all the set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SANDBOX := bash docker/sandbox/sandbox.sh
# The end-to-end tests mostly wait on calls (greetings, timeouts), not on the CPU: two
# workers, each with its own sandbox, a whole module at a time (module fixtures stay shared).
PYTEST_ARGS ?= -n 2 --dist loadfile
BENCH_ARGS ?=

.PHONY: help deps venv lint test unit images demo sandbox-up sandbox-down clean prompts bench bench-keys bench-radius docs lock

help:
	@echo "make demo          one real verification call to a simulated phone, end to end"
	@echo "make test          lint, types and every test (unit, integration, end-to-end)"
	@echo "make images        the callmfa and callmfa-asterisk images, with podman (docker/images.sh)"
	@echo "make sandbox-up    Asterisk + Redis + callmfa serve in netns \$$CALLMFA_NETNS (default callmfa)"
	@echo "make sandbox-down  stop them and remove the namespace"
	@echo "make prompts       callmfa's own prompt recordings into build/prompts/<lang>/callmfa/"
	@echo "make bench         benchmark vs the pure-dialplan floor (BENCH_ARGS=--full: 10k soak)"
	@echo "make bench-keys    10k verifications, '#' at a random moment 0-3 s, AMD off and on"
	@echo "make bench-radius  the latency the RADIUS front adds over the Redis contract"

deps:
	$(SANDBOX) deps

$(VENV)/.installed: pyproject.toml docker/requirements.lock
	@command -v $(PYTHON) >/dev/null || $(SANDBOX) deps
	@[ -e /usr/include/ldap.h ] || $(SANDBOX) deps  # bonsai (dev group) builds on libldap
	$(PYTHON) -m venv $(VENV) || { $(SANDBOX) deps && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade 'pip>=25.1'
	$(VENV)/bin/pip install -q -e . --group dev -c docker/requirements.lock
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Both images with podman, on local bases (no registry pulls); cached, so a second run is fast.
images: deps
	bash docker/images.sh

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
# tests/e2e/test_images.py checks the images' root filesystems and runs their callmfa serve.
test: deps venv lint images
	@rc=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; \
	exit $$rc

unit: venv
	$(VENV)/bin/pytest tests/unit tests/integration $(PYTEST_ARGS)

# Needs espeak-ng and sox (make deps installs them). Copy build/prompts/* into Asterisk's
# sounds directory (e.g. /usr/share/asterisk/sounds/) on the Asterisk host.
prompts: venv
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || $(SANDBOX) deps
	$(VENV)/bin/python -m ivr.ops.promptgen build/prompts

sandbox-up: deps venv
	$(SANDBOX) up

sandbox-down:
	$(SANDBOX) down

demo: deps venv
	$(SANDBOX) up
	@rc=0; $(SANDBOX) exec $(VENV)/bin/python docker/sandbox/demo.py || rc=$$?; \
	$(SANDBOX) down; exit $$rc

$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q --group bench
	touch $@

# A few minutes; BENCH_ARGS="--full" adds the 10,000-verification soak, --help lists the rest.
bench: deps venv $(VENV)/.bench-installed
	$(VENV)/bin/python -m bench --plot .sandbox-bench/benchmarks.png $(BENCH_ARGS)

# The keys run: does every '#' count whenever it is pressed (lost keys, key -> outcome)? ~15 min.
bench-keys: deps venv $(VENV)/.bench-installed
	$(VENV)/bin/python -m bench --keys 10000 $(BENCH_ARGS)
# The latency the RADIUS front adds over the Redis contract (docs/radius.md); needs redis-server.
bench-radius: venv
	$(VENV)/bin/python -m bench.radius $(BENCH_ARGS)

# The settings tables in README.md and docs/settings.md, from ivr/settings.py; the Redis ACL
# in docs/operations.md and docker/redis/callmfa.acl, from ivr/storage/acl.py.
docs: venv
	$(VENV)/bin/python -m ivr.ops.reference README.md docs/settings.md docs/operations.md \
	  docker/redis/callmfa.acl

# docker/requirements.lock: the runtime dependencies as a fresh install resolves them today.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q '.[ldap]'
	{ sed -n '/^#/p' docker/requirements.lock; .lock-venv/bin/pip freeze --exclude callmfa; } \
	  >docker/requirements.lock.new && mv docker/requirements.lock.new docker/requirements.lock
	rm -rf .lock-venv

clean: sandbox-down
	rm -rf $(VENV) .sandbox .sandbox-test .sandbox-test-* .sandbox-bench *.egg-info
