# airflow-provider-cdc — developer entry points. Needs only python3 on a Debian base; everything else is set up here.
#
#   make demo    the product running locally (embedded PostgreSQL, private MariaDB, change generators, Airflow)
#   make test    the test suite against real servers (PYTEST_ARGS="-k pg18 -x" to narrow it)
#   make bench   the benchmarks (results go into BENCHMARKS.md by hand)
#   make bench-all  every performance target in one run, ~1 h (bench/all.py -> BENCHMARKS-all.md; BENCH_ALL_ARGS=--quick)
#   make lint    the lint and type gate (ruff, mypy), also run first by make test
#   make venv    just the virtualenv (.venv) with the package installed editable and all extras
#   make clean   state, caches and build output (distclean also removes .venv)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
EXTRAS := test,mysql,mongodb,openlineage,delta,quality,s3
STAMP := $(VENV)/.cdc-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the servers' tests run side by side; PYTEST_WORKERS=0 runs in this process.
# Four on two cores: most of an end-to-end test's time is spent waiting (on Airflow's polls, on a child process, on
# a server), so two workers left the cores idle. Measured on this 2-core machine: 54 min with 2, 30 min with 4;
# 25 min with 4 and work stealing, the long tests first (tests/conftest.py), so no test runs alone at the end.
PYTEST_WORKERS ?= 4

.PHONY: venv lint test demo bench bench-all clean distclean system-deps test-servers

venv: $(STAMP)

# Reinstall when the packaging metadata changes; a second run with nothing changed does nothing.
$(STAMP): setup.cfg pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@if [ ! -x "$(VPY)" ]; then \
	    echo "creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	    if ! $(PYTHON) -m venv $(VENV); then \
	        rm -rf $(VENV); \
	        if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	            echo "python3 -m venv failed; installing python3-venv"; \
	            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	            $(PYTHON) -m venv $(VENV); \
	        else \
	            echo "error: '$(PYTHON) -m venv' failed; install the venv module (Debian: apt-get install python3-venv)"; exit 1; \
	        fi; \
	    fi; \
	    $(VPY) -m pip install -q --upgrade pip; \
	fi
	$(VPY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)
	@echo "$(VENV) is ready"

# pkg-config + MySQL client headers + a C compiler + Python headers, for mysqlclient's source build.
system-deps:
	@missing=""; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	{ command -v pkg-config >/dev/null && { pkg-config --exists mysqlclient || pkg-config --exists mariadb; }; } \
	    || dpkg -s default-libmysqlclient-dev >/dev/null 2>&1 || missing="$$missing default-libmysqlclient-dev"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	    || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing Debian packages needed to build mysqlclient:$$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    else \
	        echo "error: mysqlclient (the MySQL provider's driver) builds from source and needs:$$missing"; \
	        echo "       install them first, e.g.: sudo apt-get install -y$$missing"; \
	        exit 1; \
	    fi; \
	fi

# The lint and type gate: ruff (with isort) over the repo, mypy over the package. Any violation fails `make test`.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The MariaDB tests start a private mariadbd (scripts/private_mariadb.py) from Debian's mariadb-server; the lineage
# tests render SVG with Graphviz's dot. Both are installed here when missing and we are root.
test-servers:
	@if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing mariadb-server (the MariaDB tests run a private mariadbd)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            mariadb-server; \
	    else \
	        echo "warning: mariadbd is missing; the MariaDB tests will skip (fail with CI=true)." \
	             "Install it: sudo apt-get install -y mariadb-server"; \
	    fi; \
	fi
	@if ! command -v dot >/dev/null; then \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing graphviz (the lineage flow diagram renders SVG with dot)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            graphviz; \
	    else \
	        echo "warning: Graphviz (dot) is missing; the SVG test will skip (fail with CI=true)." \
	             "Install it: sudo apt-get install -y graphviz"; \
	    fi; \
	fi
	@# Debian's chromium for the asset graph screenshot test (installed when root; else the script says how).
	@bash scripts/ensure_chromium.sh || true

test: venv lint test-servers
	@bash scripts/ensure_pg15_logical.sh || echo "warning: the machine's PostgreSQL is not ready for logical decoding; its tests will skip (fail with CI=true)"
	$(VPY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The demo's MariaDB source needs mariadbd: installed here when missing and we are root (as in test-servers);
# otherwise scripts/demo.py says how to install it and runs without that source.
demo: venv
	@if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ] \
	        && [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mariadb-server (the demo's MariaDB source runs a private mariadbd)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        mariadb-server || echo "warning: mariadb-server could not be installed; the demo runs without MariaDB"; \
	fi
	$(VPY) scripts/demo.py

bench: venv
	$(VPY) bench/run.py

# Every script of bench/ with the arguments that measure the performance targets, one after another, one report.
bench-all: venv
	$(VPY) bench/all.py $(BENCH_ALL_ARGS)

clean:
	@if [ -x "$(VPY)" ] && [ -d .state/demo/pg ]; then $(VPY) scripts/embedded_pg.py stop --datadir .state/demo/pg || true; fi
	@if [ -x "$(VPY)" ] && [ -d .state/demo/mariadb ]; then \
	    $(VPY) scripts/private_mariadb.py stop --datadir .state/demo/mariadb || true; fi
	@if [ -x "$(VPY)" ] && [ -d .state/demo/mongodb ]; then \
	    $(VPY) scripts/private_mongod.py stop --dbpath .state/demo/mongodb || true; fi
	rm -rf .state build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
