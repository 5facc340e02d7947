# Two entry points on a fresh machine: `make demo` and `make test`. Both create/update .venv themselves, from
# requirements.lock: the exact versions the tests ran with (`make lock` re-resolves it from pyproject.toml; a test
# checks that the lock satisfies every requirement there). A fresh install takes ~2 min here.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
UV      ?= uv
IMAGE   ?= ghcr.io/ots-project/ots:0.1.0
# Extra pins applied while resolving the lock (this build machine caps torch/torchvision to the wheels it has).
LOCK_CONSTRAINTS ?= $(wildcard /etc/xdg/pip/constraints.txt)

.PHONY: demo test lint install install-latest lock image image-cpu clean photoset cpu-small

# pip 23 backtracks forever on ray+mlflow+dvc-s3+moto: upgrade pip first. --no-deps: the lock is complete.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# The newest versions that fit pyproject.toml instead of the locked ones (to try an upgrade before `make lock`).
install-latest:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[pipeline,dev,export]'
	touch $(STAMP)

install: $(STAMP)

# Re-resolve after editing dependencies in pyproject.toml (needs uv: `pip install uv`). requirements-runtime.lock
# (the image's) is the same resolution without the dev and export extras: constrained to requirements.lock's pins.
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header
lock:
	$(UV) pip compile pyproject.toml --extra pipeline --extra dev --extra export $(LOCK_FLAGS) \
	  $(addprefix -c ,$(LOCK_CONSTRAINTS)) -o requirements.lock
	$(UV) pip compile pyproject.toml --extra pipeline $(LOCK_FLAGS) -c requirements.lock -o requirements-runtime.lock

# The project image for the clusters (infra/): runtime dependencies only; GPU (torch's CUDA wheels) or CPU
# variant of the same Dockerfile. Needs a Docker daemon.
image:
	docker build --build-arg VARIANT=gpu -t $(IMAGE) .

image-cpu:
	docker build --build-arg VARIANT=cpu -t $(IMAGE)-cpu .

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The larger real-photo set (26 photos shipped in Debian/scikit-image/scikit-learn packages; never committed),
# in the AIM19 layout with HR and LR domains from disjoint cells of the same photos.
photoset: $(STAMP)
	$(BIN)/ots data photos --out data/photos
	$(BIN)/ots data demo --photos data/photos --out data/photoset_src --max-side 1600 --val-crop 512 --cell 256

# The CPU profile (configs/cpu-small.yaml) end to end on data/photoset_src.
cpu-small: $(STAMP)
	for stage in prepare train baseline evaluate register; do \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipelines.$$stage --params configs/cpu-small.yaml || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache
