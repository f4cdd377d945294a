"""Run twice by tests/backends/test_distribution.py: one of two JAX processes
on loopback, training data-parallel with the callback on a shared log_dir.

Usage: jax_process.py PROCESS_ID PORT LOG_DIR
Process `i` trains on samples `i::2` of `zoo.train_data()`; the two halves
of each global batch of 16 are the processes' local batches of 8. Prints
one line: the process index and how many epochs its callback computed.
"""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "jax"
os.environ.pop("XLA_FLAGS", None)  # one CPU device per process
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "backends"))

import jax  # noqa: E402
import keras  # noqa: E402
import zoo  # noqa: E402

from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

process, port, log_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
keras.distribution.initialize(
    job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process
)
# Each process passes its own half: Keras must not shard it again.
distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
x, y = zoo.train_data()
with distribution.scope():
    keras.utils.set_random_seed(5)
    model = zoo.cnn()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = NeuronSensitivityCallback(x[:8], log_dir=log_dir, method="exact", verbose=0)
    model.fit(x[process::2], y[process::2], epochs=2, batch_size=8, shuffle=False,
              verbose=0, callbacks=[callback])
print(jax.process_index(), len(callback.sensitivities), flush=True)
