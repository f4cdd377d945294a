"""A small sequence model on generated data, with the sensitivity callback.

Run with `python demos/sequence_lstm.py [LOG_DIR]` (under a minute). The
task: tell whether a noisy sequence's first half sums higher than its second
half. Token ids go through an Embedding: integer inputs have no derivative,
so the sensitivity to inputs covers the float input and the Embedding's
output (the embedded input) together.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import print_summary  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

L = keras.layers


def data(n, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, steps, 1)).astype("float32")
    ids = rng.integers(0, 5, size=(n, steps)).astype("int32")
    shift = ids.astype("float32")[..., None] * 0.1
    label = (signal[:, : steps // 2].sum((1, 2)) > signal[:, steps // 2 :].sum((1, 2)))
    return [signal + shift, ids], label.astype("int32")


def main(log_dir):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, _) = data(2000), data(128, seed=1)
    signal = keras.Input((12, 1), name="signal")
    ids = keras.Input((12,), dtype="int32", name="ids")
    h = L.Concatenate()([signal, L.Embedding(5, 3, name="embedding")(ids)])
    h = L.LSTM(16, return_sequences=True, name="lstm")(h)
    h = L.GlobalAveragePooling1D()(h)
    out = L.Dense(1, activation="sigmoid", name="output")(L.Dense(8, activation="relu", name="dense")(h))
    model = keras.Model([signal, ids], out)
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    sensitivity = NeuronSensitivityCallback(x_val, log_dir=log_dir, probe_size=32, freq=2)
    model.fit(x_train, y_train, epochs=6, batch_size=64, verbose=2, callbacks=[sensitivity])
    print_summary(sensitivity, log_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "sequence_lstm"))
