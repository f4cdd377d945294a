"""The sweep's shortcuts against brute force: each one taken, each one exact.

The shortcuts change how the sweep gets its numbers, never the numbers:
Gram matrices at narrow tensors (rows stop there), rows that stay in one
channel through per-channel layers, dead ReLU rows packed out of chunked
rounds. Each test builds a model on which the shortcut is taken (and checks
that it is), then compares every selected layer with `oracle.brute_force`.
"""

import keras
import numpy as np
import oracle
import pytest
import tensorflow as tf

from keras_neuron_sensitivity.engine.sweep import Sweep
from keras_neuron_sensitivity.probe import build_graph, resolve_layers

RTOL, ATOL = 2e-3, 1e-6
L = keras.layers


def _check(model, x, sweep, wrt, exact_zero=(), keys=None):
    got = sweep([tf.constant(a) for a in oracle.as_list(x)])[wrt]
    for key, values in got.items():
        if keys is not None and key not in keys:
            continue
        expected = oracle.brute_force(
            model, x, oracle.output_fn(model, model.get_layer(key).output), wrt
        )
        np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")
        if key in exact_zero:
            # Exact zeros are exact: where brute force gives 0, so does the sweep.
            assert np.all(values[expected == 0] == 0), key
    return got


def _sweep(model, wrt, budget_mb=1024, layers=None):
    graph = build_graph(model)
    keys = resolve_layers(graph, layers)
    return Sweep(graph, keys, wrt, budget_mb * 2**20)


def bottleneck_net():
    """Convolutions, a depthwise block and a residual sum feeding a 3-wide
    bottleneck, then wide layers, a 2-wide bottleneck and wide layers again:
    rows stop at the bottlenecks, whose Gram matrices build on each other."""
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    s = L.Conv2D(2, 1, name="squeeze")(h)
    e = L.Conv2D(8, 3, strides=2, padding="same", name="expand")(s)
    e = L.BatchNormalization(name="bn2")(e)
    e = L.ReLU(6.0, name="relu6")(e)
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(e)
    d = L.BatchNormalization(name="bn3")(d)
    r = L.Add(name="residual")([e, L.ReLU(name="relu")(d)])
    p = L.PReLU(name="prelu")(L.Conv2D(3, 1, name="project")(r))  # a generic rule
    f = L.Flatten()(p)
    n = L.Dense(3, name="narrow")(f)
    w = L.Dense(24, activation="tanh", name="wide")(n)
    n2 = L.Dense(2, name="narrow2")(w)
    w2 = L.Dense(24, activation="relu", name="wide2")(n2)
    y = L.Dense(16, name="out")(w2)
    model = keras.Model(x, y)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, c))
            layer.beta.assign(rng.normal(size=c))
            layer.moving_mean.assign(rng.normal(size=c) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    model.get_layer("prelu").alpha.assign(rng.uniform(0.1, 0.5, model.get_layer("prelu").alpha.shape))
    probe = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    return model, probe


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_rows_stop_at_gram_cuts_and_match_brute_force(wrt):
    model, x = bottleneck_net()
    sweep = _sweep(model, (wrt,))
    _check(model, x, sweep, wrt)
    cuts = [sweep.plan.calls[cut.call].key for cut in sweep.plan.cuts]
    assert {"narrow", "narrow2"} <= set(cuts), cuts


def test_gram_cuts_with_weights_and_inputs_at_once():
    # The callback asks for both: two Gram matrices per cut, one pass.
    model, x = bottleneck_net()
    sweep = _sweep(model, ("weights", "inputs"))
    got = sweep([tf.constant(x)])
    assert len(sweep.plan.cuts) >= 2
    for wrt in ("weights", "inputs"):
        for key in ("c1", "dw", "narrow", "wide2"):
            values = got[wrt][key]
            expected = oracle.brute_force(
                model, x, oracle.output_fn(model, model.get_layer(key).output), wrt
            )
            np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


def test_gram_cuts_under_a_small_budget_give_the_same_values():
    # Chunked: Gram matrices once per sample chunk, rows in several rounds.
    model, x = bottleneck_net()
    whole = _sweep(model, ("weights",))([tf.constant(x)])["weights"]
    sweep = _sweep(model, ("weights",), budget_mb=0.05)
    chunked = sweep([tf.constant(x)])["weights"]
    samples, neurons = sweep.plan.samples, sweep.plan.rows
    assert samples < 3 or max(neurons) < 24  # really chunked
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-7)


