"""On JAX and PyTorch the package never imports TensorFlow: a GPU user's
training would lose the device memory TensorFlow claims when it first runs
an op. Checked in a fresh process (this suite's own imports could hide an
import), through everything a user does: the callback in `fit`, the
functions, reading the run back, the report and the dashboard's plugin."""

import os
import subprocess
import sys

import keras

SCRIPT = """
import sys, tempfile
import numpy as np, keras
import keras_neuron_sensitivity as kns
from keras_neuron_sensitivity import report
from keras_neuron_sensitivity.dashboard import plugin

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
model.compile("adam", "mse")
x = np.random.default_rng(0).random((32, 4)).astype("float32")
with tempfile.TemporaryDirectory() as logs:
    model.fit(x, np.zeros((32, 2)), epochs=2, verbose=0,
              callbacks=[kns.NeuronSensitivityCallback(x[:8], log_dir=logs)])
    run = kns.load_sensitivity(logs)
    assert list(run["weights"]["dense"]) == [0, 1], run
    report.format_report(run)
kns.neuron_sensitivity(model, x, method="estimate", seed=0)
kns.neuron_jacobian(model, x[:2], "dense")
print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")))
"""


def test_the_package_does_not_import_tensorflow():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
