# Every target sets up what it needs on a fresh machine. torch is pinned here only (CPU wheel on disk);
# pyproject.toml keeps a range. A second run reuses .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast serve scheduler bench lint venv clean stack-test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	# MTCNN's weights ship in this wheel; --no-deps: its metadata pins torch<2.3 and it is never imported.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

demo: $(STAMP)  ## the main job end to end on the embedded defaults (no servers)
	$(BIN)/facefleet demo

test: $(STAMP)  ## everything CI runs (slow tests included)
	$(BIN)/pytest -q -p no:cacheprovider --timeout=1500

test-fast: $(STAMP)  ## skip the slow tests (real Ray runs, learning tests)
	$(BIN)/pytest -q -m "not slow"

serve: $(STAMP)  ## the REST API on http://127.0.0.1:8000 (docs at /docs)
	$(BIN)/facefleet serve

scheduler: $(STAMP)
	$(BIN)/facefleet scheduler

bench: $(STAMP)  ## benchmark tables (ratios against in-process baselines)
	@for b in heads partial_fc data train api terminal backbones; do \
	  echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

stack-test:  ## boot docker-compose.yml with podman and use it (images built locally; not part of `make test`)
	scripts/stack-test

lint: $(STAMP)
	$(BIN)/ruff check facefleet tests bench scripts
	$(BIN)/ruff format --check facefleet tests bench scripts
	$(BIN)/mypy facefleet

clean:
	rm -rf $(VENV) .facefleet demo-output
