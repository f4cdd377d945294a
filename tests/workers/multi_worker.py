"""One worker of a two-process MultiWorkerMirroredStrategy run with tf_keras.

Run by test_distributed.py with TF_CONFIG set. Trains a tf_keras model with
the callback (each worker its own callback, same log_dir), then prints one
JSON line: this worker's index, whether it is the chief, what its callback
logged at the last epoch, and the values of a single-process twin with the
final weights.
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_sensitivity  # noqa: E402


def build():
    inputs = tf_keras.Input((6,))
    h = tf_keras.layers.Dense(5, activation="relu", name="h")(inputs)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax", name="o")(h))


def main(log_dir):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).with_options(options)
    with strategy.scope():
        model = build()
        model.compile("adam", "sparse_categorical_crossentropy")
    callback = NeuronSensitivityCallback(x[:16], log_dir=log_dir)
    model.fit(dataset, epochs=2, verbose=0, callbacks=[callback])
    twin = build()
    twin.set_weights(model.get_weights())
    logged = callback.sensitivities.get(1, {})
    print(json.dumps({
        "task": task,
        "chief": bool(strategy.extended.should_checkpoint),
        "logged": {w: {k: v.tolist() for k, v in d.items()} for w, d in logged.items()},
        "twin": {w: {k: v.tolist() for k, v in neuron_sensitivity(twin, x[:16], wrt=w).items()} for w in ["weights", "inputs"]},
    }))


if __name__ == "__main__":
    main(sys.argv[1])
