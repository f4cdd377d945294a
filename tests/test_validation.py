"""Argument and input checks: each error says what was received and expected.

Callback arguments fail in `__init__`; a probe that does not fit the model
fails at the start of training, before any epoch is spent.
"""

import os

import keras
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_neuron_sensitivity import (
    NeuronSensitivityCallback,
    UnsupportedModelError,
    neuron_activity,
    neuron_jacobian,
    neuron_sensitivity,
)

L = keras.layers


def _mlp():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(3, activation="relu", name="hidden"),
            L.Dense(2, name="out"),
        ]
    )
    model.compile("sgd", "mse")
    return model


X = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
Y = np.zeros((6, 2), "float32")


# --- neuron_sensitivity / neuron_jacobian arguments --------------------------


@pytest.mark.parametrize(
    "wrt", ["bias", "input", None, ("weights", "inputs"), ["weights"]], ids=repr
)
def test_api_bad_wrt(wrt):
    with pytest.raises(ValueError, match=r"Received wrt=.*Expected 'weights' or 'inputs'"):
        neuron_sensitivity(_mlp(), X, wrt=wrt)
    with pytest.raises(ValueError, match=r"Received wrt="):
        neuron_jacobian(_mlp(), X, "out", wrt=wrt)


@pytest.mark.parametrize("reduction", ["sum", "median", "", 0], ids=repr)
def test_api_bad_reduction(reduction):
    with pytest.raises(ValueError, match=r"Received reduction=.*Expected one of"):
        neuron_sensitivity(_mlp(), X, reduction=reduction)


@pytest.mark.parametrize("budget", [0, -1, "big", True, None], ids=repr)
def test_api_bad_memory_budget(budget):
    with pytest.raises(ValueError, match=r"Received memory_budget_mb=.*positive"):
        neuron_sensitivity(_mlp(), X, memory_budget_mb=budget)


@pytest.mark.parametrize("budget", [float("nan"), float("inf")], ids=repr)
def test_api_non_finite_memory_budget(budget):
    with pytest.raises(ValueError, match=r"Received memory_budget_mb=.*positive"):
        neuron_sensitivity(_mlp(), X, memory_budget_mb=budget)


@pytest.mark.parametrize("budget", [float("nan"), float("inf")], ids=repr)
def test_callback_non_finite_memory_budget(budget, tmp_path):
    with pytest.raises(ValueError, match=r"Received memory_budget_mb="):
        NeuronSensitivityCallback(X, tmp_path, memory_budget_mb=budget)


def test_unknown_layer_lists_available_names():
    with pytest.raises(ValueError, match=r"'nope'.*Expected one of \['hidden', 'out'\]"):
        neuron_sensitivity(_mlp(), X, layers=["nope"])
    with pytest.raises(ValueError, match=r"'nope'.*'hidden', 'out'"):
        neuron_jacobian(_mlp(), X, "nope")


def test_layer_object_from_another_model():
    stranger = _mlp().get_layer("out")
    with pytest.raises(ValueError, match=r"does not have.*'hidden', 'out'"):
        neuron_sensitivity(_mlp(), X, layers=[stranger])


def test_empty_layers_list():
    with pytest.raises(ValueError, match=r"layers=\[\].*'hidden', 'out'"):
        neuron_sensitivity(_mlp(), X, layers=[])


def test_neuron_jacobian_takes_one_layer():
    with pytest.raises(ValueError, match=r"a list.*one layer"):
        neuron_jacobian(_mlp(), X, ["hidden", "out"])


def test_not_a_model():
    with pytest.raises(TypeError, match=r"Received model of type Dense.*keras.Model"):
        neuron_sensitivity(L.Dense(2), X)


def test_unbuilt_sequential():
    model = keras.Sequential([L.Dense(3), L.Dense(2)])
    with pytest.raises(UnsupportedModelError, match=r"not built.*keras.Input"):
        neuron_sensitivity(model, X)
    # Still a ValueError for users who catch that.
    with pytest.raises(ValueError):
        neuron_jacobian(model, X, "dense")


def test_unbuilt_subclassed_model():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(UnsupportedModelError, match=r"not built"):
        neuron_sensitivity(Subclassed(), X)


