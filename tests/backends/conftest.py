"""The backend subset runs only under `KERAS_BACKEND=jax` or `torch`
(`make test` runs it once per backend, after the TensorFlow suite);
`test_distribution.py` only on JAX, where `keras.distribution` runs, and
`test_torch_kernels.py` only on PyTorch."""

import keras

if keras.backend.backend() == "tensorflow":
    collect_ignore_glob = ["test_*.py"]
elif keras.backend.backend() == "jax":
    collect_ignore = ["test_torch_kernels.py"]
else:
    collect_ignore = ["test_distribution.py"]  # keras.distribution is JAX's
