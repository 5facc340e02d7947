# Two entry points on a fresh machine: `make demo` and `make test`. Both create/update .venv themselves, from
# requirements.lock: the exact versions the tests ran with (CI and the Dockerfile install the same file).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
UV      ?= uv
IMAGE   ?= ghcr.io/ots-project/ots:0.1.0
# Extra pins applied while resolving the lock (this build machine caps torch/torchvision to the wheels it has).
LOCK_CONSTRAINTS ?= $(wildcard /etc/xdg/pip/constraints.txt)

.PHONY: demo test lint install lock image clean

# pip 23 backtracks forever on ray+mlflow+dvc-s3+moto: upgrade pip first. The lock pins everything, so the
# install does not resolve; the project itself goes in editable, without dependencies.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolve after editing dependencies in pyproject.toml (needs uv: `pip install uv`).
lock:
	$(UV) pip compile pyproject.toml --extra dev --extra export --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header $(addprefix -c ,$(LOCK_CONSTRAINTS)) -o requirements.lock

# The project image for the clusters (infra/); needs a Docker daemon.
image:
	docker build -t $(IMAGE) .

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
