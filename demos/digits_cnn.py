"""A small CNN on the 8x8 digits, with the sensitivity callback.

Run with `python demos/digits_cnn.py [LOG_DIR]` (about half a minute).
Conv layers' neurons are channels: each one's value is averaged over the
feature map, so the histograms show one value per filter.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from _common import digits, print_summary  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

L = keras.layers


def main(log_dir):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = digits(image=True)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv_1"),
            L.BatchNormalization(name="norm_1"),
            L.Conv2D(32, 3, activation="relu", name="conv_2"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax", name="output"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    sensitivity = NeuronSensitivityCallback(x_val[:64], log_dir=log_dir, freq=2)
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=8,
        batch_size=32,
        verbose=2,
        callbacks=[sensitivity, keras.callbacks.TensorBoard(log_dir)],
    )
    print_summary(sensitivity, log_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "digits_cnn"))