# --- the batch ---------------------------------------------------------------


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((0, 4), "float32"), r"empty .*at least one sample"),
        (np.zeros((6, 5), "float32"), r"shape \(6, 5\).*Expected \(batch, 4\)"),
        (np.zeros((6, 4, 1), "float32"), r"shape \(6, 4, 1\).*Expected \(batch, 4\)"),
        (np.float32(1.0), r"empty"),
        ([X, X], r"2 array\(s\).*Expected 1"),
    ],
    ids=["empty", "wrong_width", "wrong_rank", "scalar", "two_arrays"],
)
def test_api_bad_batch(x, match):
    with pytest.raises(ValueError, match=match):
        neuron_sensitivity(_mlp(), x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_batch(bad):
    x = X.copy()
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"1 NaN or infinite value"):
        neuron_sensitivity(_mlp(), x)


def _two_input_model():
    left = keras.Input((3,), name="left")
    right = keras.Input((2,), name="right")
    h = L.Concatenate()([L.Dense(2, name="a")(left), L.Dense(2, name="b")(right)])
    return keras.Model([left, right], L.Dense(1, name="out")(h))


def test_dict_batch_missing_input():
    with pytest.raises(ValueError, match=r"keys \['left'\].*missing \['right'\]"):
        neuron_sensitivity(_two_input_model(), {"left": np.zeros((2, 3), "float32")})


def test_batch_sizes_differ_between_inputs():
    x = [np.zeros((2, 3), "float32"), np.zeros((3, 2), "float32")]
    with pytest.raises(ValueError, match=r"different numbers of samples \[2, 3\]"):
        neuron_sensitivity(_two_input_model(), x)


def _token_model(name):
    ids = keras.Input((3,), dtype="int32", name=name)
    e = L.Flatten()(L.Embedding(5, 2, name="emb")(ids))
    return ids, e


def test_inputs_of_integer_only_model_are_measured_at_the_embedding():
    ids, e = _token_model("token_ids")
    model = keras.Model(ids, L.Dense(2, name="out")(e))
    tokens = np.array([[1, 2, 3], [0, 4, 4]], "int32")
    result = neuron_sensitivity(model, tokens, wrt="inputs")
    # The embedding's own neurons: the mean over 3 positions of its output,
    # differentiated with respect to that output, has norm 1 / sqrt(3).
    np.testing.assert_allclose(result["emb"], 3**-0.5, rtol=1e-6)
    jac = neuron_jacobian(model, tokens, "out", wrt="inputs")
    assert jac.shape == (2, 2, 3, 2)  # (B, C, *embedding output)


def test_model_without_any_sensitivity_input():
    """No functional model has integer inputs that no layer turns into
    floats (the first float any layer makes from them is an embedded input),
    so this checks the rule on the graph's description directly."""
    from keras_neuron_sensitivity import _batch, probe

    graph = probe.Graph([], [], [], [], [], model_inputs=[probe.ModelInput(0, "ids", "int32", (None, 3))])
    with pytest.raises(ValueError, match=r"wrt='inputs'.*\['ids'\].*no layer turns into floating-point.*wrt='weights'"):
        _batch.warn_integer_inputs(graph)
    with pytest.raises(ValueError, match=r"no layer turns"):
        _batch.resolve_wrt(graph, ("weights", "inputs"))
    with pytest.warns(UserWarning, match=r"\['ids'\].*only the sensitivity to weights is logged"):
        assert _batch.resolve_wrt(graph, None) == ("weights",)


def _masked_attention_model(mask_name):
    x = keras.Input((3, 4), name="floats")
    mask = keras.Input((3, 3), dtype="int32", name=mask_name)
    a = L.MultiHeadAttention(1, 2, name="mha")(x, x, attention_mask=mask)
    return keras.Model([x, mask], L.Dense(2, name="out")(L.Flatten()(a)))


