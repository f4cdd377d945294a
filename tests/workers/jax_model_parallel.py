"""Run twice by tests/backends/test_distribution.py: one of two JAX processes
on loopback, each with 2 CPU devices, training an MLP under `ModelParallel`
on a (2, 2) mesh whose model axis spans the processes: no process holds a
whole Dense kernel.

Usage: jax_model_parallel.py PROCESS_ID PORT LOG_DIR METHODS
METHODS: comma-separated, one callback each, logging to LOG_DIR/<method>
(the environment's ON_ERROR, if set, is their `on_error`; seed 3).
Both processes feed the same data. Process 0 saves the whole weights at
each epoch's end to LOG_DIR/weights.npz (the oracle: one device computes on
them). Each process prints one line: its index and how many epochs each
callback computed.
"""

import os
import sys

if __name__ == "__main__":  # imported by the test for `mlp` and `data`
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


NUM_PROBES = 16


def mlp():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh", name="dense_1"),
            keras.layers.Dense(8, activation="relu", name="dense_2"),
            keras.layers.Dense(4, name="dense_3"),
        ],
        name="mlp",
    )


def data():
    rng = np.random.default_rng(6)
    return rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 4, size=32)


class SaveWeights(keras.callbacks.Callback):
    """Every process gathers the whole weights (a collective); process 0 keeps them."""

    def __init__(self):
        super().__init__()
        self.epochs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = [
            np.asarray(multihost_utils.process_allgather(v.value, tiled=True))
            for v in self.model.weights
        ]


if __name__ == "__main__":
    process, port, log_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    methods = sys.argv[4].split(",")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process
    )
    # Devices ordered by process: rows of the (2, 2) grid are processes, so
    # its transpose puts the model axis across them.
    devices = np.array(jax.devices()).reshape(2, 2).T
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    layout_map[".*dense.*bias"] = ("model",)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False
    )
    x, y = data()
    with distribution.scope():
        keras.utils.set_random_seed(5)
        model = mlp()
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks = [
            NeuronSensitivityCallback(
                x[:8], log_dir=os.path.join(log_dir, method), method=method,
                num_probes=NUM_PROBES, seed=3, verbose=0,
                on_error=os.environ.get("ON_ERROR", "warn"),
            )
            for method in methods
        ]
        weights = SaveWeights()
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[weights, *callbacks])
    kernel = model.get_layer("dense_1").kernel.value
    assert not kernel.is_fully_addressable, kernel.sharding
    if process == 0:
        np.savez(
            os.path.join(log_dir, "weights.npz"),
            **{f"{e}_{i}": w for e, ws in weights.epochs.items() for i, w in enumerate(ws)},
        )
    print(jax.process_index(), *(len(c.sensitivities) for c in callbacks), flush=True)
