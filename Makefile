# The two commands: `make train` (Pong, embedded local mode) and `make test` (the suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: train test test-containers test-chaos chaos bench proto tools clean

# CPU build of torch first, pinned, so nothing can pull a CUDA build in; then the project and its test tools.
$(STAMP): pyproject.toml learner/_rmsprop.c a3c/_wire.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/a3c train $(ARGS)

# Tools the tests run for real, from Debian's packages when missing: prometheus and promtool (metrics tests),
# docker-compose (validates docker-compose.yml without an engine). kubectl renders the Kubernetes manifests.
tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null || { \
	  echo "installing Debian's prometheus and docker-compose packages (for the tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose >/dev/null; }
	@command -v kubectl >/dev/null || { echo "kubectl is needed to render deploy/k8s (client only)"; exit 1; }

# Two workers, each taking whole files (module fixtures run once): one alone leaves a core idle a third of the time
# while tests wait on the processes they start.
test: $(STAMP) tools
	$(BIN)/python -m pytest -q --durations=15 -n 2 --dist loadfile -m "not containers and not chaos" $(PYTEST_ARGS)

# The image and the compose stack under a real Docker engine (`docker info` must answer; .ci/run sets one up).
test-containers: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -m containers tests/containers $(PYTEST_ARGS)

# CartPole trained through a run full of faults (about two minutes; CI runs it after `make test`).
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -q -s -m chaos tests/test_chaos.py $(PYTEST_ARGS)

# The long chaos run: Pong to +18 clean, then the same seed through the faults (about 30 minutes on 2 cores; as root
# one actor's link is slowed and lossy). JSON in bench/chaos.json, the verdict on stdout.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(ARGS)

# The benchmark (7 to 12 minutes on 2 cores; not part of `make test`): JSON in bench/results.json, a table on stdout.
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# Regenerate proto/a3c_pb2*.py after editing proto/a3c.proto (a test fails while they are stale).
proto: $(STAMP)
	$(BIN)/python -m proto.generate

clean:
	rm -rf $(VENV) runs .pytest_cache
