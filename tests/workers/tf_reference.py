"""Run by the backend tests in a TensorFlow process: the TensorFlow engine's
exact values for a zoo model on given weights, for the cross-backend check.

Usage: tf_reference.py FOLDER
For every zoo model `name`, reads `FOLDER/name.weights.h5` and
`FOLDER/name.npz` (the probe: arrays `x0`, `x1`, ...) and writes
`FOLDER/name.out.npz`: `{wrt}/{layer}` -> `(B, C)` per-sample norms.
"""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "backends"))

import numpy as np  # noqa: E402
import zoo  # noqa: E402

from keras_neuron_sensitivity import neuron_sensitivity  # noqa: E402

folder = sys.argv[1]
for name, build in zoo.MODELS.items():
    model = build()
    model.load_weights(os.path.join(folder, f"{name}.weights.h5"))
    arrays = np.load(os.path.join(folder, f"{name}.npz"))
    x = [arrays[f"x{i}"] for i in range(len(arrays.files))]
    x = x if len(x) > 1 else x[0]
    np.savez(
        os.path.join(folder, f"{name}.out.npz"),
        **{
            f"{wrt}/{key}": value
            for wrt in ("weights", "inputs")
            for key, value in neuron_sensitivity(
                model, x, wrt=wrt, reduction=None, method="exact"
            ).items()
        },
    )
