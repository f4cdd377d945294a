"""`keras.distribution` on JAX: the callback under data parallelism.

Runs in the JAX pass of `make test`, whose process has two CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`, set by the Makefile).
The several-machines case runs as two processes on loopback, joined by `jax.distributed` with CPU collectives.
"""

import os
import socket
import subprocess
import sys

import jax
import keras
import numpy as np

import zoo
from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity, neuron_sensitivity

WORKERS = os.path.join(os.path.dirname(__file__), "..", "workers")


def _train(log_dir, x, y, distribution=None, probe=None):
    """2 epochs of the zoo CNN with the callback on `probe` (default
    `x[:8]`); `distribution` None: one device."""
    probe = x[:8] if probe is None else probe
    scope = distribution.scope() if distribution is not None else _nothing()
    with scope:
        keras.utils.set_random_seed(5)
        model = zoo.cnn()
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callback = NeuronSensitivityCallback(probe, log_dir=str(log_dir), method="exact", verbose=0)
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[callback])
    return model


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _assert_same_run(got_dir, want_dir):
    got, want = load_sensitivity(str(got_dir)), load_sensitivity(str(want_dir))
    assert list(got) == list(want) == ["weights", "inputs"]
    for wrt in want:
        assert list(got[wrt]) == list(want[wrt])
        for layer in want[wrt]:
            assert list(got[wrt][layer]) == [0, 1]
            for step in (0, 1):
                np.testing.assert_allclose(
                    got[wrt][layer][step], want[wrt][layer][step], rtol=1e-4,
                    err_msg=f"{wrt}/{layer}@{step}",
                )


def test_data_parallel_over_two_devices_logs_the_single_device_values(tmp_path):
    assert len(jax.devices()) == 2, (
        "Run with XLA_FLAGS=--xla_force_host_platform_device_count=2, as `make test` does"
    )
    x, y = zoo.train_data()
    parallel = keras.distribution.DataParallel(devices=jax.devices())
    model = _train(tmp_path / "parallel", x, y, parallel)
    # The weights really are laid out over both devices.
    kernel = model.get_layer("conv").kernel.value
    assert len(kernel.sharding.device_set) == 2
    _train(tmp_path / "single", x, y)
    _assert_same_run(tmp_path / "parallel", tmp_path / "single")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_finish_and_only_process_zero_writes(tmp_path):
    log_dir = tmp_path / "two_processes"
    outputs = _run_workers("jax_process.py", log_dir)
    # Process 0 computed both epochs; process 1 none.
    assert outputs == [["0", "2"], ["1", "0"]]
    events = os.listdir(log_dir / "sensitivity")
    assert len(events) == 1, events
    # The run equals one process training on the same global batches: batch
    # `s` is process 0's local batch `s` followed by process 1's.
    x, y = zoo.train_data()
    order = np.concatenate(
        [np.r_[np.arange(0, 48, 2)[8 * s : 8 * s + 8], np.arange(1, 48, 2)[8 * s : 8 * s + 8]]
         for s in range(3)]
    )
    _train(tmp_path / "single", x[order], y[order], probe=x[:8])
    _assert_same_run(log_dir, tmp_path / "single")


def _run_workers(script, log_dir, *args):
    """Runs `script` as processes 0 and 1 on loopback; returns each one's
    last printed line, split."""
    port = str(_free_port())
    # The workers import this checkout's package, and set their own XLA_FLAGS.
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(root), env.get("PYTHONPATH", "")])
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.join(WORKERS, script), str(i), port, str(log_dir), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise
        assert worker.returncode == 0, err[-3000:]
        assert "could not compute" not in err, err[-3000:]
        outputs.append(out.strip().splitlines()[-1].split())  # after Gloo's chatter
    return outputs


def test_weights_split_across_processes_are_computed_by_every_process(tmp_path):
    # Two processes of 2 CPU devices; the model axis of the (2, 2) mesh spans
    # them, so no process holds a whole Dense kernel (the worker asserts it).
    sys.path.insert(0, WORKERS)
    import jax_model_parallel as worker

    log_dir = tmp_path / "model_parallel"
    outputs = _run_workers("jax_model_parallel.py", log_dir, "exact,estimate")
    # Both processes computed the epoch, with each method.
    assert outputs == [["0", "1", "1"], ["1", "1", "1"]]
    # The oracle: one device, on the whole weights process 0 saved at each
    # epoch's end; the estimate with the same seed and tangents.
    saved = np.load(log_dir / "weights.npz")
    x, _ = worker.data()
    model = worker.mlp()
    for method in ("exact", "estimate"):
        events = os.listdir(log_dir / method / "sensitivity")
        assert len(events) == 1, events
        got = load_sensitivity(str(log_dir / method))
        for step in (0,):  # the one logged epoch
            model.set_weights([saved[f"{step}_{i}"] for i in range(len(model.weights))])
            for wrt in ("weights", "inputs"):
                want = neuron_sensitivity(
                    model, x[:8], wrt=wrt, method=method, num_probes=worker.NUM_PROBES, seed=3
                )
                assert list(got[wrt]) == list(want)
                for layer in want:
                    np.testing.assert_allclose(
                        got[wrt][layer][step], want[layer], rtol=1e-4,
                        err_msg=f"{method} {wrt}/{layer}@{step}",
                    )