def test_no_cut_splits_a_shared_layer_and_values_stay_exact():
    # A Dense used before and after the bottleneck: its gradient sums both
    # calls, so no cut may separate them (for weights); inputs may cut.
    a = keras.Input((6,))
    shared = L.Dense(6, activation="tanh", name="shared")
    h = shared(a)
    n = L.Dense(2, name="narrow")(h)
    w = L.Dense(6, activation="tanh", name="wide")(n)
    y = L.Dense(12, name="out")(shared(w))
    model = keras.Model(a, y)
    x = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    weights = _sweep(model, ("weights",), layers=["narrow", "wide", "out"])
    _check(model, x, weights, "weights")
    assert weights.plan.cuts == []
    inputs = _sweep(model, ("inputs",), layers=["narrow", "wide", "out"])
    _check(model, x, inputs, "inputs")


def dead_relu_net():
    """Dense and 1x1-convolution ReLU layers with units dead on some samples
    (and some on all), a standalone ReLU after a BatchNormalization."""
    x = keras.Input((1, 1, 4))
    c = L.Conv2D(12, 1, activation="relu", name="conv_relu")(x)
    b = L.BatchNormalization(name="bn")(c)
    r = L.ReLU(name="relu")(b)
    f = L.Flatten()(r)
    h = L.Dense(16, activation="relu", name="dense_relu")(f)
    y = L.Dense(5, name="out")(h)
    model = keras.Model(x, y)
    rng = np.random.default_rng(3)
    kernel, bias = model.get_layer("dense_relu").get_weights()
    bias[:4] = -1e3  # never on
    model.get_layer("dense_relu").set_weights([kernel, bias])
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.uniform(0.0, 1.0, 12))
    probe = rng.normal(size=(7, 1, 1, 4)).astype("float32")
    return model, probe


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_dead_relu_rows_are_packed_out_and_exact(wrt):
    model, x = dead_relu_net()
    # A small budget: several rounds, where packing pays.
    sweep = _sweep(model, (wrt,), budget_mb=0.02)
    got = _check(model, x, sweep, wrt, exact_zero={"conv_relu", "relu", "dense_relu"})
    assert any(sweep.plan.packed), sweep.plan.packed
    assert np.all(got["dense_relu"][:, :4] == 0.0)


def test_packed_rows_equal_unpacked_rows():
    model, x = dead_relu_net()
    whole = _sweep(model, ("weights",))([tf.constant(x)])["weights"]
    packed = _sweep(model, ("weights",), budget_mb=0.02)
    got = packed([tf.constant(x)])["weights"]
    # A second call reuses the packing decided on the first, with new weights.
    model.get_layer("out").kernel.assign(model.get_layer("out").kernel * 2.0)
    again = packed([tf.constant(x)])["weights"]
    fresh = _sweep(model, ("weights",))([tf.constant(x)])["weights"]
    for key in whole:
        np.testing.assert_allclose(got[key], whole[key], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(again[key], fresh[key], rtol=1e-5, atol=1e-7)
    assert packed._reverse_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_rows_stay_in_one_channel_through_per_channel_layers(wrt):
    # Targets whose rows cross per-channel layers (BatchNormalization, ReLU,
    # a strided dilated depthwise convolution with multiplier 2) before a
    # grouped and a plain convolution: every one of them starts in one channel.
    x = keras.Input((7, 7, 4))
    g = L.Conv2D(6, 3, groups=2, padding="same", activation="elu", name="grouped")(x)
    d = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw")(g)
    b = L.BatchNormalization(name="bn")(d)
    r = L.ReLU(name="relu")(b)
    c = L.Conv2D(5, 2, dilation_rate=2, activation="sigmoid", name="conv")(r)
    y = L.Dense(3, name="out")(L.GlobalAveragePooling2D()(c))
    model = keras.Model(x, y)
    probe = np.random.default_rng(4).normal(size=(2, 7, 7, 4)).astype("float32")
    _check(model, probe, _sweep(model, (wrt,)), wrt)


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_ghost_norm_of_rows_in_one_channel(wrt):
    # Few output positions, wide patches and many filters: a convolution's own
    # rows take the Gram-matrix form of their filter norm (base.channel_sqnorm).
    x = keras.Input((4, 4, 8))
    c = L.Conv2D(64, 3, activation="tanh", name="wide_patches")(x)
    y = L.Dense(2, name="out")(L.Flatten()(c))
    model = keras.Model(x, y)
    from keras_neuron_sensitivity.engine.rules import base

    assert base.ghost_is_cheaper(64, 4, 72, 1)
    probe = np.random.default_rng(6).normal(size=(2, 4, 4, 8)).astype("float32")
    _check(model, probe, _sweep(model, (wrt,)), wrt)
