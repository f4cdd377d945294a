"""tf_keras (Keras 2) models: the same API and callback, detected from the model."""

import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import oracle
from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_jacobian, neuron_sensitivity

tf_keras = pytest.importorskip("tf_keras")
L = tf_keras.layers
RTOL, ATOL = 2e-3, 1e-6


def functional():
    x = tf_keras.Input((5,))
    h = L.Dense(4, activation="relu", name="h")(x)
    a = L.Dense(4, activation="tanh", name="a")(h)
    return tf_keras.Model(x, L.Dense(3, activation="softmax", name="o")(L.Add()([h, a])))


def sequential():
    model = tf_keras.Sequential([L.Conv1D(3, 2, activation="elu", name="c"), L.Flatten(), L.ReLU(name="r"), L.Dense(2, name="d")])
    model.build((None, 4, 2))
    return model


def _brute_force(model, x, key, wrt):
    """One `tape.gradient` per neuron and sample, through tf_keras's own graph."""
    sub = tf_keras.Model(model.inputs, model.get_layer(key).output)
    return oracle.brute_force(model, x, lambda xs: sub(xs[0], training=False), wrt)


@pytest.mark.parametrize("factory, shape", [(functional, (5,)), (sequential, (4, 2))], ids=["functional", "sequential"])
def test_tf_keras_values_match_brute_force(factory, shape):
    model = factory()
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")
    for wrt in ["weights", "inputs"]:
        got = neuron_sensitivity(model, x, wrt=wrt, reduction=None)
        assert got, "no layer selected"
        for key, values in got.items():
            np.testing.assert_allclose(values, _brute_force(model, x, key, wrt), rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")
    if factory is sequential:
        assert list(got) == ["c", "r", "d"]  # activation layers selected in Keras 2 too


def test_tf_keras_jacobian_names_weights_by_variable_name():
    model = functional()
    jac = neuron_jacobian(model, np.ones((2, 5), "float32"), "h")
    assert {k: v.shape for k, v in jac.items()} == {"h/kernel:0": (2, 4, 5, 4), "h/bias:0": (2, 4, 4)}


def test_tf_keras_fit_with_callback(tmp_path):
    model = functional()
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 5)).astype("float32"), rng.integers(0, 3, 32)
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    final = neuron_sensitivity(model, x[:8])
    for key, values in final.items():
        np.testing.assert_allclose(callback.sensitivities[1]["weights"][key], values, rtol=1e-6)
    acc = EventAccumulator(os.path.join(tmp_path, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("sensitivity_to_weights/h")] == [0, 1]
