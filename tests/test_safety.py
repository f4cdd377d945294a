"""The callback never changes training, never kills it, and never loses logs."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_neuron_sensitivity import NeuronSensitivityCallback
from keras_neuron_sensitivity import _background
from keras_neuron_sensitivity.engine import GenericRule
from keras_neuron_sensitivity.engine.rules import table

L = keras.layers


def _data(n=64, features=6, classes=3):
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(n, features)).astype("float32"),
        rng.integers(0, classes, n),
    )


def _steps(log_dir, tag="sensitivity_to_weights/hidden"):
    acc = EventAccumulator(
        os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0}
    )
    acc.Reload()
    return [event.step for event in acc.Tensors(tag)]


def _train(with_callback, tmp_path, **options):
    keras.utils.set_random_seed(7)
    x, y = _data()
    # No Input: the model is built inside fit, by its first step.
    model = keras.Sequential(
        [
            L.Dense(8, activation="relu", name="hidden"),
            L.BatchNormalization(),
            L.Dropout(0.3),
            L.Dense(3, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    callbacks = [NeuronSensitivityCallback(x[:16], log_dir=tmp_path, **options)] if with_callback else []
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks, shuffle=True)
    return model.get_weights(), model.optimizer.iterations.numpy()


@pytest.mark.parametrize("method", ["auto", "estimate"])
def test_training_is_bit_identical_with_and_without_callback(tmp_path, method):
    without, steps_without = _train(False, tmp_path / "a")
    with_cb, steps_with = _train(True, tmp_path / "b", method=method, num_probes=3)
    assert steps_without == steps_with
    assert len(without) == len(with_cb)
    for a, b in zip(without, with_cb):
        np.testing.assert_array_equal(a, b)
    assert _steps(tmp_path / "b") == [0, 1, 2]


class _EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_wrong_probe_for_model_built_inside_fit_fails_before_first_epoch_ends(tmp_path):
    x, y = _data()
    model = keras.Sequential([L.Dense(4), L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    ends = _EpochEnds()
    callback = NeuronSensitivityCallback(np.zeros((4, 5), "float32"), log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*Expected \(batch, 6\)"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, ends])
    assert ends.epochs == []


class Fragile(L.Layer):
    """Identity, but the engine's rule for it fails: a computation error."""

    def call(self, inputs):
        return inputs


class FailingRule(GenericRule):
    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        raise RuntimeError("simulated failure in the sweep")


@pytest.fixture
def fragile_model(monkeypatch):
    monkeypatch.setattr(table, "_RULES", {**table._RULES, Fragile: FailingRule()})
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="hidden"), Fragile(), L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_failed_computation_warns_once_and_training_goes_on(fragile_model, tmp_path):
    x, y = _data()
    ends = _EpochEnds()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fragile_model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, ends])
    messages = [str(w.message) for w in caught if "could not compute" in str(w.message)]
    assert len(messages) == 1
    assert "RuntimeError: simulated failure in the sweep" in messages[0]
    assert "on_error='raise'" in messages[0]
    assert ends.epochs == [0, 1, 2]
    assert len(history.history["loss"]) == 3


def test_on_error_raise_stops_training(fragile_model, tmp_path):
    x, y = _data()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, on_error="raise")
    with pytest.raises(RuntimeError, match="simulated failure"):
        fragile_model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])


def test_diverging_run_finishes_and_counts_nonfinite_values(tmp_path):
    x, y = _data()
    model = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="tanh", name="hidden"), L.Dense(3, name="out")])
    model.compile(keras.optimizers.SGD(1.0), "mse")
    # Weights become NaN on the first step: inf targets give inf/NaN gradients.
    targets = np.full((64, 3), np.inf, "float32")
    ends = _EpochEnds()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)
    model.fit(x, targets, epochs=3, verbose=0, callbacks=[callback, ends])
    assert ends.epochs == [0, 1, 2]
    assert np.isnan(model.get_layer("hidden").kernel.numpy()).all()
    acc = EventAccumulator(os.path.join(tmp_path, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    counts = [tf.make_ndarray(e.tensor_proto) for e in acc.Tensors("nonfinite_count_to_weights/hidden")]
    assert [float(c) for c in counts] == [5.0, 5.0, 5.0]
    assert "sensitivity_to_weights/hidden" not in acc.Tags()["tensors"]


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def _join_computations():
    """Waits for computations in flight on the callback's background thread
    (the interpreter waits for them at exit too)."""
    _background.drain()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_interrupted_fit_keeps_every_completed_epoch(tmp_path, asynchronous):
    x, y = _data()
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="hidden"), L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, asynchronous=asynchronous)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=10, verbose=0, callbacks=[callback, _Interrupt()])
    if asynchronous:
        # Epoch 2 was still computing when fit was left: it is written in
        # the background, and kept.
        _join_computations()
    assert _steps(tmp_path) == [0, 1, 2]


def _small_model():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="hidden"), L.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_resumed_and_repeated_fits_continue_the_steps(tmp_path):
    x, y = _data()
    model = _small_model()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])  # same callback again
    assert sorted(callback.sensitivities) == [0, 1, 2, 3]
    resumed = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)  # a new one
    model.fit(x, y, initial_epoch=4, epochs=6, verbose=0, callbacks=[resumed])
    restarted = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[restarted])  # from epoch 0 again
    assert _steps(tmp_path) == [0, 1, 2, 3, 4, 5, 6]


class _Reader(keras.callbacks.Callback):
    """A TensorBoard-like reader polling the run while training writes it."""

    def __init__(self, log_dir):
        super().__init__()
        self.acc = EventAccumulator(os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0})
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.acc.Reload()
        tag = "sensitivity_to_weights/hidden"
        logged = tag in self.acc.Tags()["tensors"]
        self.seen.append([e.step for e in self.acc.Tensors(tag)] if logged else [])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_reader_sees_every_step_while_training(tmp_path, asynchronous):
    x, y = _data()
    model = _small_model()
    reader = _Reader(tmp_path)
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, asynchronous=asynchronous)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, reader])
    if not asynchronous:
        assert reader.seen == [[0], [0, 1], [0, 1, 2]]
    else:
        # Each epoch's end waits for the previous epoch's computation: a
        # reader sees it then, and the current epoch as soon as it is done.
        for epoch, seen in enumerate(reader.seen):
            assert seen in (list(range(epoch)), list(range(epoch + 1)))
    assert _steps(tmp_path) == [0, 1, 2]
