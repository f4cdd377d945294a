"""Sensitivity vanishes layer by layer in a deep sigmoid stack; saturated
units make it worse.

Trains an 8-layer sigmoid MLP on the digits with the sensitivity callback,
and its ReLU twin, and prints each layer's mean sensitivity. To the inputs,
the sigmoid stack's sensitivity shrinks about four-fold per layer (the
sigmoid's slope is at most 1/4), down to 1e-6 at the output: the input
barely reaches the deep layers. The ReLU twin keeps it. To the weights, both
stay of order one, carried by each layer's own weights.

A third run starts the same sigmoid stack from large weights (normal, standard
deviation 2): many units sit in a tail of the sigmoid. Those in the upper
tail are saturated: they fire at an activation near 1, far from zero (their
tau-score is high, so they are not dormant), yet the sigmoid's slope where
they fire is under 1 % of its largest, and their sensitivity to the inputs
is orders of magnitude below the active units' of the same layer. Those in
the lower tail sit near zero: dormant. Takes under half a minute.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import digits  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


def train(activation, log_dir, depth=8, initializer="glorot_uniform"):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, _) = digits()
    model = keras.Sequential(
        [keras.Input((64,))]
        + [
            keras.layers.Dense(32, activation=activation, kernel_initializer=initializer, name=f"layer_{i + 1}")
            for i in range(depth)
        ]
        + [keras.layers.Dense(10, activation="softmax", name="output")]
    )
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    sensitivity = NeuronSensitivityCallback(x_val[:128], log_dir=log_dir, freq=[0, 4])
    model.fit(x_train, y_train, epochs=5, verbose=0, callbacks=[sensitivity])
    return sensitivity


def main(log_dir):
    runs = {a: train(a, os.path.join(log_dir, a)) for a in ["sigmoid", "relu"]}
    print("\nMean sensitivity of each layer's neurons at epoch 4 (to weights | to inputs)")
    print(f"{'layer':<9} {'sigmoid':>21} {'relu':>21}")
    logged = {a: run.sensitivities[4] for a, run in runs.items()}
    for key in logged["sigmoid"]["weights"]:
        cells = [
            f"{np.mean(logged[a]['weights'][key]):9.3g} | {np.mean(logged[a]['inputs'][key]):9.3g}"
            for a in ["sigmoid", "relu"]
        ]
        print(f"{key:<9} {cells[0]:>21} {cells[1]:>21}")

    large = train("sigmoid", os.path.join(log_dir, "sigmoid_large_init"),
                  initializer=keras.initializers.RandomNormal(stddev=2.0))
    health, to_inputs = large.activities[4], large.sensitivities[4]["inputs"]
    print("\nThe sigmoid stack from large weights, at epoch 4: saturated units fire far from zero")
    print(f"{'layer':<9} {'saturated':>9} {'mean act.':>10} {'slope':>8} {'to inputs':>10}   "
          f"{'active':>6} {'mean act.':>10} {'slope':>8} {'to inputs':>10}   {'dormant':>7}")
    for key, stats in health.items():
        if key == "output":
            continue
        saturated, active = stats["status"] == "saturated", stats["status"] == "active"

        def columns(which):
            if not which.any():
                return f"{0:>6} {'-':>10} {'-':>8} {'-':>10}"
            return (f"{which.sum():>6} {stats['mean'][which].mean():>10.4f} "
                    f"{np.nanmean(stats['slope'][which]):>8.4f} {to_inputs[key][which].mean():>10.3g}")

        print(f"{key:<9}    {columns(saturated)}   {columns(active)}   {int((stats['status'] == 'dormant').sum()):>7}")
    print(f"\nOpen the runs:\n  tensorboard --logdir {log_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "vanishing_sigmoid"))
