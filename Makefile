# Two commands on a fresh machine:  `make demo` (the smoke study end to end) and `make test`.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= hsjp-store

.PHONY: demo test test-fast lint typecheck install clean device-wheels

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
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# mypy --strict on orchestrator/ and the workload interfaces it calls (also run by `make test`): the files
# and the strict modules are pyproject.toml's [tool.mypy]
typecheck: $(STAMP)
	$(BIN)/mypy

# The wheels benchmarks/device_check.sh installs on the GPU machine, which has no network and no
# pycocotools (docs/performance.md "The device check's machine"): carry .whl with the call. 2.0.11: the
# newest pycocotools release when this was written; its cp312-abi3 manylinux wheel is ~0.4 MB.
DEVICE_PYCOCOTOOLS ?= 2.0.11
device-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --abi cp312 --abi abi3 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl pycocotools==$(DEVICE_PYCOCOTOOLS)
	ls -l .whl

clean:
	rm -rf $(STORE) .pytest_cache
