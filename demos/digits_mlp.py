"""Train a small MLP on scikit-learn's digits with the sensitivity callback.

Run with `make demo` (or `python demos/digits_mlp.py [LOG_DIR]`). It writes
TensorBoard logs, prints a per-layer summary and the command to open them.
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


def main(log_dir):
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    sensitivity = NeuronSensitivityCallback(x_val[:128], log_dir=log_dir)
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=15,
        batch_size=32,
        verbose=2,
        callbacks=[sensitivity, keras.callbacks.TensorBoard(log_dir, histogram_freq=1)],
    )

    last = max(sensitivity.sensitivities)
    print(f"\nNeuron sensitivity at the last epoch ({last}), probe of 128 digits:")
    print(f"{'layer':<10} {'neurons':>7} {'dead':>5} {'mean to weights':>16} {'mean to inputs':>15}")
    for key, to_weights in sensitivity.sensitivities[last]["weights"].items():
        to_inputs = sensitivity.sensitivities[last]["inputs"][key]
        dead = int(np.sum(to_weights == 0))
        print(
            f"{key:<10} {to_weights.size:>7} {dead:>5} "
            f"{to_weights.mean():>16.4f} {to_inputs.mean():>15.4f}"
        )
    tensorboard = shutil.which("tensorboard", path=os.path.dirname(sys.executable))
    tensorboard = os.path.relpath(tensorboard) if tensorboard else "tensorboard"
    print(f"\nOpen the dashboards with:\n  {tensorboard} --logdir {log_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "digits_mlp"))
