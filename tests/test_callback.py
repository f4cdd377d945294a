"""`NeuronSensitivityCallback` in real `fit` runs, its logs read back from disk.

Every check compares logged numbers, not only tag names: histogram counts and
ranges against the per-neuron values, scalars against the logged vector, and
the callback's values against `neuron_sensitivity` on the final weights
(itself checked against brute force in test_values.py).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_sensitivity

L = keras.layers
WRTS = ("weights", "inputs")
KEYS = {"h1": 8, "act": 8, "out": 3}  # the default selection and its widths


def _data(n=48, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, features)).astype("float32")
    y = rng.integers(0, classes, n)
    return x, y


def _model():
    """Dense -> ReLU layer -> Dropout -> Dense softmax; ReLU units 0, 3 dead.

    Their pre-activation bias is -1000 on inputs in [0, 1), so they never
    switch on and, with zero gradient, stay dead while training: the dead
    fraction of "act" is 2/8 at every logged epoch.
    """
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="h1"),
            L.ReLU(name="act"),
            L.Dropout(0.3, name="drop"),
            L.Dense(3, activation="softmax", name="out"),
        ]
    )
    kernel, bias = model.get_layer("h1").get_weights()
    bias[[0, 3]] = -1e3
    model.get_layer("h1").set_weights([kernel, bias])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _events(run_dir):
    # Without size_guidance={"tensors": 0} later steps are silently dropped.
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def _series(accumulator, tag):
    """`{step: ndarray}` of a tensor tag."""
    return {
        event.step: tf.make_ndarray(event.tensor_proto)
        for event in accumulator.Tensors(tag)
    }


def _steps(accumulator, tag):
    return [event.step for event in accumulator.Tensors(tag)]


def _check_histogram(buckets, values, num_bins):
    """The buckets hold exactly these values: shape, total, range, each count."""
    values = np.asarray(values, np.float64)
    assert buckets.shape == (num_bins, 3)
    left, right, counts = buckets.T
    assert counts.sum() == values.size
    tol = 1e-6 * max(1.0, np.abs(values).max())
    assert left.min() <= values.min() + tol
    assert right.max() >= values.max() - tol
    for lo, hi, count in buckets:
        surely_inside = np.sum((values > lo + tol) & (values < hi - tol))
        maybe_inside = np.sum((values >= lo - tol) & (values <= hi + tol))
        assert surely_inside <= count <= maybe_inside, (lo, hi, count, values)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One 3-epoch fit with the callback at defaults next to Keras's TensorBoard."""
    keras.utils.set_random_seed(0)
    log_dir = tmp_path_factory.mktemp("logs")
    x, y = _data()
    probe = x[:10]
    model = _model()
    callback = NeuronSensitivityCallback(probe, log_dir=str(log_dir))
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[callback, keras.callbacks.TensorBoard(log_dir=str(log_dir))],
    )
    return model, probe, callback, log_dir, _events(log_dir / "sensitivity")


def test_runs_sit_side_by_side(default_run):
    *_, log_dir, _ = default_run
    assert {"train", "sensitivity"} <= set(os.listdir(log_dir))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(log_dir / "train"))
    assert any(
        f.startswith("events.out.tfevents") for f in os.listdir(log_dir / "sensitivity")
    )


@pytest.mark.parametrize("wrt", WRTS)
def test_histograms_every_layer_every_epoch(default_run, wrt):
    model, probe, callback, _, events = default_run
    final = neuron_sensitivity(model, probe, wrt=wrt)
    assert list(final) == list(KEYS)
    for key, width in KEYS.items():
        tag = f"sensitivity_to_{wrt}/{key}"
        assert _steps(events, tag) == [0, 1, 2]
        series = _series(events, tag)
        for step, buckets in series.items():
            logged = callback.sensitivities[step][wrt][key]
            assert logged.shape == (width,)
            _check_histogram(buckets, logged, num_bins=30)
        # The last histogram holds the final model's values.
        _check_histogram(series[2], final[key], num_bins=30)


@pytest.mark.parametrize("wrt", WRTS)
def test_scalars_match_logged_vectors(default_run, wrt):
    _, _, callback, _, events = default_run
    for key in KEYS:
        means = _series(events, f"mean_sensitivity_to_{wrt}/{key}")
        dead = _series(events, f"dead_fraction_to_{wrt}/{key}")
        assert sorted(means) == sorted(dead) == [0, 1, 2]
        for step in (0, 1, 2):
            vector = callback.sensitivities[step][wrt][key]
            assert float(means[step]) == pytest.approx(vector.mean(), rel=1e-6)
            # Norms are >= 0, so a zero mean over samples means zero on every
            # sample: the dead definition.
            assert float(dead[step]) == pytest.approx(np.mean(vector == 0.0))
    for step in (0, 1, 2):
        fraction = _series(events, f"dead_fraction_to_{wrt}/act")[step]
        assert float(fraction) == pytest.approx(2 / 8)
        assert np.all(callback.sensitivities[step][wrt]["act"][[0, 3]] == 0.0)


