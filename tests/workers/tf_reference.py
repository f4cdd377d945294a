"""Run by the backend tests in a TensorFlow process: the TensorFlow engine's
exact values for a zoo model on given weights, for the cross-backend check.

Usage: tf_reference.py MODEL WEIGHTS.weights.h5 PROBE.npy OUT.npz
Writes `{wrt}/{layer}` -> `(B, C)` per-sample norms.
"""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "backends"))

import numpy as np  # noqa: E402
import zoo  # noqa: E402

from keras_neuron_sensitivity import neuron_sensitivity  # noqa: E402

name, weights, probe, out = sys.argv[1:5]
model = zoo.MODELS[name]()
model.load_weights(weights)
x = np.load(probe)
np.savez(
    out,
    **{
        f"{wrt}/{key}": value
        for wrt in ("weights", "inputs")
        for key, value in neuron_sensitivity(
            model, x, wrt=wrt, reduction=None, method="exact"
        ).items()
    },
)
