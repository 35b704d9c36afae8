# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
EXT    := $(shell ls proxy/_ratelimit*.so 2>/dev/null | head -n1)

.PHONY: demo test test-fast bench bench-accuracy build redis-server nginx jdk clusters clients lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Editable install compiles proxy/_ratelimit.pyx in place; re-run when the build inputs change.
$(STAMP): $(PY) pyproject.toml setup.py proxy/_ratelimit.pyx
	$(PIP) install -q -e '.[test,bench]'
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

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

demo: $(STAMP)
	$(VENV)/bin/sluicegate demo

# pytest exits 5 when it collects nothing; that is not a failure of the code.
# `make test` runs everything, real OpenSearch and Elasticsearch clusters included (CI=true or not:
# a missing JDK, Maven or distribution fails). `make test-fast` is the quick loop without them.
test: $(STAMP) redis-server clusters clients
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

test-fast: $(STAMP) redis-server
	$(PY) -m pytest -m "not real_cluster" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile

# Every bench, side by side; storm.py and overhead.py rewrite their sections of bench/RESULTS.md.
bench: $(STAMP) redis-server nginx
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
	rm -rf $(VENV) build *.egg-info proxy/_ratelimit.c proxy/_ratelimit*.so tests/clients/node_modules
