"""Sensitivity vanishes layer by layer in a deep sigmoid stack.

Trains an 8-layer sigmoid MLP on the digits with the sensitivity callback,
and its ReLU twin, and prints each layer's mean sensitivity. To the inputs,
the sigmoid stack's sensitivity shrinks about four-fold per layer (the
sigmoid's slope is at most 1/4), down to 1e-6 at the output: the input
barely reaches the deep layers. The ReLU twin keeps it. To the weights, both
stay of order one, carried by each layer's own weights. Takes about half a
minute.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import digits  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


def train(activation, log_dir, depth=8):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, _) = digits()
    model = keras.Sequential(
        [keras.Input((64,))]
        + [keras.layers.Dense(32, activation=activation, name=f"layer_{i + 1}") for i in range(depth)]
        + [keras.layers.Dense(10, activation="softmax", name="output")]
    )
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    sensitivity = NeuronSensitivityCallback(x_val[:128], log_dir=log_dir, freq=[0, 4])
    model.fit(x_train, y_train, epochs=5, verbose=0, callbacks=[sensitivity])
    return sensitivity.sensitivities[4]


def main(log_dir):
    runs = {a: train(a, os.path.join(log_dir, a)) for a in ["sigmoid", "relu"]}
    print("\nMean sensitivity of each layer's neurons at epoch 4 (to weights | to inputs)")
    print(f"{'layer':<9} {'sigmoid':>21} {'relu':>21}")
    for key in runs["sigmoid"]["weights"]:
        cells = [
            f"{np.mean(runs[a]['weights'][key]):9.3g} | {np.mean(runs[a]['inputs'][key]):9.3g}"
            for a in ["sigmoid", "relu"]
        ]
        print(f"{key:<9} {cells[0]:>21} {cells[1]:>21}")
    print(f"\nOpen the runs:\n  tensorboard --logdir {log_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "vanishing_sigmoid"))
