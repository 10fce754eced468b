# Two commands on a fresh machine:  `make demo` (the smoke study end to end) and `make test`.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= hsjp-store

.PHONY: demo test test-fast lint install clean

install: $(STAMP)

# torch/torchvision are not pinned narrowly: pip resolves a matching pair (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,mlflow,wandb]"
	$(BIN)/python -c "import torch, torchvision, ray, pycocotools, cv2, moto, mlflow, wandb, tensorboard"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hsjp-study run studies/smoke.yaml --storage $(STORE)
	$(BIN)/hsjp-study report --storage $(STORE) --out $(STORE)/report

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(STORE) .pytest_cache