def test_an_integer_input_that_only_masks_is_left_out_quietly():
    # A mask going straight into attention carries no features: it has no
    # derivative and is left out, with nothing to warn about.
    model = _masked_attention_model("mask_in_warning_test")
    batch = [np.ones((2, 3, 4), "float32"), np.tril(np.ones((2, 3, 3), "int32"))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = neuron_sensitivity(model, batch, wrt="inputs")
    assert {"mha", "out"} <= set(result)
    assert np.all(result["out"] > 0)


def test_an_integer_input_with_features_that_reaches_no_embedding_warns():
    x = keras.Input((3,), name="floats")
    counts = keras.Input((3,), dtype="int32", name="counts_in_warning_test")
    scaled = L.Lambda(lambda t: t[0] * keras.ops.cast(t[1], "float32"), name="scaled")([x, counts])
    model = keras.Model([x, counts], L.Dense(2, name="out")(scaled))
    batch = [np.ones((2, 3), "float32"), np.full((2, 3), 2, "int32")]
    with pytest.warns(UserWarning, match=r"\['counts_in_warning_test'\] are integers.*left out.*\['floats'\]"):
        result = neuron_sensitivity(model, batch, wrt="inputs")
    assert np.all(result["out"] > 0)


@pytest.mark.parametrize("method", ["fast", "Exact", None, 1], ids=repr)
def test_api_bad_method(method):
    with pytest.raises(ValueError, match=r"Received method=.*Expected one of \('exact', 'estimate', 'auto'\)"):
        neuron_sensitivity(_mlp(), X, method=method)


@pytest.mark.parametrize("num_probes", [0, 1, -4, 2.5, "8", True], ids=repr)
def test_api_bad_num_probes(num_probes):
    with pytest.raises(ValueError, match=r"Received num_probes=.*at least 2"):
        neuron_sensitivity(_mlp(), X, method="estimate", num_probes=num_probes)


@pytest.mark.parametrize("seed", [-1, 2**62, 1.5, "0", True], ids=repr)
def test_api_bad_seed(seed):
    with pytest.raises(ValueError, match=r"Received seed=.*non-negative int"):
        neuron_sensitivity(_mlp(), X, method="estimate", seed=seed)


@pytest.mark.parametrize("name", ["dormant_threshold", "saturation_threshold"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.1", None, True], ids=repr)
def test_api_bad_thresholds(name, value):
    with pytest.raises(ValueError, match=rf"Received {name}=.*non-negative number"):
        neuron_activity(_mlp(), X, **{name: value})


# --- callback arguments --------------------------------------------------------


@pytest.mark.parametrize("value", [-1, float("nan"), "0.1", None], ids=repr)
def test_callback_bad_dormant_threshold(value, tmp_path):
    with pytest.raises(ValueError, match=r"Received dormant_threshold=.*non-negative number"):
        NeuronSensitivityCallback(X, tmp_path, dormant_threshold=value)


@pytest.mark.parametrize("value", [1, "yes", None], ids=repr)
def test_callback_bad_activity(value, tmp_path):
    with pytest.raises(TypeError, match=r"Received activity=.*Expected True"):
        NeuronSensitivityCallback(X, tmp_path, activity=value)


@pytest.mark.parametrize(
    "wrt", ["bias", (), ("weights", "bias"), ""], ids=repr
)
def test_callback_bad_wrt(wrt, tmp_path):
    with pytest.raises(ValueError, match=r"Received wrt=.*'weights', 'inputs' or a tuple"):
        NeuronSensitivityCallback(X, tmp_path, wrt=wrt)


@pytest.mark.parametrize("wrt", [None, "weights", "inputs", ("inputs",), ["weights", "inputs"]])
def test_callback_good_wrt(wrt, tmp_path):
    NeuronSensitivityCallback(X, tmp_path, wrt=wrt)


@pytest.mark.parametrize(
    "freq", [0, -1, "x", [], [-1], True, 1.5, [1, "2"], [0.5]], ids=repr
)
def test_callback_bad_freq(freq, tmp_path):
    with pytest.raises(ValueError, match=r"Received freq=.*positive int N.*0-based"):
        NeuronSensitivityCallback(X, tmp_path, freq=freq)


@pytest.mark.parametrize("reduction", ["sum", "", 1], ids=repr)
def test_callback_bad_reduction(reduction, tmp_path):
    with pytest.raises(ValueError, match=r"Received reduction=.*Expected one of"):
        NeuronSensitivityCallback(X, tmp_path, reduction=reduction)


def test_callback_reduction_none(tmp_path):
    with pytest.raises(ValueError, match=r"reduction=None.*one value per neuron"):
        NeuronSensitivityCallback(X, tmp_path, reduction=None)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True, "30", None], ids=repr)
def test_callback_bad_num_bins(num_bins, tmp_path):
    with pytest.raises(ValueError, match=r"Received num_bins=.*positive int"):
        NeuronSensitivityCallback(X, tmp_path, num_bins=num_bins)


@pytest.mark.parametrize("probe_size", [0, -1, 1.5, "8"], ids=repr)
def test_callback_bad_probe_size(probe_size, tmp_path):
    with pytest.raises(ValueError, match=r"Received probe_size=.*positive int"):
        NeuronSensitivityCallback(X, tmp_path, probe_size=probe_size)


@pytest.mark.parametrize("on_error", ["ignore", None, "RAISE"], ids=repr)
def test_callback_bad_on_error(on_error, tmp_path):
    with pytest.raises(ValueError, match=r"Received on_error=.*'warn', 'raise'"):
        NeuronSensitivityCallback(X, tmp_path, on_error=on_error)


@pytest.mark.parametrize("budget", [0, -5, "1GB", True], ids=repr)
def test_callback_bad_memory_budget(budget, tmp_path):
    with pytest.raises(ValueError, match=r"Received memory_budget_mb="):
        NeuronSensitivityCallback(X, tmp_path, memory_budget_mb=budget)


def test_callback_log_dir_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match=r"is a file"):
        NeuronSensitivityCallback(X, str(path))
    # Below a file is no better.
    with pytest.raises(ValueError, match=r"is a file"):
        NeuronSensitivityCallback(X, path / "logs")


