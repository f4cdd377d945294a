PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demos/digits_mlp.py

# The whole suite on TensorFlow, then the backend subset on JAX and PyTorch
# (Keras picks its backend at import: one pytest run per backend). JAX gets
# two CPU devices for tests/backends/test_distribution.py. Two pytest-xdist
# workers, each test file whole on one (module fixtures start TensorBoard
# servers once): 1.75x faster on this project's 2-core machines.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --durations=10

test: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST)
	XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax $(PYTEST) tests/backends
	KERAS_BACKEND=torch $(PYTEST) tests/backends

clean:
	rm -rf $(VENV) logs .pytest_cache
