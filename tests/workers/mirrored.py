"""Run by test_distributed.py in its own process: MirroredStrategy needs two
logical CPU devices, which must be set before TensorFlow initializes.

Trains with the callback under a two-replica MirroredStrategy, then prints
one JSON line: the callback's last logged values (exact, and estimated with a
fixed seed) and those of a single-device twin with the same final weights (computed by the package on the twin, so the
comparison is distributed versus not, on identical weights).
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import tensorflow as tf  # noqa: E402

(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_sensitivity  # noqa: E402


def build():
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="relu", name="h"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(3, activation="softmax", name="o"),
    ])


def main(log_dir):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
        model.compile("adam", "sparse_categorical_crossentropy")
    callback = NeuronSensitivityCallback(x[:16], log_dir=log_dir)
    estimated = NeuronSensitivityCallback(
        x[:16], log_dir=os.path.join(log_dir, "estimate"), method="estimate", num_probes=4, seed=5
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback, estimated])
    twin = build()
    twin.set_weights(model.get_weights())
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "logged": {w: {k: v.tolist() for k, v in d.items()} for w, d in callback.sensitivities[1].items()},
        "twin": {w: {k: v.tolist() for k, v in neuron_sensitivity(twin, x[:16], wrt=w).items()} for w in ["weights", "inputs"]},
        "estimated": {w: {k: v.tolist() for k, v in d.items()} for w, d in estimated.sensitivities[1].items()},
        "twin_estimated": {
            w: {k: v.tolist() for k, v in neuron_sensitivity(
                twin, x[:16], wrt=w, method="estimate", num_probes=4, seed=5).items()}
            for w in ["weights", "inputs"]
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