@pytest.mark.parametrize("log_dir", ["", None, 3], ids=repr)
def test_callback_log_dir_not_a_path(log_dir):
    with pytest.raises(ValueError, match=r"Received log_dir=.*directory path"):
        NeuronSensitivityCallback(X, log_dir)


def test_callback_log_dir_is_created_lazily(tmp_path):
    # Nothing is written before the first logged epoch.
    NeuronSensitivityCallback(X, tmp_path / "not_yet")
    assert not os.path.exists(tmp_path / "not_yet")


def test_callback_probe_none(tmp_path):
    with pytest.raises(ValueError, match=r"probe_data=None.*x_val\[:128\]"):
        NeuronSensitivityCallback(None, tmp_path)


def test_callback_empty_dataset(tmp_path):
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 4), "float32")).batch(2)
    with pytest.raises(ValueError, match=r"empty `tf.data.Dataset`"):
        NeuronSensitivityCallback(empty, tmp_path)


# --- probes that do not fit the model fail before the first epoch ends ---------


class _EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.parametrize(
    "probe, match",
    [
        (np.zeros((4, 5), "float32"), r"probe_data.*shape \(4, 5\).*Expected \(batch, 4\)"),
        (np.zeros((0, 4), "float32"), r"empty `probe_data`"),
        (np.array([[np.nan, 0, 0, 0]], "float32"), r"probe_data.*NaN or infinite"),
        ([X, X], r"probe_data.*2 array\(s\)"),
    ],
    ids=["wrong_width", "empty", "nan", "two_arrays"],
)
@pytest.mark.parametrize("built", [True, False], ids=["built", "built_in_fit"])
def test_bad_probe_fails_before_first_epoch_ends(probe, match, built, tmp_path):
    if built:
        model = _mlp()
    else:
        model = keras.Sequential([L.Dense(3, name="hidden"), L.Dense(2, name="out")])
        model.compile("sgd", "mse")
    ends = _EpochEnds()
    callback = NeuronSensitivityCallback(probe, tmp_path)
    with pytest.raises(ValueError, match=match):
        model.fit(X, Y, epochs=3, batch_size=2, verbose=0, callbacks=[callback, ends])
    assert ends.epochs == []
    if built:
        assert ends.batches == 0  # at on_train_begin: not even one step
    else:
        assert ends.batches <= 1  # checked as soon as fit has built the model