def test_sensitivities_attribute_matches_final_weights(default_run):
    model, probe, callback, _, _ = default_run
    assert sorted(callback.sensitivities) == [0, 1, 2]
    for step in (0, 1, 2):
        assert set(callback.sensitivities[step]) == set(WRTS)
    for wrt in WRTS:
        expected = neuron_sensitivity(model, probe, wrt=wrt)
        logged = callback.sensitivities[2][wrt]
        assert list(logged) == list(expected)
        for key in expected:
            np.testing.assert_allclose(logged[key], expected[key], rtol=1e-5, atol=1e-7)
    # Training moved the weights: epoch 0 was logged with other weights.
    assert not np.allclose(
        callback.sensitivities[0]["weights"]["out"],
        callback.sensitivities[2]["weights"]["out"],
    )


def _fit(callbacks, epochs, model=None, x=None, y=None):
    if x is None:
        x, y = _data()
    model = model or _model()
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks)
    return model


@pytest.mark.parametrize(
    "freq, epochs, expected",
    [(2, 4, [0, 2]), ([1, 3], 4, [1, 3]), ((0,), 2, [0]), (3, 4, [0, 3])],
    ids=["every_2", "list_1_3", "tuple_0", "every_3"],
)
def test_freq_schedules_epochs(tmp_path, freq, epochs, expected):
    x, _ = _data()
    callback = NeuronSensitivityCallback(x[:6], log_dir=tmp_path, freq=freq, wrt="weights")
    _fit([callback], epochs)
    assert sorted(callback.sensitivities) == expected
    events = _events(tmp_path / "sensitivity")
    for key in KEYS:
        assert _steps(events, f"sensitivity_to_weights/{key}") == expected
    assert not any(tag.startswith("sensitivity_to_inputs") for tag in events.Tags()["tensors"])


def test_sequential_built_inside_fit(tmp_path):
    # No Input: the model has no inputs until fit's first step builds it.
    model = keras.Sequential(
        [L.Dense(5, activation="relu", name="first"), L.Dense(2, name="second")]
    )
    model.compile("sgd", "mse")
    x = np.random.default_rng(1).normal(size=(20, 4)).astype("float32")
    y = np.zeros((20, 2), "float32")
    callback = NeuronSensitivityCallback(x[:5], log_dir=tmp_path)
    model.fit(x, y, epochs=2, batch_size=10, verbose=0, callbacks=[callback])
    assert sorted(callback.sensitivities) == [0, 1]
    events = _events(tmp_path / "sensitivity")
    for wrt in WRTS:
        expected = neuron_sensitivity(model, x[:5], wrt=wrt)
        assert list(expected) == ["first", "second"]
        for key, values in expected.items():
            np.testing.assert_allclose(
                callback.sensitivities[1][wrt][key], values, rtol=1e-5, atol=1e-7
            )
            assert _steps(events, f"sensitivity_to_{wrt}/{key}") == [0, 1]


def test_dataset_probe_takes_first_batches(tmp_path):
    x, y = _data(n=40)
    x[20:] += 5.0  # samples past the probe are far away: taking them shows
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    callback = NeuronSensitivityCallback(dataset, log_dir=tmp_path, probe_size=20)
    model = _fit([callback], epochs=1)
    for wrt in WRTS:
        expected = neuron_sensitivity(model, x[:20], wrt=wrt)
        other = neuron_sensitivity(model, x[:24], wrt=wrt)
        for key in expected:
            logged = callback.sensitivities[0][wrt][key]
            np.testing.assert_allclose(logged, expected[key], rtol=1e-5, atol=1e-7)
        if wrt == "weights":
            # A probe of 24 samples (three whole batches) would differ. (The
            # linear h1's sensitivity to inputs, ||W[:, k]||, does not see x.)
            assert not np.allclose(callback.sensitivities[0][wrt]["h1"], other["h1"])


