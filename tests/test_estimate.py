"""The estimator (`method="estimate"`) and `method="auto"`.

The estimator's claims are statistical, so they are tested statistically,
against brute force (tests/oracle.py), never against the exact engine alone:

- unbiased in the square: over many seeds, the mean of `value**2` matches
  the brute-force squared norm, per neuron and sample (a z-test with a
  tolerance of 5 standard errors: with fixed seeds the test is repeatable,
  and a wrong factor or a missing term shows as tens of standard errors),
  and per layer (the ratio of sums);
- its reported standard error matches the seed-to-seed spread;
- exact zeros stay exact, seeds are independent and reproducible, and no
  global random state is touched.
"""

import random

import keras
import numpy as np
import pytest
import tensorflow as tf

import oracle
from keras_neuron_sensitivity import neuron_sensitivity
from keras_neuron_sensitivity.engine.estimate import Estimator
from keras_neuron_sensitivity.probe import build_graph

L = keras.layers
SEEDS = range(300)
Z_TOLERANCE = 5.0


def _mlp_with_dead_units():
    """Dense(10, relu): units 0-2 dead on every sample, 3 on the first only."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(10, activation="relu", name="h1"),
            L.Dense(5, activation="tanh", name="h2"),
            L.Dense(3, name="out"),
        ]
    )
    kernel, bias = model.get_layer("h1").get_weights()
    bias[:3] = -1e3
    kernel[:, 3], bias[3] = 0.0, 0.0
    kernel[0, 3] = 1.0  # unit 3 is x[:, 0], switched off where x[:, 0] < 0
    model.get_layer("h1").set_weights([kernel, bias])
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    x[:, 0] = [-1.0, 0.5, 1.0, 2.0]
    return model, x


def _cnn():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            L.Conv2D(4, 3, activation="relu", name="c1"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(3, 2, activation="tanh", name="c2"),
            L.Flatten(),
            L.Dense(3, name="out"),
        ]
    )
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype("float32")
    return model, x


MODELS = {"mlp": _mlp_with_dead_units, "cnn": _cnn}


def _brute_force(model, x, wrt):
    keys = [layer.name for layer in model.layers if layer.trainable_weights]
    return {
        key: oracle.brute_force(model, x, oracle.output_fn(model, model.get_layer(key).output), wrt)
        for key in keys
    }


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_unbiased_in_the_square_against_brute_force(name, wrt):
    model, x = MODELS[name]()
    truth = _brute_force(model, x, wrt)
    draws = {key: [] for key in truth}
    for seed in SEEDS:
        got = neuron_sensitivity(
            model, x, wrt=wrt, method="estimate", num_probes=4, seed=seed, reduction=None
        )
        assert got.method == "estimate" and got.num_probes == 4
        for key in truth:
            draws[key].append(np.square(got[key]))
    for key, exact in truth.items():
        squares = np.stack(draws[key])  # (seeds, B, C)
        exact_sq = np.square(exact)
        zero = exact_sq == 0
        # A neuron exactly insensitive on a sample is exactly zero every time.
        assert np.all(squares[:, zero] == 0), key
        mean = squares.mean(0)
        se = squares.std(0, ddof=1) / np.sqrt(len(SEEDS))
        z = (mean[~zero] - exact_sq[~zero]) / se[~zero]
        assert np.abs(z).max() < Z_TOLERANCE, (key, np.round(z, 2))
        # Per layer: the ratio of sums, against the spread of the sums.
        sums = squares.reshape(len(SEEDS), -1).sum(1)
        z_sum = (sums.mean() - exact_sq.sum()) / (sums.std(ddof=1) / np.sqrt(len(SEEDS)))
        assert abs(z_sum) < Z_TOLERANCE, (key, sums.mean() / exact_sq.sum())


def test_dead_units_are_exactly_zero_and_live_ones_are_not():
    model, x = _mlp_with_dead_units()
    for wrt in ("weights", "inputs"):
        exact = neuron_sensitivity(model, x, wrt=wrt, reduction=None)
        estimate = neuron_sensitivity(
            model, x, wrt=wrt, reduction=None, method="estimate", num_probes=4, seed=3
        )
        for key in exact:
            np.testing.assert_array_equal(estimate[key] == 0, exact[key] == 0, err_msg=key)
        assert np.all(estimate["h1"][:, :3] == 0)
        np.testing.assert_array_equal(estimate["h1"][:, 3] == 0, [True, False, False, False])


def test_reported_standard_error_matches_the_spread_over_seeds():
    model, x = _mlp_with_dead_units()
    for wrt in ("weights", "inputs"):
        runs = [
            neuron_sensitivity(model, x, wrt=wrt, method="estimate", num_probes=16, seed=s)
            for s in range(100)
        ]
        for key in runs[0]:
            values = np.stack([r[key] for r in runs])
            reported = np.stack([r.std_error[key] for r in runs])
            live = values.mean(0) > 0
            spread = values[:, live].std(0, ddof=1)
            ratio = np.sqrt(np.mean(np.square(reported[:, live]))) / np.sqrt(np.mean(np.square(spread)))
            assert 0.75 < ratio < 1.33, (wrt, key, ratio)
            assert np.all(reported[:, ~live] == 0)


def test_same_seed_same_values_other_seed_other_values():
    model, x = _cnn()
    kwargs = dict(method="estimate", num_probes=3, reduction=None)
    a = neuron_sensitivity(model, x, seed=11, **kwargs)
    b = neuron_sensitivity(model, x, seed=11, **kwargs)
    c = neuron_sensitivity(model, x, seed=12, **kwargs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.allclose(a[key], c[key]), key


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_consecutive_seeds_share_no_tangent(wrt):
    # tf.random.Generator.from_seed(s + 1) replays s's stream shifted by a few
    # draws (docs/estimator.md, section "Tangents and seeds"): no probe of seed 1 may repeat one of seed 0's.
    model, x = _mlp_with_dead_units()
    graph = build_graph(model)
    estimator = Estimator(graph, ["h2"], (wrt,), num_probes=4, memory_budget=2**30)
    inputs = [tf.constant(x)]
    first = estimator(inputs, 0)[wrt]["h2"]
    second = estimator(inputs, 1)[wrt]["h2"]
    for i in range(4):
        for j in range(4):
            assert not np.allclose(first[i], second[j]), (i, j)


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_values_do_not_depend_on_the_memory_budget(wrt):
    model, x = _cnn()
    kwargs = dict(wrt=wrt, method="estimate", num_probes=5, seed=4, reduction=None)
    big = neuron_sensitivity(model, x, **kwargs)
    small = neuron_sensitivity(model, x, memory_budget_mb=0.002, **kwargs)  # a sample a chunk
    for key in big:
        np.testing.assert_allclose(small[key], big[key], rtol=1e-5, atol=1e-7)


def test_no_global_random_state_is_read_or_advanced():
    model, x = _cnn()
    keras.utils.set_random_seed(5)
    expected = (random.random(), np.random.random(), tf.random.uniform([]).numpy(),
                keras.random.uniform([], seed=None).numpy())
    keras.utils.set_random_seed(5)
    for wrt in ("weights", "inputs"):
        neuron_sensitivity(model, x, wrt=wrt, method="estimate", num_probes=2)
        neuron_sensitivity(model, x, wrt=wrt, method="estimate", num_probes=2, seed=1)
    got = (random.random(), np.random.random(), tf.random.uniform([]).numpy(),
           keras.random.uniform([], seed=None).numpy())
    assert got == expected


def test_auto_is_exact_on_a_small_mlp():
    model, x = _mlp_with_dead_units()
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(model, x, wrt=wrt, method="auto", reduction=None)
        assert got.method == "exact" and got.num_probes is None
        truth = _brute_force(model, x, wrt)
        for key in truth:
            np.testing.assert_allclose(got[key], truth[key], rtol=2e-3, atol=1e-6)
            assert np.all(got.std_error[key] == 0)


@pytest.mark.parametrize(
    "widths, batch, wrts",
    [
        # The demo's MLP on scikit-learn's digits, at the callback's probe of 128.
        ((64, 128, 64, 10), 128, ("weights", "inputs")),
        # An MNIST-sized MLP: exact takes about a tenth of the estimator's time
        # to weights (closed-form weight terms, one diagonal seed per layer).
        ((784, 512, 256, 128, 10), 32, ("weights",)),
    ],
)
def test_auto_is_exact_on_mlps_where_exact_is_cheaper(widths, batch, wrts):
    layers = [keras.Input((widths[0],))]
    layers += [L.Dense(w, activation="relu") for w in widths[1:-1]] + [L.Dense(widths[-1])]
    model = keras.Sequential(layers)
    x = np.random.default_rng(0).normal(size=(batch, widths[0])).astype("float32")
    for wrt in wrts:
        got = neuron_sensitivity(model, x, wrt=wrt, method="auto")
        assert got.method == "exact", (widths, wrt)


def test_gram_plan_costs_by_hand():
    # Two calls, a row crossing them costs 1 and 10; one target at call 1
    # with 5 rows; one candidate cut after call 0 (2 entries, basis 7).
    from keras_neuron_sensitivity.engine import gram

    cut = gram.Cut(call=0, tensor=0, size=2, shape=(2,))
    costs = [1.0, 10.0]

    def plan(targets, candidates=(), quad=4.0):
        return gram.plan(list(candidates), targets, costs, lambda low, c: 7.0, lambda c: quad, 0.0)

    assert plan([(1, 5)]) == (55.0, [])  # 5 rows x (1 + 10)
    assert plan([(1, 5, 3.0)]) == (8.0, [])  # the own call's 50 replaced by 3
    # The cut: its basis (2 rows x 1 + 7), then 5 rows x (10 + quadratic 4).
    assert plan([(1, 5)], [cut]) == (55.0, [])  # 79 > 55: no cut
    assert plan([(1, 5)], [cut], quad=0.0) == (55.0, [])  # 59 > 55
    assert plan([(1, 50)], [cut], quad=0.0)[0] == 509.0  # 9 + 500 < 550: cut
    # A seed's savings never bring a target below its quadratic forms.
    assert plan([(1, 5, -1000.0)], [cut], quad=0.0)[0] == 0.0


def test_auto_estimates_where_exact_is_costly():
    # Wide convolutions over many positions: 3 x 48 neurons whose cotangents
    # each cross every earlier convolution.
    model = keras.Sequential(
        [keras.Input((16, 16, 3))]
        + [L.Conv2D(48, 3, padding="same", activation="relu", name=f"c{i}") for i in range(3)]
        + [L.GlobalAveragePooling2D(), L.Dense(2)]
    )
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    got = neuron_sensitivity(model, x, method="auto", layers=["c2"], num_probes=4, seed=0)
    assert got.method == "estimate" and got.num_probes == 4
    assert got["c2"].shape == (48,)


# --- every kind of model the exact method takes --------------------------------
# Same seed, same structure: the same tangents, so the estimate must equal that
# of a plain Keras 3 twin (whose estimate is checked against brute force above).


def _twin_equal(model, twin, x, rtol=1e-5, **kwargs):
    for wrt in ("weights", "inputs"):
        kwargs_wrt = dict(wrt=wrt, method="estimate", num_probes=3, seed=9, reduction=None, **kwargs)
        got = neuron_sensitivity(model, x, **kwargs_wrt)
        expected = neuron_sensitivity(twin, x, **kwargs_wrt)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=1e-6, err_msg=f"{key} {wrt}")


def test_tf_keras_model_equals_its_keras3_twin():
    tf_keras = pytest.importorskip("tf_keras")

    def build(lib):
        x = lib.Input((5,))
        h = lib.layers.Dense(4, activation="relu", name="h")(x)
        a = lib.layers.Dense(4, activation="tanh", name="a")(h)
        return lib.Model(x, lib.layers.Dense(3, name="o")(lib.layers.Add()([h, a])))

    model, twin = build(tf_keras), build(keras)
    twin.set_weights(model.get_weights())
    _twin_equal(model, twin, np.random.default_rng(0).normal(size=(3, 5)).astype("float32"))


def test_mixed_precision_equals_its_float32_twin():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, x = _cnn()
        assert model.get_layer("c1").compute_dtype == "float16"
    finally:
        keras.config.set_dtype_policy(policy)
    twin, _ = _cnn()
    twin.set_weights(model.get_weights())
    _twin_equal(model, twin, x)
    assert model.get_layer("c1").compute_dtype == "float16"


def test_subclassed_model_equals_its_functional_twin():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = L.Dense(5, activation="relu", name="d1")
            self.d2 = L.Dense(3, name="d2")

        def call(self, x):
            return self.d2(self.d1(x))

    net = Net()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    net(x)
    inputs = keras.Input((4,))
    twin = keras.Model(inputs, net.d2(net.d1(inputs)))
    _twin_equal(net, twin, x)


def test_unbiased_at_the_embedded_input_of_a_string_model():
    # Strings -> TextVectorization -> Embedding -> ...: to inputs, the tangents
    # sit at the embedding output (the embedded input), as the exact method's
    # derivative does; checked against brute force there.
    texts = np.array(["the cat sat", "a dog ran far", "the dog sat down", "cats run"], object)
    vectorize = L.TextVectorization(max_tokens=12, output_mode="int", output_sequence_length=4)
    vectorize.adapt(texts)
    text = keras.Input(shape=(1,), dtype="string")
    embedding = L.Embedding(12, 3, name="embedding")
    h = L.Dense(4, activation="tanh", name="hidden")(embedding(vectorize(text)))
    model = keras.Model(text, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h)))
    ids = vectorize(texts[:, None]).numpy()
    truth = {}
    for key in ("hidden", "out"):
        fn = oracle.output_fn(model, model.get_layer(key).output)
        truth[key] = oracle.brute_force(model, [texts[:, None]], fn, "inputs", [embedding])
    draws = {key: [] for key in truth}
    for seed in range(300):
        got = neuron_sensitivity(
            model, texts, wrt="inputs", method="estimate", num_probes=4, seed=seed,
            reduction=None, layers=list(truth),
        )
        for key in truth:
            draws[key].append(np.square(got[key]))
    assert ids.shape == (4, 4)
    for key, exact in truth.items():
        squares = np.stack(draws[key])
        mean, se = squares.mean(0), squares.std(0, ddof=1) / np.sqrt(len(draws[key]))
        z = (mean - np.square(exact)) / se
        assert np.abs(z).max() < Z_TOLERANCE, (key, np.round(z, 2))
