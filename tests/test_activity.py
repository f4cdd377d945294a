"""Neuron health against NumPy: every statistic, the statuses, the utility.

Each site's tensor comes from Keras's own graph (`keras.Model(model.inputs,
tensor)`, or the inner layer's `call` patched for a site inside a layer:
`oracle.site_fn`), never from the package's replay; the statistics are
then computed here in float64 NumPy from their definitions (docs/definitions.md,
"Neuron health"). Which positions a Keras mask keeps is written down per
model from the token ids, not read from the package. The slope is checked
against the activation's derivative at the pre-activation by
`tf.GradientTape`, relative to its largest derivative found on a grid; the
utility against weights set by hand, with literal answers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import oracle
from activity_oracle import check as _check
from activity_oracle import expected
from activity_oracle import relu_like as _relu_like
from inside_models import frozen_base, llama
from test_zoo import ZOO, _output_tensor
from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_activity, neuron_sensitivity
from keras_neuron_sensitivity.engine.activity import merge, site_statistics

L = keras.layers
RTOL = 1e-5
RNG = np.random.default_rng(11)

def _site_layer(model, key):
    """The layer whose output a key of the functional graph names (None for
    a site inside a layer)."""
    if oracle.site_fn(model, key) is None:
        return _output_tensor(model, key)._keras_history.operation
    return None


@pytest.mark.parametrize("name", sorted(ZOO), ids=sorted(ZOO))
def test_statistics_match_numpy_on_the_zoo(name):
    model, x = ZOO[name]()
    got = neuron_activity(model, x)
    assert got, "no layer selected"
    for key, stats in got.items():
        fn = oracle.site_fn(model, key) or oracle.output_fn(model, _output_tensor(model, key))
        y = np.asarray(fn(oracle.as_list(x)))
        layer = _site_layer(model, key)
        positive = layer is not None and _relu_like(layer)
        _check(stats, expected(y, positive=positive), key)
        assert stats["status"].shape == (y.shape[-1],)


def masked_lstm():
    """A Keras mask from `Embedding(mask_zero=True)` through an LSTM and a
    `Dense` on every step; a `Conv1D` beside them drops it."""
    ids = keras.Input((6,), dtype="int32")
    e = L.Embedding(9, 4, mask_zero=True, name="emb")(ids)
    h = L.LSTM(3, return_sequences=True, name="lstm")(e)
    d = L.Dense(4, activation="relu", name="per_step")(h)
    c = L.Conv1D(2, 3, name="conv")(e)  # no masking: every position counts
    pooled = L.Concatenate()([L.GlobalAveragePooling1D()(d), L.Flatten()(c)])
    model = keras.Model(ids, L.Dense(2, name="out")(pooled))
    x = RNG.integers(1, 9, (4, 6)).astype("int32")
    x[0, 4:] = 0  # padded at the end
    x[1, 2] = 0  # a hole in the middle
    x[2, 1:] = 0  # one token only
    # Which keys carry the mask (the ids' nonzeros), from Keras's masking
    # rules: Embedding makes it, LSTM and Dense pass it on, Conv1D drops it.
    masked = {"emb": True, "lstm": True, "per_step": True, "conv": False, "out": False}
    return model, x, masked


def test_masked_positions_are_left_out():
    model, x, masked = masked_lstm()
    got = neuron_activity(model, x)
    assert set(got) == set(masked)
    for key, is_masked in masked.items():
        layer = model.get_layer(key)
        y = np.asarray(oracle.output_fn(model, layer.output)([x]))
        keep = (x != 0) if is_masked else None
        want = expected(y, keep, positive=_relu_like(layer))
        _check(got[key], want, key)
        if is_masked:  # the test can tell: the padded steps would change it
            assert not np.allclose(expected(y, None, _relu_like(layer))["mean"], want["mean"]), key


def test_sites_inside_layers_match_numpy():
    model, x = frozen_base()
    got = neuron_activity(model, x)
    block = model.get_layer("block")
    for key in ["block/up", "block/gate", "block/down", "block/ffn", "block/norm"]:
        y = np.asarray(oracle.site_fn(model, key)(oracle.as_list(x)))
        positive = key == "block/gate"  # a Dense with a ReLU
        _check(got[key], expected(y, positive=positive), key)
    # The feed-forward units' outgoing weights are the down projection's rows.
    ffn = np.asarray(oracle.site_fn(model, "block/ffn")(oracle.as_list(x)), np.float64)
    mass = np.abs(block.down.kernel.numpy().astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(got["block/ffn"]["utility"], np.abs(ffn).reshape(-1, ffn.shape[-1]).mean(0) * mass, rtol=RTOL)
    # Nothing trainable upstream of the stem (frozen), in a frozen base.
    assert set(got["stem"]["status"]) == {"frozen"}


def test_a_keras_hub_block_matches_numpy():
    model, x = llama()
    keys = ["transformer_layer_1/ffn", "transformer_layer_1/self_attention/query",
            "transformer_layer_1/self_attention/heads"]
    got = neuron_activity(model, x, layers=keys)
    for key in keys:
        (full,) = [k for k in got if k.endswith(key)]
        y = np.asarray(oracle.site_fn(model, full)([x[t.name] for t in model.inputs]))
        _check(got[full], expected(y), full)


# --- slope and saturation --------------------------------------------------------

ACTIVATIONS = ["sigmoid", "tanh", "relu6", "hard_sigmoid", "softsign", "softplus", "elu", "selu",
               "leaky_relu", "relu", "linear"]


def _derivative(activation, z):
    """`phi'(z) / max phi'`, by autodiff, the maximum over a fine grid."""
    fn = keras.activations.get(activation)

    def grad(values):
        values = tf.constant(values, tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = fn(values)
        return tape.gradient(out, values).numpy()

    largest = grad(np.linspace(-20, 20, 400_001)).max()
    return grad(np.asarray(z, np.float64)) / largest


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("fused", [False, True], ids=["activation_layer", "dense_activation"])
def test_slope_is_the_activation_derivative_where_it_fires(activation, fused):
    """Pre-activations spread over both tails, so the slope differs from 1."""
    x = keras.Input((3,))
    if fused:
        act = L.Dense(5, activation=activation, name="act")(x)
        model = keras.Model(x, L.Dense(2, name="out")(act))
    else:
        pre = L.Dense(5, name="pre")(x)
        act = L.Activation(activation, name="act")(pre)
        model = keras.Model(x, L.Dense(2, name="out")(act))
    layer = model.get_layer("act")
    kernel = RNG.normal(size=(3, 5)) * 3.0
    dense = layer if fused else model.get_layer("pre")
    dense.kernel.assign(kernel.astype("float32"))
    dense.bias.assign(np.linspace(-4, 8, 5).astype("float32"))
    probe = RNG.normal(size=(16, 3)).astype("float32")
    z = probe.astype(np.float64) @ dense.kernel.numpy() + dense.bias.numpy()
    y = np.asarray(keras.Model(x, act)(probe), np.float64)
    fires = y > 0 if _relu_like(layer) else y != 0
    relative = _derivative(activation, z)
    want = np.array([relative[fires[:, k], k].mean() if fires[:, k].any() else np.nan for k in range(5)])
    got = neuron_activity(model, probe, layers=["act"])["act"]
    np.testing.assert_allclose(got["slope"], want, rtol=1e-4, atol=2e-5)
    _check(got, expected(y, positive=_relu_like(layer)), "act")


def _saturation_model(activation, bias):
    """`Dense(4)` then the activation, its pre-activations set to `bias`
    (plus a little of the input, so that the neurons vary)."""
    x = keras.Input((2,))
    pre = L.Dense(4, name="pre")(x)
    act = (L.ReLU(max_value=6.0, name="act") if activation == "ReLU(6)" else L.Activation(activation, name="act"))(pre)
    model = keras.Model(x, L.Dense(2, name="out")(act))
    model.get_layer("pre").kernel.assign(np.full((2, 4), 0.05, "float32"))
    model.get_layer("pre").bias.assign(np.asarray(bias, "float32"))
    return model, RNG.uniform(-1, 1, (32, 2)).astype("float32")


# Per activation: biases (pre-activations) and the statuses they must give.
# Tails: |z| = 8 for the sigmoid (relative slope about 1e-3), 4 for tanh
# (1.3e-3), above 6 for ReLU6 (0); the middle of each is active. A sigmoid
# in its low tail is near zero: dormant first.
SATURATION_CASES = {
    "sigmoid": ([8.0, 0.0, 0.5, 9.0], ["saturated", "active", "active", "saturated"]),
    "tanh": ([4.0, -4.5, 0.8, -1.0], ["saturated", "saturated", "active", "active"]),
    "ReLU(6)": ([7.0, 3.0, 6.5, 2.0], ["saturated", "active", "saturated", "active"]),
    "relu6": ([7.0, 3.0, 6.5, 2.0], ["saturated", "active", "saturated", "active"]),
    "hard_sigmoid": ([3.5, 0.0, -0.5, 4.0], ["saturated", "active", "active", "saturated"]),
}


@pytest.mark.parametrize("activation", sorted(SATURATION_CASES))
def test_saturated_neurons_fire_far_from_zero_with_a_vanishing_slope(activation):
    bias, statuses = SATURATION_CASES[activation]
    model, probe = _saturation_model(activation, bias)
    got = neuron_activity(model, probe, layers=["act"])["act"]
    assert list(got["status"]) == statuses
    saturated = got["status"] == "saturated"
    assert np.all(got["tau_score"][saturated] > 0.5)  # far from zero, not dormant
    assert np.all(got["slope"][saturated] <= 0.01) and np.all(got["slope"][~saturated] > 0.01)
    if activation in ("ReLU(6)", "relu6", "hard_sigmoid"):
        # Capped on every sample: its sensitivity is exactly zero, yet it is
        # stuck on, not off: saturated, not dead.
        assert neuron_sensitivity(model, probe, layers=["act"])["act"][0] == 0


def test_a_sigmoid_in_its_low_tail_is_dormant_not_saturated():
    model, probe = _saturation_model("sigmoid", [-9.0, 0.0, 1.0, 2.0])
    got = neuron_activity(model, probe, layers=["act"])["act"]
    assert list(got["status"]) == ["dormant", "active", "active", "active"]
    assert got["slope"][0] <= 0.01  # its slope vanishes too, but dormant comes first


def test_dead_dormant_and_thresholds():
    """ReLUs set by hand: one never fires (dead), one fires weakly (dormant
    at tau = 0.1 but not at 0.01), two fire fully."""
    x = keras.Input((1,))
    h = L.Dense(4, activation="relu", name="h")(x)
    model = keras.Model(x, L.Dense(1, name="out")(h))
    model.get_layer("h").kernel.assign(np.array([[1.0, 1.0, 0.05, 1.0]], "float32"))
    model.get_layer("h").bias.assign(np.array([-10.0, 0.0, 0.0, 0.0], "float32"))
    probe = np.linspace(0.1, 1.0, 10, dtype="float32")[:, None]
    got = neuron_activity(model, probe, layers=["h"])["h"]
    # Mean |h|: 0, 0.55, 0.0275, 0.55 -> tau = 0, 0.5/... (layer mean 0.281875)
    np.testing.assert_allclose(got["tau_score"], np.array([0.0, 0.55, 0.0275, 0.55]) / 0.281875, rtol=1e-5)
    assert list(got["status"]) == ["dead", "active", "dormant", "active"]
    strict = neuron_activity(model, probe, layers=["h"], dormant_threshold=0.05)["h"]
    assert list(strict["status"]) == ["dead", "active", "active", "active"]
    assert neuron_sensitivity(model, probe, layers=["h"])["h"][0] == 0  # dead, as defined


# --- utility ------------------------------------------------------------------------


def test_utility_matches_a_hand_computation():
    """2 inputs -> Dense(3, relu) -> Dropout -> Dense(2): hand-set weights.

    h = relu(x W + b) with W = [[1, -1, 2], [0, 1, 1]], b = [0, 0, -1]; on
    x = (1, 0) and (0, 2): h = (1, 0, 1) and (0, 2, 1), so E|h| = (0.5, 1,
    1). The next kernel V = [[1, -2], [0.5, 0.5], [-3, 0]] gives sum_j |v_ij|
    = (3, 1, 3): utilities 1.5, 1, 3. The output layer has none (NaN)."""
    x = keras.Input((2,))
    h = L.Dense(3, activation="relu", name="h")(x)
    out = L.Dense(2, name="out")(L.Dropout(0.5)(h))
    model = keras.Model(x, out)
    model.get_layer("h").kernel.assign(np.array([[1, -1, 2], [0, 1, 1]], "float32"))
    model.get_layer("h").bias.assign(np.array([0, 0, -1], "float32"))
    model.get_layer("out").kernel.assign(np.array([[1, -2], [0.5, 0.5], [-3, 0]], "float32"))
    got = neuron_activity(model, np.array([[1, 0], [0, 2]], "float32"))
    np.testing.assert_allclose(got["h"]["mean_abs"], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(got["h"]["utility"], [1.5, 1.0, 3.0])
    assert np.isnan(got["out"]["utility"]).all()


def _conv_mass(kernel, groups):
    """Per input channel, the summed |weights| of every output channel of its
    group, by loops (kernel `(*size, channels / groups, filters)`)."""
    *_, per_group, filters = kernel.shape
    out = []
    for channel in range(per_group * groups):
        group = channel // per_group
        span = slice(group * filters // groups, (group + 1) * filters // groups)
        out.append(np.abs(kernel[..., channel % per_group, span]).sum())
    return np.array(out)


CONSUMERS = {
    "conv2d": (lambda: L.Conv2D(4, 2, name="next"), lambda layer: _conv_mass(layer.kernel.numpy(), 1)),
    "grouped_conv2d": (lambda: L.Conv2D(4, 2, groups=2, name="next"), lambda layer: _conv_mass(layer.kernel.numpy(), 2)),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(3, 2, name="next"),
                         lambda layer: np.abs(layer.kernel.numpy()).sum(axis=(0, 1, 2))),
    "depthwise": (lambda: L.DepthwiseConv2D(2, depth_multiplier=2, name="next"),
                  lambda layer: np.abs(layer.kernel.numpy()).sum(axis=(0, 1, 3))),
    "separable": (lambda: L.SeparableConv2D(3, 2, name="next"),
                  lambda layer: np.abs(layer.depthwise_kernel.numpy()).sum(axis=(0, 1, 3))),
    "dense_on_positions": (lambda: L.Dense(5, name="next"), lambda layer: np.abs(layer.kernel.numpy()).sum(axis=1)),
    "einsum_dense": (lambda: L.EinsumDense("abcd,de->abce", (4, 4, 5), name="next"),
                     lambda layer: np.abs(layer.kernel.numpy()).sum(axis=1)),
}


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_utility_of_a_neuron_read_by_a_convolution_or_dense(consumer):
    make, mass = CONSUMERS[consumer]
    x = keras.Input((5, 5, 3))
    site = L.Conv2D(4, 2, activation="relu", name="site")(x)
    following = make()
    out = L.Dense(2, name="out")(L.Flatten()(following(site)))
    model = keras.Model(x, out)
    probe = RNG.normal(size=(3, 5, 5, 3)).astype("float32")
    got = neuron_activity(model, probe, layers=["site"])["site"]
    y = np.asarray(keras.Model(x, site)(probe), np.float64)
    want = np.abs(y).reshape(-1, 4).mean(axis=0) * mass(following)
    np.testing.assert_allclose(got["utility"], want, rtol=RTOL)


def test_utility_is_undefined_where_the_next_layer_has_no_kernel():
    x = keras.Input((4, 4, 2))
    a = L.Conv2D(3, 2, activation="relu", name="a")(x)
    b = L.Dense(3, name="b")(L.Flatten()(a))  # `a` is read by Flatten
    c = L.Dense(3, activation="relu", name="c")(b)
    d = L.Dense(2, name="d")(L.Add()([b, c]))  # `b` and `c` are read by Add
    e = L.Dense(2, name="e")(d)
    model = keras.Model(x, e)
    got = neuron_activity(model, RNG.normal(size=(2, 4, 4, 2)).astype("float32"))
    # `b` feeds a Dense too, but also the Add: not defined.
    for key in ("a", "b", "c", "e"):
        assert np.isnan(got[key]["utility"]).all(), key
    assert np.isfinite(got["d"]["utility"]).all()


def test_utility_sums_over_every_consumer_and_counts_a_shared_layer_once():
    x = keras.Input((3,))
    h = L.Dense(2, activation="relu", name="h")(x)
    shared, other = L.Dense(2, name="shared"), L.Dense(1, name="other")
    out = L.Concatenate()([shared(h), shared(h), other(h)])
    model = keras.Model(x, out)
    probe = RNG.normal(size=(5, 3)).astype("float32")
    got = neuron_activity(model, probe, layers=["h"])["h"]
    y = np.asarray(keras.Model(x, h)(probe), np.float64)
    mass = np.abs(shared.kernel.numpy()).sum(1) + np.abs(other.kernel.numpy()).sum(1)
    np.testing.assert_allclose(got["utility"], np.abs(y).mean(0) * mass, rtol=RTOL)


# --- the reductions -------------------------------------------------------------------


def test_sums_of_chunks_merge_into_the_sums_of_the_whole():
    """A mean far from zero with a small spread: the centred squares keep the
    standard deviation that `sum(y^2) - n mean^2` would lose in float32."""
    y = (1000.0 + RNG.normal(size=(12, 5, 3)) * 1e-2).astype("float32")
    mask = RNG.uniform(size=(12, 5)) > 0.3

    def sums(part, keep):
        out = site_statistics(keras.ops.convert_to_tensor(part), keras.ops.convert_to_tensor(keep))
        return {k: keras.ops.convert_to_numpy(v).astype(np.float64) for k, v in out.items()}

    whole = sums(y, mask)
    merged = merge([sums(y[:5], mask[:5]), sums(y[5:6], mask[5:6]), sums(y[6:], mask[6:])])
    kept = y.astype(np.float64)[mask]
    for name in ("count", "sum", "abs_sum", "firing"):
        np.testing.assert_allclose(merged[name], whole[name], rtol=1e-6, err_msg=name)
    for got in (whole, merged):
        np.testing.assert_allclose(got["centered_squares"] / got["count"], kept.var(axis=0), rtol=2e-2)
    # What the centred squares avoid: float32 squares lose the spread entirely.
    y32 = kept.astype(np.float32)
    naive = (y32**2).mean(axis=0) - y32.mean(axis=0) ** 2
    assert not np.allclose(naive, kept.var(axis=0), rtol=0.5)


@pytest.mark.parametrize("asynchronous", [True, False], ids=["background", "epoch_end"])
def test_the_callback_logs_what_neuron_activity_gives_on_the_epochs_weights(tmp_path, asynchronous):
    """In the background the activity is computed on the snapshot of the
    epoch's weights (the next layer's kernel, for the utility, included);
    the last epoch's are the model's after `fit`."""
    x = RNG.normal(size=(64, 6)).astype("float32")
    model = keras.Sequential([
        keras.Input((6,)), L.Dense(8, activation="relu", name="h"),
        L.Dense(4, activation="tanh", name="t"), L.Dense(2, name="out"),
    ])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    callback = NeuronSensitivityCallback(x[:16], log_dir=tmp_path, asynchronous=asynchronous, method="exact")
    model.fit(x, RNG.normal(size=(64, 2)), epochs=3, verbose=0, callbacks=[callback])
    got = callback.activities[2]
    want = neuron_activity(model, x[:16])
    for key in want:
        for name, value in want[key].items():
            if name == "status":
                assert list(got[key][name]) == list(value), key
            else:
                np.testing.assert_allclose(got[key][name], value, rtol=1e-6, err_msg=f"{key} {name}")
    # Training moved the weights: an earlier epoch's activity differs.
    assert not np.allclose(callback.activities[0]["h"]["utility"], got["h"]["utility"])


def test_the_docstring_example_runs():
    import doctest

    from keras_neuron_sensitivity import api

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(api.neuron_activity, "neuron_activity", globs={"keras": keras, "np": np, "neuron_activity": neuron_activity}):
        runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 3
    assert runner.summarize(verbose=False).failed == 0


def _method_objects(model):
    """The method objects the cache holds for `model`."""
    from keras_neuron_sensitivity import _computation

    return [v for v in _computation.cache_entries(model).values() if hasattr(v, "num_probes")]


def _samples_per_chunk(runner):
    if runner.name == "exact":
        return runner._sweep.plan.samples
    return runner._estimator._plan[0]


# Budgets (MiB) that split the 8 samples below in chunks of 3, the last one
# short (the exact sweep pads it to 3), per method.
CHUNKED_BUDGET_MB = {"exact": 0.015, "estimate": 0.006}


@pytest.mark.parametrize("chunked", [False, True], ids=["one_call", "chunked"])
@pytest.mark.parametrize("method", ["exact", "estimate"])
def test_the_activity_is_read_in_the_methods_own_forward(method, chunked, monkeypatch):
    """No second forward (issue 21): with `ActivityForward` broken, the
    activity still comes, from the method's forward, and equals NumPy on
    Keras's own graph (a mask, a sequence, a conv; padded chunks)."""
    from keras_neuron_sensitivity import _computation
    from keras_neuron_sensitivity.engine import activity

    def forbidden(*args, **kwargs):
        raise AssertionError("a second forward ran for the activity")

    monkeypatch.setattr(activity.ActivityForward, "__init__", forbidden)
    model, x, masked = masked_lstm()
    # 8 samples, the same padding and other tokens: chunks leave a padded one.
    x = np.concatenate([x, np.where(x > 0, 9 - x, 0)])
    _computation.clear_cache()
    # To inputs: the same forward, six times cheaper on this LSTM than both wrt.
    problem = _computation.prepare(model, x, wrt=("inputs",), layers=None)
    budget_mb = CHUNKED_BUDGET_MB[method] if chunked else 1024
    results = _computation.compute(
        problem, method=method, num_probes=2, seed=0, memory_budget_mb=budget_mb, activity=True
    )
    assert results.activity_error is None
    (runner,) = _method_objects(model)
    assert runner.name == method
    assert _samples_per_chunk(runner) == (3 if chunked else len(x))
    assert set(results.activity) == set(masked)
    for key, is_masked in masked.items():
        layer = model.get_layer(key)
        y = np.asarray(oracle.output_fn(model, layer.output)([x]))
        want = expected(y, (x != 0) if is_masked else None, positive=_relu_like(layer))
        _check(results.activity[key], want, key)


