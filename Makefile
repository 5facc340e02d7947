# Two entry points on a fresh machine: `make demo` and `make test`. Both create/update .venv themselves.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint install clean photoset cpu-small

# pip 23 backtracks forever on ray+mlflow+dvc-s3+moto: upgrade pip first.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