def test_dataset_probe_defaults_to_128_samples(tmp_path):
    x, y = _data(n=200)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(50)
    callback = NeuronSensitivityCallback(dataset, log_dir=tmp_path, wrt="inputs")
    model = _fit([callback], epochs=1, x=x[:32], y=y[:32])
    expected = neuron_sensitivity(model, x[:128], wrt="inputs")
    for key in expected:
        np.testing.assert_allclose(
            callback.sensitivities[0]["inputs"][key], expected[key], rtol=1e-5, atol=1e-7
        )


def test_xy_tuple_probe_ignores_labels(tmp_path):
    x, y = _data()
    callback = NeuronSensitivityCallback((x[:8], y[:8]), log_dir=tmp_path)
    model = _fit([callback], epochs=1)
    for wrt in WRTS:
        expected = neuron_sensitivity(model, x[:8], wrt=wrt)
        for key in expected:
            np.testing.assert_allclose(
                callback.sensitivities[0][wrt][key], expected[key], rtol=1e-5, atol=1e-7
            )


def test_two_input_model_with_dict_probe(tmp_path):
    left = keras.Input((3,), name="left")
    right = keras.Input((2,), name="right")
    h = L.Concatenate()([L.Dense(3, name="a")(left), L.Dense(2, name="b")(right)])
    model = keras.Model([left, right], L.Dense(1, name="out")(h))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(2)
    xl, xr = rng.normal(size=(16, 3)), rng.normal(size=(16, 2))
    probe = {"left": xl[:4].astype("float32"), "right": xr[:4].astype("float32")}
    callback = NeuronSensitivityCallback(probe, log_dir=tmp_path, num_bins=5)
    model.fit([xl, xr], np.zeros(16), epochs=1, verbose=0, callbacks=[callback])
    events = _events(tmp_path / "sensitivity")
    for wrt in WRTS:
        expected = neuron_sensitivity(model, [probe["left"], probe["right"]], wrt=wrt)
        assert list(expected) == ["a", "b", "out"]
        for key, values in expected.items():
            np.testing.assert_allclose(
                callback.sensitivities[0][wrt][key], values, rtol=1e-5, atol=1e-7
            )
            buckets = _series(events, f"sensitivity_to_{wrt}/{key}")[0]
            _check_histogram(buckets, values, num_bins=5)


def test_layers_and_reduction_arguments(tmp_path):
    x, _ = _data()
    callback = NeuronSensitivityCallback(
        x[:8], log_dir=tmp_path, layers=["out"], reduction="max", wrt="inputs"
    )
    model = _fit([callback], epochs=1)
    assert list(callback.sensitivities[0]["inputs"]) == ["out"]
    expected = neuron_sensitivity(model, x[:8], wrt="inputs", layers=["out"], reduction="max")
    np.testing.assert_allclose(
        callback.sensitivities[0]["inputs"]["out"], expected["out"], rtol=1e-5
    )
    tags = set(_events(tmp_path / "sensitivity").Tags()["tensors"])
    assert {
        "dead_fraction_to_inputs/out",
        "mean_sensitivity_to_inputs/out",
        "sensitivity_to_inputs/out",
    } <= tags
    # Only the selected layer and wrt (further summaries per layer are
    # allowed, the neuron health's among them), besides the run-wide tables,
    # the fit epoch of each step and the health's thresholds.
    run_wide = {"dead_neurons", "method", "fit_epoch", "activity_thresholds"}
    assert all(tag.endswith("/out") for tag in tags - run_wide), tags
    assert not any("weights" in tag for tag in tags), tags
    assert {"activity/out", "dormant_fraction/out", "saturated_fraction/out"} <= tags


def test_training_is_unchanged_by_the_callback(tmp_path):
    # Same seeds, with and without the callback: bit-identical weights (no
    # global RNG draws, no BatchNormalization updates, no dropout in the
    # sweep). A functional model, built before fit; test_safety.py has the
    # Sequential built inside fit.
    def run(callbacks):
        keras.utils.set_random_seed(7)
        stack = [
            L.Dense(8, activation="relu", name="h"),
            L.BatchNormalization(name="bn"),
            L.Dropout(0.5, name="drop"),
            L.Dense(3, activation="softmax", name="out"),
        ]
        inputs = keras.Input((6,))
        outputs = inputs
        for layer in stack:
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs)
        model.compile("adam", "sparse_categorical_crossentropy")
        x, y = _data()
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=callbacks)
        return [w.numpy() for w in model.weights]

    without = run([])
    assert len(without) == 8  # two Dense, BatchNormalization with its statistics
    x, _ = _data()
    with_callback = run([NeuronSensitivityCallback(x[:8], log_dir=tmp_path)])
    for a, b in zip(without, with_callback, strict=True):
        np.testing.assert_array_equal(a, b)


