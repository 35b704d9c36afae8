# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
EXT    := $(shell ls proxy/_ratelimit*.so 2>/dev/null | head -n1)
# The unit suites of the modules compiled from .py (setup.py's COMPILED), run again against the .py twins.
PURE_TESTS := tests/test_listener.py tests/test_upstream.py tests/test_admission.py tests/test_flow.py \
              tests/test_limiter.py tests/test_metrics.py

.PHONY: demo test bench build redis-server nginx lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Editable install compiles the Cython parts in place; re-run when the build inputs change.
$(STAMP): $(PY) pyproject.toml setup.py proxy/_ratelimit.pyx
	$(PIP) install -q -e '.[test,bench]'
	touch $(STAMP)

# Recompiles what changed (proxy/_ratelimit.pyx, and each module in setup.py's COMPILED with its .pxd).
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

nginx:
	@command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v hey >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk hey >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk hey >/dev/null; }; \
	  else \
	    echo "bench needs nginx, wrk and hey: run 'sudo apt-get install nginx wrk hey'" >&2; exit 1; \
	  fi; }

demo: build
	$(VENV)/bin/sluicegate demo

# pytest exits 5 when it collects nothing; that is not a failure of the code. The compiled modules'
# unit suites run a second time against their pure-Python twins (SLUICEGATE_PURE=1, tests/builds.py).
test: build redis-server
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; [ $$rc -eq 0 ] || exit $$rc; \
	  [ -n "$(PYTEST_ARGS)" ] || SLUICEGATE_PURE=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_TESTS)

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile

# Every bench, side by side; storm.py and overhead.py rewrite their sections of bench/RESULTS.md.
bench: build redis-server nginx
	$(PY) bench/limiter.py
	$(PY) bench/cost.py
	$(PY) bench/redis_mode.py
	$(PY) bench/storm.py
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info proxy/*.c proxy/*.so
