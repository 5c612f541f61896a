# Two commands: `make serve` and `make test`. Both create .venv with the right MLX flavour first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
MODEL ?= demo
PORT ?= 8000
ARGS ?=
PY := $(VENV)/bin/python
UNAME_S := $(shell uname -s)

# mlx[cpu] on Linux without a GPU, mlx[cuda13] on Linux with an NVIDIA GPU, mlx (Metal) on macOS.
ifeq ($(origin MLX_FLAVOUR), undefined)
  ifeq ($(UNAME_S),Darwin)
    MLX_FLAVOUR := metal
  else ifneq ($(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'),0)
    MLX_FLAVOUR := cuda13
  else
    MLX_FLAVOUR := cpu
  endif
endif
RUN_STAMP := $(VENV)/.installed-$(MLX_FLAVOUR)
TEST_STAMP := $(VENV)/.installed-$(MLX_FLAVOUR)-test
# The system OpenBLAS, preloaded for the test run as `deltaserve` preloads it for itself.
OPENBLAS = $(shell $(PY) -c "from engine.backend import find_openblas; print(find_openblas() or '')" 2>/dev/null)

.PHONY: serve test lint install clean

serve: $(RUN_STAMP)
	$(VENV)/bin/deltaserve serve --model $(MODEL) --port $(PORT) $(ARGS)

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	LD_PRELOAD="$(OPENBLAS)" $(PY) -m pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

install: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# the Linux MLX flavours each ship libmlx.so and cannot coexist: drop another flavour first
	@if ls $(VENV)/.installed-* >/dev/null 2>&1 && [ ! -e $@ ]; then \
	  $(PY) -m pip uninstall -y -q mlx-cpu mlx-cuda-12 mlx-cuda-13 >/dev/null 2>&1; rm -f $(VENV)/.installed-*; fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(MLX_FLAVOUR)]"
	@[ "$(MLX_FLAVOUR)" != cpu ] || ./tools/install-openblas.sh
	@touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e ".[$(MLX_FLAVOUR),test]"
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
