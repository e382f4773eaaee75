# Quick start: `make demo`, `make test`. Everything they need is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test figures lint typecheck tools zookeeper-server nginx nghttp2 interop compiled bench \
	bench-tools clean

# uv installs the packages from its cache (~/.cache/uv) in seconds, where pip took half a minute.
# Compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set no process writes a .pyc,
# and every sidecar the tests start would compile its imports again (twice the CPU of a start).
# The editable install is pure Python (GRACEFUL_SIDECAR_COMPILE=0); `compiled` below builds the
# data path's C extensions in place.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.10
	GRACEFUL_SIDECAR_COMPILE=0 $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python \
		-e '.[test]'
	touch $(STAMP)

# The data path compiled by mypyc (setup.py, sidecar/compiled.py), in place: what a wheel installs
# and what the README's figures measure. Kept by content in ~/.cache, as the interop peers are;
# checked every time, in a fraction of a second. `scripts/compile-data-path.sh --remove` takes the
# extensions out (the data path then runs from source); the tests refuse extensions older than a
# source (tests/conftest.py).
compiled: $(STAMP)
	scripts/compile-data-path.sh

tools: .tools/consul/usr/bin/consul .tools/etcd/usr/bin/etcd .tools/h2spec/bin/h2spec zookeeper-server nginx \
	nghttp2 interop

.tools/consul/usr/bin/consul: scripts/install-consul.sh
	scripts/install-consul.sh

.tools/etcd/usr/bin/etcd: scripts/install-etcd.sh
	scripts/install-etcd.sh

# h2spec, the HTTP/2 conformance suite, built with the machine's Go from the Go module proxy.
.tools/h2spec/bin/h2spec: scripts/install-h2spec.sh
	scripts/install-h2spec.sh

# Debian's zookeeper and a Java runtime, through the system's apt (root): checked every time,
# in milliseconds, since they live outside the repo.
zookeeper-server:
	scripts/install-zookeeper.sh

# Debian's nginx, the reference of tests/test_nginx_differential.py: the same rule as above.
nginx:
	scripts/install-nginx.sh

# Debian's nghttp2 tools (h2load, nghttpd, nghttpx), peers of the HTTP/2 tests: the same rule.
nghttp2:
	scripts/install-nghttp2.sh

# The interop peers (interop/*/: Spring Cloud, Dubbo, go-kratos, grpc-go), built with Maven and Go
# once per content (scripts/build-interop.sh keeps each build in ~/.cache): checked every time.
interop:
	scripts/build-interop.sh

demo: $(STAMP) compiled
	$(BIN)/graceful-sidecar demo

lint: $(STAMP)
	$(BIN)/ruff format --check setup.py sidecar registry_adapters tests bench
	$(BIN)/ruff check setup.py sidecar registry_adapters tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Most tests wait on other processes (sidecars, apps, registry servers): three workers on two
# cores overlap those waits. A test module stays on one worker, and so do its fixtures; modules
# go out in the order tests/conftest.py gives them, the slowest first (xdist would otherwise
# reorder them by their number of tests, and leave the minute-long rolls for the end).
# The chaos soak and the figures of Spring's defaults through a roll are measurements, sensitive
# to the machine's load and minutes long: `make figures` runs them, printing what they measure.
# compileall: the tests start hundreds of sidecars, and where PYTHONDONTWRITEBYTECODE is set each
# would compile the project's modules again (a fifth of a sidecar's start); a stale .pyc is
# ignored, so this is only ever a saving.
# lint, typecheck and compiled run side by side (-j3): mypy and mypyc each take a core for a
# minute or more on a fresh clone. GRACEFUL_SIDECAR_EXPECT_COMPILED: tests/test_compiled.py then
# fails if the data path is not compiled.
test: $(STAMP) tools
	$(MAKE) --no-print-directory -j3 -Otarget lint typecheck compiled
	$(BIN)/python -m compileall -q sidecar registry_adapters tests
	GRACEFUL_SIDECAR_EXPECT_COMPILED=1 $(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=15 \
		-m "not soak and not figures"

figures: $(STAMP) tools compiled
	$(BIN)/python -m pytest -q -s -m "soak or figures"

bench-tools:
	scripts/install-bench-tools.sh

bench: $(STAMP) bench-tools compiled
	$(BIN)/python bench/proxy_overhead.py

format: $(STAMP)
	$(BIN)/ruff format setup.py sidecar registry_adapters tests bench
	$(BIN)/ruff check --fix setup.py sidecar registry_adapters tests bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache build
	scripts/compile-data-path.sh --remove