def test_verbose_prints_one_line_per_logged_epoch(tmp_path, capsys):
    x, _ = _data()
    callback = NeuronSensitivityCallback(x[:6], log_dir=tmp_path, verbose=1, freq=2)
    _fit([callback], epochs=3)
    out = capsys.readouterr().out
    assert "Epoch 0: neuron sensitivity" in out
    assert "Epoch 2: neuron sensitivity" in out
    assert "Epoch 1: neuron sensitivity" not in out
    # The ReLU layer's two dead units show in the count over all layers.
    assert "2/19 dead" in out


def test_callback_does_not_build_the_model(tmp_path):
    model = keras.Sequential([L.Dense(3, name="first")])
    callback = NeuronSensitivityCallback(np.ones((2, 4), "float32"), log_dir=tmp_path)
    callback.set_model(model)
    callback.on_train_begin()
    assert not model.built
    assert not os.path.exists(tmp_path / "sensitivity")


def test_whole_layer_dead(tmp_path):
    # Every unit of "act" dead: the histogram still holds all 8 (equal) values
    # and the dead fraction is 1.
    model = _model()
    kernel, bias = model.get_layer("h1").get_weights()
    model.get_layer("h1").set_weights([kernel, np.full_like(bias, -1e3)])
    x, _ = _data()
    callback = NeuronSensitivityCallback(x[:6], log_dir=tmp_path, num_bins=4)
    _fit([callback], epochs=1, model=model)
    events = _events(tmp_path / "sensitivity")
    for wrt in WRTS:
        np.testing.assert_array_equal(callback.sensitivities[0][wrt]["act"], 0.0)
        buckets = _series(events, f"sensitivity_to_{wrt}/act")[0]
        _check_histogram(buckets, np.zeros(8), num_bins=4)
        assert float(_series(events, f"dead_fraction_to_{wrt}/act")[0]) == 1.0
        assert float(_series(events, f"mean_sensitivity_to_{wrt}/act")[0]) == 0.0


def test_estimate_logs_its_errors_and_says_which_method(tmp_path, capsys):
    x, y = _data()
    probe = x[:10]
    callback = NeuronSensitivityCallback(
        probe, log_dir=tmp_path, method="estimate", num_probes=4, seed=3, verbose=1
    )
    model = _fit([callback], epochs=2)
    events = _events(tmp_path / "sensitivity")
    for wrt in WRTS:
        for key, width in KEYS.items():
            errors = _series(events, f"per_neuron_error_to_{wrt}/{key}")
            relative = _series(events, f"relative_error_to_{wrt}/{key}")
            assert sorted(errors) == sorted(relative) == [0, 1]
            for step in (0, 1):
                logged = callback.sensitivities[step][wrt]
                assert logged.method == "estimate" and logged.num_probes == 4
                np.testing.assert_array_equal(errors[step], logged.std_error[key])
                live = logged[key] > 0
                expected = np.median(logged.std_error[key][live] / logged[key][live])
                assert float(relative[step]) == pytest.approx(expected, rel=1e-5)
                assert errors[step].shape == (width,)
        # Dead units are exactly dead under the estimator too.
        assert np.all(callback.sensitivities[1][wrt]["act"][[0, 3]] == 0.0)
        # The same seed outside training gives the values of the last epoch.
        again = neuron_sensitivity(model, probe, wrt=wrt, method="estimate", num_probes=4, seed=3)
        for key in KEYS:
            np.testing.assert_allclose(callback.sensitivities[1][wrt][key], again[key], rtol=1e-5)
    texts = [tf.make_ndarray(e.tensor_proto).item().decode() for e in events.Tensors("method")]
    assert len(texts) == 2
    assert "to weights: estimate (4 probes)" in texts[0] and "to inputs: estimate (4 probes)" in texts[0]
    lines = capsys.readouterr().out.splitlines()
    assert "to weights (estimate (4 probes)): mean" in lines[0]


def test_auto_is_exact_on_this_small_model_and_says_so(default_run):
    *_, callback, _, events = default_run
    texts = [tf.make_ndarray(e.tensor_proto).item().decode() for e in events.Tensors("method")]
    assert [t.count(": exact") for t in texts] == [2, 2, 2]
    assert not any(tag.startswith("per_neuron_error_to_") for tag in events.Tags()["tensors"])
    assert all(callback.sensitivities[s][w].method == "exact" for s in range(3) for w in WRTS)