def test_unknown_layer_fails_before_first_epoch_ends(tmp_path):
    ends = _EpochEnds()
    callback = NeuronSensitivityCallback(X, tmp_path, layers=["nope"])
    with pytest.raises(ValueError, match=r"'nope'.*'hidden', 'out'"):
        _mlp().fit(X, Y, epochs=3, verbose=0, callbacks=[callback, ends])
    assert ends.epochs == []


def test_callback_default_wrt_logs_both_on_a_token_model(tmp_path):
    ids, e = _token_model("ids_callback")
    model = keras.Model(ids, L.Dense(2, name="out")(e))
    model.compile("sgd", "mse")
    tokens = np.array([[1, 2, 3], [0, 4, 4]], "int32")
    callback = NeuronSensitivityCallback(tokens, tmp_path)  # wrt=None: both where they exist
    model.fit(tokens, np.zeros((2, 2)), epochs=1, verbose=0, callbacks=[callback])
    logged = callback.sensitivities[0]
    assert set(logged) == {"weights", "inputs"}
    assert set(logged["inputs"]) == {"emb", "out"}
    np.testing.assert_allclose(logged["inputs"]["emb"], 3**-0.5, rtol=1e-6)


def test_callback_explicit_inputs_on_a_mask_only_int_input_is_quiet(tmp_path):
    model = _masked_attention_model("mask_callback")
    model.compile("sgd", "mse")
    batch = [np.ones((2, 3, 4), "float32"), np.tril(np.ones((2, 3, 3), "int32"))]
    callback = NeuronSensitivityCallback(batch, tmp_path, wrt="inputs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(batch, np.zeros((2, 2)), epochs=1, verbose=0, callbacks=[callback])
    assert not [w for w in caught if "mask_callback" in str(w.message)]
    assert set(callback.sensitivities[0]) == {"inputs"}


class _Sampled(L.Layer):
    """A layer TensorFlow cannot differentiate: Poisson sampling has no
    gradient registered (LookupError on the tape)."""

    def call(self, inputs):
        return tf.random.poisson([], tf.abs(inputs) + 1.0, dtype=inputs.dtype, seed=1)


def test_layer_without_gradient_names_the_layer_and_the_fix():
    from keras_neuron_sensitivity import UnsupportedLayerError

    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="d"), _Sampled(name="sampled"), L.Dense(2, name="o")])
    with pytest.raises(UnsupportedLayerError, match=r"'sampled' \(_Sampled\).*cannot differentiate.*layers="):
        neuron_sensitivity(model, np.ones((2, 3), "float32"), layers=["o"])
    # Layers before it are fine, and the error is a NotImplementedError.
    assert neuron_sensitivity(model, np.ones((2, 3), "float32"), layers=["d"])["d"].shape == (4,)
    assert issubclass(UnsupportedLayerError, NotImplementedError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="sampled"), r"Received method='sampled'"),
        (dict(num_probes=1), r"Received num_probes=1.*at least 2"),
        (dict(seed=-3), r"Received seed=-3.*non-negative int"),
    ],
    ids=["method", "num_probes", "seed"],
)
def test_callback_bad_method_arguments_fail_at_creation(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        NeuronSensitivityCallback(X, tmp_path, **kwargs)


@pytest.mark.parametrize("backend", ["numpy", "openvino"])
def test_backends_without_autodiff_are_refused_before_training(backend, monkeypatch, tmp_path):
    # Keras picks its backend once per process; the package reads it through
    # `engine.backend.name()`, which is what is replaced here. (JAX and
    # PyTorch are supported: tests/backends runs the product on each.)
    from keras_neuron_sensitivity.engine import backend as backend_module

    model = _mlp()
    with monkeypatch.context() as patch:
        patch.setattr(backend_module, "name", lambda: backend)
        with pytest.raises(ValueError, match=rf"'{backend}' backend.*'tensorflow', 'jax' or 'torch'"):
            neuron_sensitivity(model, X)
        ends = _EpochEnds()
        callback = NeuronSensitivityCallback(X, tmp_path)
        with pytest.raises(ValueError, match=rf"'{backend}' backend"):
            model.fit(X, Y, epochs=2, verbose=0, callbacks=[callback, ends])
        assert ends.batches == 0 and ends.epochs == []
