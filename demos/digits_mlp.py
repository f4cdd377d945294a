"""Train a small MLP on scikit-learn's digits with the sensitivity callback.

Run with `make demo` (or `python demos/digits_mlp.py [LOG_DIR]`). It writes
TensorBoard logs, prints a per-layer summary and the command to open them.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from _common import digits, digits_mlp, print_summary  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


def main(log_dir):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = digits()
    model = digits_mlp()
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
    print_summary(sensitivity, log_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "digits_mlp"))