def test_a_failed_activity_forward_costs_the_health_not_the_sensitivities(tmp_path, monkeypatch):
    from keras_neuron_sensitivity import _computation, load_sensitivity
    from keras_neuron_sensitivity.engine import activity

    def broken(*args, **kwargs):
        raise RuntimeError("no activity here")

    # Breaks the sums in the method's forward, then in the forward of
    # their own that `compute` falls back to.
    _computation.clear_cache()
    monkeypatch.setattr(activity, "_site_sums", broken)
    x = RNG.normal(size=(16, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")])
    model.compile("sgd", "mse")
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path)
    with pytest.warns(UserWarning, match="could not compute the neuron health.*no activity here"):
        model.fit(x, np.zeros((16, 2)), epochs=2, verbose=0, callbacks=[callback])
    assert sorted(callback.sensitivities) == [0, 1] and callback.activities == {}
    assert sorted(load_sensitivity(tmp_path)["weights"]["d"]) == [0, 1]
    strict = NeuronSensitivityCallback(x, log_dir=tmp_path / "strict", on_error="raise")
    with pytest.raises(RuntimeError, match="no activity here"):
        model.fit(x, np.zeros((16, 2)), epochs=1, verbose=0, callbacks=[strict])
    with pytest.raises(RuntimeError, match="no activity here"):
        neuron_activity(model, x)
