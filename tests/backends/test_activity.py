"""Neuron health on JAX and PyTorch, against NumPy on the same backend.

Each layer's output comes from Keras's own graph on the running backend
(`keras.Model(model.inputs, layer.output)`), the statistics from their
definitions (`activity_oracle.py`); the masked positions are written down
from the token ids; the utility and the saturated statuses from weights set
by hand, as in `tests/test_activity.py`.
"""

import keras
import numpy as np
import pytest

import zoo
from activity_oracle import check, expected, relu_like
from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity, neuron_activity

L = keras.layers

# Per zoo model, the keys checked (each the output of one layer's one call)
# and which of them carry the Keras mask of the token ids.
CHECKED = {
    "cnn": ({"conv", "bn", "relu", "dense", "head"}, set()),
    "convolutions": ({"depthwise", "separable", "conv1d", "gru", "head"}, set()),
    "dense_sequence": ({"wide", "narrow", "out"}, set()),
    "two_inputs": ({"dense", "norm", "head"}, set()),
    "text": ({"embedding", "lstm", "dense"}, set()),
    "masked_sequence": ({"embedding", "bi", "proj", "out"}, {"embedding", "bi", "proj"}),
}


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_statistics_match_numpy_on_this_backend(name):
    model, x = zoo.MODELS[name](), zoo.probe(name)
    keys, masked = CHECKED[name]
    got = neuron_activity(model, x)
    assert keys <= set(got)
    xs = x if isinstance(x, list) else [x]
    for key in sorted(keys):
        layer = model.get_layer(key)
        y = keras.ops.convert_to_numpy(keras.Model(model.inputs, layer.output)(xs if len(xs) > 1 else xs[0]))
        keep = (x != 0) if key in masked else None
        check(got[key], expected(y, keep, relu_like(layer)), key)


@pytest.mark.parametrize("method", ["exact", "estimate"])
@pytest.mark.parametrize("name", ["cnn", "masked_sequence"])
def test_the_activity_is_read_in_the_methods_own_forward(name, method, monkeypatch):
    """No second forward (issue 21): with `ActivityForward` forbidden, the
    method's own forward gives the activity, equal to NumPy."""
    from keras_neuron_sensitivity import _computation
    from keras_neuron_sensitivity.engine import activity

    def forbidden(*args, **kwargs):
        raise AssertionError("a second forward ran for the activity")

    monkeypatch.setattr(activity.ActivityForward, "__init__", forbidden)
    model, x = zoo.MODELS[name](), zoo.probe(name)
    keys, masked = CHECKED[name]
    # To inputs: the same forward, far cheaper on the LSTM than both wrt.
    problem = _computation.prepare(model, x, wrt=("inputs",), layers=None)
    results = _computation.compute(
        problem, method=method, num_probes=2, seed=0, memory_budget_mb=1024, activity=True
    )
    assert results.activity_error is None
    xs = x if isinstance(x, list) else [x]
    for key in sorted(keys):
        layer = model.get_layer(key)
        y = keras.ops.convert_to_numpy(keras.Model(model.inputs, layer.output)(xs if len(xs) > 1 else xs[0]))
        keep = (x != 0) if key in masked else None
        check(results.activity[key], expected(y, keep, relu_like(layer)), key)


def test_utility_and_saturation_from_hand_set_weights():
    """The hand computation of `tests/test_activity.py`: utilities 1.5, 1
    and 3; then a sigmoid pushed to its upper tail is saturated, one in its
    middle active."""
    x = keras.Input((2,))
    h = L.Dense(3, activation="relu", name="h")(x)
    s = L.Dense(2, activation="sigmoid", name="s")(L.Dense(2, name="out")(L.Dropout(0.5)(h)))
    model = keras.Model(x, L.Dense(1, name="last")(s))
    model.get_layer("h").kernel.assign(np.array([[1, -1, 2], [0, 1, 1]], "float32"))
    model.get_layer("h").bias.assign(np.array([0, 0, -1], "float32"))
    model.get_layer("out").kernel.assign(np.array([[1, -2], [0.5, 0.5], [-3, 0]], "float32"))
    model.get_layer("s").kernel.assign(np.zeros((2, 2), "float32"))
    model.get_layer("s").bias.assign(np.array([9.0, 0.5], "float32"))
    got = neuron_activity(model, np.array([[1, 0], [0, 2]], "float32"))
    np.testing.assert_allclose(got["h"]["utility"], [1.5, 1.0, 3.0], rtol=1e-6)
    assert np.isnan(got["last"]["utility"]).all()
    assert list(got["s"]["status"]) == ["saturated", "active"]
    sigmoid = 1 / (1 + np.exp(-np.array([9.0, 0.5])))
    np.testing.assert_allclose(got["s"]["slope"], 4 * sigmoid * (1 - sigmoid), rtol=1e-3)


def test_the_callback_logs_health_read_back_exactly(tmp_path):
    model = zoo.cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = zoo.train_data()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, method="exact")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    run = load_sensitivity(tmp_path)
    for step, logged in callback.activities.items():
        for key, stats in logged.items():
            for name in ("mean", "tau_score", "firing_rate"):
                np.testing.assert_array_equal(run.activity[name][key][step], np.float32(stats[name]))
            assert list(run.status[key][step]) == list(stats["status"])
    # The last epoch's weights are the model's now: the logged activity is theirs.
    y_conv = keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("relu").output)(x[:8]))
    check(callback.activities[1]["relu"], expected(y_conv, positive=True), "relu")
