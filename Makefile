# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# playwright-core, pinned in tests/browser/package-lock.json: drives Debian's Chromium, downloads no browser
BROWSER_STAMP := tests/browser/node_modules/.package-lock.json
EXT    := $(shell ls proxy/_ratelimit*.so 2>/dev/null | head -n1)
# The unit suites of the modules compiled from .py (setup.py's COMPILED), run again against the .py twins.
PURE_TESTS := tests/test_listener.py tests/test_upstream.py tests/test_admission.py tests/test_flow.py \
              tests/test_limiter.py tests/test_metrics.py tests/test_cost_estimate.py tests/test_cost_learned.py \
              tests/test_cost_observed.py tests/test_tenants.py \
              tests/test_esapi.py tests/test_idbinding.py tests/test_shapes.py tests/test_accesslog.py

.PHONY: demo test test-fast bench bench-accuracy build redis-server nginx jdk clusters clients browser browser-tools screenshot lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Editable install compiles the Cython parts in place; re-run when the build inputs change.
$(STAMP): $(PY) pyproject.toml setup.py proxy/_ratelimit.pyx
	$(PIP) install -q -e '.[test,bench]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo needs the package and nothing else (no test or bench extras); -qq keeps pip's build chatter out.
# Reinstalled when any proxy source changes: the compiled modules are built from them (setup.py's COMPILED).
$(DEMO_STAMP): $(PY) pyproject.toml setup.py $(wildcard proxy/*.pyx proxy/*.pxd proxy/*.py)
	$(PIP) install -qq -e .
	touch $(DEMO_STAMP)

# Recompiles what changed (proxy/_ratelimit.pyx, and each module in setup.py's COMPILED with its .pxd).
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace --parallel 2

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing redis-server from Debian's packages"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }; \
	  else \
	    echo "redis-server is missing: run 'sudo apt-get install redis-server' (the tests start their own on free ports)" >&2; exit 1; \
	  fi; }

# Real OpenSearch / Elasticsearch nodes (bench/realcluster.py) need a JDK and Maven; Debian's packages will do.
jdk:
	@command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing a JDK and Maven from Debian's packages"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jdk-headless maven >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jdk-headless maven >/dev/null; }; \
	  else \
	    echo "the real-cluster tests need a JDK and Maven: run 'sudo apt-get install default-jdk-headless maven'" >&2; exit 1; \
	  fi; }

# Fetch (once per version, into ~/.cache/sluicegate) and unpack both distributions; fails loudly.
clusters: $(STAMP) jdk
	$(PY) bench/realcluster.py fetch --flavor opensearch
	$(PY) bench/realcluster.py fetch --flavor elasticsearch

# The official clients beyond the venv's: elasticsearch-py 8 (beside 9, so in a directory of its own)
# and the Node.js clients (pinned in tests/clients/package-lock.json).
ES8    := $(VENV)/es8
$(ES8)/.installed: $(PY)
	$(PIP) install -q --target $(ES8) 'elasticsearch>=8.19,<9'
	touch $@
tests/clients/node_modules/.installed: tests/clients/package.json tests/clients/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }; \
	  else echo "the client matrix needs Node.js and npm" >&2; exit 1; fi; }
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error
	touch $@
clients: $(ES8)/.installed tests/clients/node_modules/.installed

nginx:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v hey >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk hey >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk hey >/dev/null; }; \
	  else \
	    echo "bench needs nginx, wrk and hey: run 'sudo apt-get install nginx wrk hey'" >&2; exit 1; \
	  fi; }

# The status page's browser test: Debian's chromium, Node.js >= 20 and playwright-core (npm ci, pinned).
browser: browser-tools $(BROWSER_STAMP)

browser-tools:
	@command -v chromium >/dev/null 2>&1 && command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (and Node.js if missing) from Debian's packages"; \
	    pkgs="chromium"; command -v node >/dev/null 2>&1 || pkgs="$$pkgs nodejs"; command -v npm >/dev/null 2>&1 || pkgs="$$pkgs npm"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$pkgs >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$pkgs >/dev/null; }; \
	  else \
	    echo "the status page test needs chromium, node and npm: run 'sudo apt-get install chromium nodejs npm'" >&2; exit 1; \
	  fi; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || \
	  { echo "playwright-core 1.64 needs Node.js 20 or newer; this one is $$(node --version)" >&2; exit 1; }

$(BROWSER_STAMP): tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

demo: $(DEMO_STAMP)
	$(VENV)/bin/sluicegate demo

# pytest exits 5 when it collects nothing; that is not a failure of the code.
# `make test` runs everything, real OpenSearch and Elasticsearch clusters included (CI=true or not:
# a missing JDK, Maven or distribution fails). `make test-fast` is the quick loop without them.
# Both then run the compiled modules' unit suites again against their pure-Python twins
# (SLUICEGATE_PURE=1, tests/builds.py).
test: build redis-server clusters clients browser
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; [ $$rc -eq 0 ] || exit $$rc; \
	  [ -n "$(PYTEST_ARGS)" ] || SLUICEGATE_PURE=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_TESTS)

test-fast: build redis-server browser
	$(PY) -m pytest -m "not real_cluster" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; [ $$rc -eq 0 ] || exit $$rc; \
	  [ -n "$(PYTEST_ARGS)" ] || SLUICEGATE_PURE=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_TESTS)

# Refresh docs/cockpit.png: the status page during a storm, by the browser test itself (about a minute).
screenshot: $(STAMP) browser
	COCKPIT_SCREENSHOT=docs/cockpit.png $(PY) -m pytest tests/e2e/test_cockpit.py -k 'chromium and one' -q

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile

# Every bench, side by side; storm.py and overhead.py rewrite their sections of bench/RESULTS.md.
bench: build redis-server nginx
	$(PY) bench/limiter.py
	$(PY) bench/cost.py
	$(PY) bench/redis_mode.py
	$(PY) bench/storm.py
	$(PY) bench/overhead.py

# The cost model's truth table against real clusters (starts them, loads the corpus: ~10 minutes);
# rewrites its section of bench/RESULTS.md. Keep the clusters and corpus between runs with
# ACCURACY_ARGS='--data-dir /var/tmp/sluicegate/accuracy'.
bench-accuracy: $(STAMP) clusters
	$(PY) bench/accuracy.py $(ACCURACY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info proxy/*.c proxy/*.so tests/clients/node_modules tests/browser/node_modules
