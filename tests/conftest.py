"""Shared fixtures. The brute-force oracles live in `oracle.py`."""

import os
import sys

# Before TensorFlow is imported anywhere: its C++ start-up chatter drowns the
# test report otherwise.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import keras  # noqa: E402
import pytest  # noqa: E402

# `import oracle` from the test modules, whatever pytest's import mode, and
# `from benchmarks import models` (the models the benchmarks time).
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same seeds, so its numbers are repeatable."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def float64():
    """Layers built inside the test are float64; the defaults come back after.

    `set_floatx` alone is not enough: Keras caches the global dtype policy the
    first time it is read, and `set_floatx` does not reset it, so a float64
    policy would leak into every later test.
    """
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
