# The two commands a new user needs (README.md): `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps check bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	# the geo plugin's default country database; --no-deps because the package pins an old
	# maxminddb without the C reader (edge needs maxminddb >= 2.6, declared in pyproject.toml)
	$(VENV)/bin/pip install -q --no-deps 'python-geoacumen==2024.6.23'
	touch $(STAMP)

install: $(STAMP)

# Two demo origins and edge with conf/edge.yaml on 127.0.0.1:8080 (Ctrl-C stops all three).
run: install
	$(PY) scripts/run_demo.py

# Installs redis-server, memcached, nginx, wrk and pebble when missing (apt, as root), then the whole suite.
test: install system-deps
	$(PY) -m pytest -q -p no:cacheprovider

system-deps:
	scripts/install-system-deps

check: install
	$(PY) -m edge check

bench: install system-deps
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(PY) scripts/bench
