# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
EXT    := $(shell ls proxy/_ratelimit*.so 2>/dev/null | head -n1)

.PHONY: demo test bench build redis-server nginx lint clean

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
test: $(STAMP) redis-server
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile

# Every bench, side by side; storm.py and overhead.py rewrite their sections of bench/RESULTS.md.
bench: $(STAMP) redis-server nginx
	$(PY) bench/limiter.py
	$(PY) bench/cost.py
	$(PY) bench/redis_mode.py
	$(PY) bench/storm.py
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info proxy/_ratelimit.c proxy/_ratelimit*.so
