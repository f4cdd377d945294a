"""The backend subset runs only under `KERAS_BACKEND=jax` or `torch`
(`make test` runs it once per backend, after the TensorFlow suite)."""

import keras

if keras.backend.backend() == "tensorflow":
    collect_ignore_glob = ["test_*.py"]
