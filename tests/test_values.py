"""The numbers: `neuron_sensitivity` and `neuron_jacobian` against oracles.

Every expected value comes from outside the package: one `tape.gradient` per
neuron and sample over Keras's own graph (`oracle.brute_force`), float64 central
finite differences, or weights set by hand whose answer is written down.
"""

import warnings

import keras
import numpy as np
import oracle
import pytest
import tensorflow as tf

from keras_neuron_sensitivity import neuron_jacobian, neuron_sensitivity

RTOL = 2e-3
ATOL = 1e-6
L = keras.layers


def _rng():
    return np.random.default_rng(0)


def _normal(*shape):
    return _rng().normal(size=shape).astype("float32")


def _randomize_batch_norm(bn, rng):
    """Non-trivial statistics and affine terms, so a rule that ignores any of
    them (or uses batch statistics) gives different numbers."""
    c = bn.gamma.shape[0]
    bn.gamma.assign(rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c))
    bn.beta.assign(rng.normal(size=c))
    bn.moving_mean.assign(rng.normal(size=c))
    bn.moving_variance.assign(rng.uniform(0.3, 3.0, c))


# --- the models: each returns (model, probe, {key: tensor or callable}) -----
# The tensors are the layers' outputs in Keras's own graph; the oracle builds
# `keras.Model(model.inputs, tensor)` from them.


def mlp():
    x = keras.Input((5,))
    h1 = L.Dense(6, activation="relu", name="d_relu")(x)
    h2 = L.Dense(4, activation="tanh", name="d_tanh")(h1)
    y = L.Dense(3, activation="softmax", name="d_softmax")(h2)
    model = keras.Model(x, y)
    return model, _normal(4, 5), {"d_relu": h1, "d_tanh": h2, "d_softmax": y}


def dense_on_sequence_direct():
    # t * t >= i * o: the per-sample weight gradient is formed directly.
    x = keras.Input((5, 3))
    h = L.Dense(4, activation="sigmoid", name="seq_dense")(x)
    y = L.Dense(2, name="seq_out")(h)
    model = keras.Model(x, y)
    return model, _normal(3, 5, 3), {"seq_dense": h, "seq_out": y}


def dense_on_sequence_ghost():
    # t * t < i * o: the "ghost norm" path through Gram matrices.
    x = keras.Input((2, 6))
    h = L.Dense(5, activation="tanh", name="seq_dense")(x)
    y = L.Dense(4, name="seq_out")(h)
    model = keras.Model(x, y)
    return model, _normal(3, 2, 6), {"seq_dense": h, "seq_out": y}


def conv1d_batchnorm():
    x = keras.Input((7, 2))
    c = L.Conv1D(3, 3, activation="relu", name="conv")(x)
    b = L.BatchNormalization(name="bn")(c)
    y = L.Dense(2, name="out")(L.GlobalAveragePooling1D(name="gap")(b))
    model = keras.Model(x, y)
    _randomize_batch_norm(model.get_layer("bn"), _rng())
    return model, _normal(3, 7, 2), {"conv": c, "bn": b, "out": y}


def conv2d_batchnorm_pool_dense():
    x = keras.Input((6, 6, 1))
    c = L.Conv2D(2, 3, activation="tanh", name="conv")(x)
    b = L.BatchNormalization(name="bn")(c)
    p = L.MaxPooling2D(2, name="pool")(b)
    y = L.Dense(3, name="out")(L.Flatten(name="flat")(p))
    model = keras.Model(x, y)
    _randomize_batch_norm(model.get_layer("bn"), _rng())
    return model, _normal(3, 6, 6, 1), {"conv": c, "bn": b, "out": y}


def _activation_model(make_layer):
    def build():
        x = keras.Input((4,))
        h = L.Dense(5, name="pre")(x)
        a = make_layer()(h)
        y = L.Dense(2, name="post")(a)
        model = keras.Model(x, y)
        name = model.layers[2].name
        for v in model.layers[2].trainable_weights:  # PReLU's alpha: not zero
            v.assign(_rng().uniform(0.1, 0.6, v.shape))
        return model, _normal(4, 4), {"pre": h, name: a, "post": y}

    return build


def branching():
    x = keras.Input((4,))
    a = L.Dense(3, activation="relu", name="a")(x)
    b = L.Dense(3, activation="tanh", name="b")(x)
    s = L.Add(name="add")([a, b])
    c = L.Dense(3, activation="elu", name="c")(s)
    cat = L.Concatenate(name="cat")([a, c])
    y = L.Dense(2, name="out")(cat)
    model = keras.Model(x, y)
    return model, _normal(4, 4), {"a": a, "b": b, "c": c, "out": y}


def two_inputs():
    x1 = keras.Input((3,), name="left")
    x2 = keras.Input((2,), name="right")
    h1 = L.Dense(3, activation="tanh", name="h1")(x1)
    h2 = L.Dense(2, activation="relu", name="h2")(x2)
    y = L.Dense(2, name="out")(L.Concatenate()([h1, h2]))
    model = keras.Model([x1, x2], y)
    probe = [_normal(3, 3), _rng().normal(size=(3, 2)).astype("float32") + 0.5]
    return model, probe, {"h1": h1, "h2": h2, "out": y}


def nested_sequential():
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(3, activation="relu", name="inner_dense"),
            L.Dense(2, activation="tanh", name="inner_out"),
        ],
        name="inner",
    )
    x = keras.Input((5,))
    h = L.Dense(4, activation="tanh", name="pre")(x)
    z = inner(h)
    y = L.Dense(2, name="head")(z)
    model = keras.Model(x, y)
    pre = keras.Model(x, h)

    def inside(name):
        sub = keras.Model(inner.inputs, inner.get_layer(name).output)
        return lambda xs: sub(pre(xs[0], training=False), training=False)

    refs = {
        "pre": h,
        "inner/inner_dense": inside("inner_dense"),
        "inner/inner_out": inside("inner_out"),
        "head": y,
    }
    return model, _normal(3, 5), refs


def shared_layer():
    # One Dense called twice: its per-sample gradient is the sum over calls.
    x = keras.Input((3,))
    shared = L.Dense(3, activation="tanh", name="shared")
    h1 = shared(x)
    h2 = shared(h1)
    y = L.Dense(2, name="out")(h2)
    model = keras.Model(x, y)
    return model, _normal(3, 3), {"shared": h1, "shared@1": h2, "out": y}


def dropout():
    x = keras.Input((4,))
    h = L.Dense(6, activation="relu", name="hidden")(x)
    d = L.Dropout(0.5, name="drop")(h)
    y = L.Dense(3, name="out")(d)
    model = keras.Model(x, y)
    return model, _normal(4, 4), {"hidden": h, "out": y}


def sequential_model():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(3, activation="relu", name="s1"),
            L.Dense(2, name="s2"),
        ]
    )
    return model, _normal(3, 4), {
        "s1": model.get_layer("s1").output,
        "s2": model.get_layer("s2").output,
    }


def int_and_float_inputs():
    ids = keras.Input((3,), dtype="int32", name="ids_for_values")
    x = keras.Input((2,), name="floats")
    e = L.Embedding(6, 2, name="emb")(ids)
    h = L.Dense(3, activation="tanh", name="h")(x)
    y = L.Dense(2, name="out")(L.Concatenate()([L.Flatten()(e), h]))
    model = keras.Model([ids, x], y)
    probe = [np.array([[0, 1, 5], [2, 2, 3], [4, 0, 1]], "int32"), _normal(3, 2)]
    return model, probe, {"emb": e, "h": h, "out": y}


def layer_normalization():
    x = keras.Input((3, 4))
    h = L.Dense(5, activation="tanh", name="pre")(x)
    n = L.LayerNormalization(name="ln")(h)
    y = L.Dense(2, name="out")(n)
    model = keras.Model(x, y)
    rng = _rng()
    ln = model.get_layer("ln")
    ln.gamma.assign(rng.uniform(0.5, 2.0, 5) * rng.choice([-1, 1], 5))
    ln.beta.assign(rng.normal(size=5))
    return model, _normal(3, 3, 4), {"pre": h, "ln": n, "out": y}


def conv_strides_same_dilation():
    x = keras.Input((7, 7, 2))
    a = L.Conv2D(3, 2, strides=2, padding="same", activation="relu", name="strided")(x)
    b = L.Conv2D(2, 3, dilation_rate=2, padding="same", activation="elu", name="dilated")(a)
    y = L.Conv2D(2, 1, activation="softmax", name="pointwise_softmax")(b)
    model = keras.Model(x, y)
    return model, _normal(2, 7, 7, 2), {"strided": a, "dilated": b, "pointwise_softmax": y}


def conv_ghost_norm():
    # Few output positions and wide patches (t * t < i * o): Gram-matrix path
    # for the upstream conv's filter norm.
    x = keras.Input((4, 4, 3))
    a = L.Conv2D(8, 3, activation="tanh", name="wide")(x)
    y = L.Dense(2, name="out")(L.Flatten()(a))
    model = keras.Model(x, y)
    return model, _normal(3, 4, 4, 3), {"wide": a, "out": y}


def conv1d_same_stride_reshape():
    x = keras.Input((6,))
    r = L.Reshape((3, 2), name="reshape")(L.Dense(6, activation="tanh", name="d")(x))
    c = L.Conv1D(3, 2, strides=2, padding="same", name="conv")(r)
    y = L.Dense(2, name="out")(L.Flatten()(c))
    model = keras.Model(x, y)
    return model, _normal(3, 6), {"d": model.get_layer("d").output, "conv": c, "out": y}


def conv3d():
    x = keras.Input((3, 3, 3, 1))
    c = L.Conv3D(2, 2, activation="sigmoid", name="conv")(x)
    y = L.Dense(2, name="out")(L.Flatten()(c))
    model = keras.Model(x, y)
    return model, _normal(2, 3, 3, 3, 1), {"conv": c, "out": y}


def conv_generic_variants():
    # Grouped and causal convolutions fall back to the generic rule.
    x = keras.Input((6, 4))
    g = L.Conv1D(4, 2, groups=2, activation="tanh", name="grouped")(x)
    c = L.Conv1D(3, 2, padding="causal", name="causal")(g)
    y = L.Dense(2, name="out")(c)
    model = keras.Model(x, y)
    return model, _normal(2, 6, 4), {"grouped": g, "causal": c, "out": y}


def frozen_layers():
    # Frozen layers' weights are not trainable: they must not count.
    x = keras.Input((5, 2))
    c = L.Conv1D(3, 2, name="conv_frozen", trainable=False)(x)
    b = L.BatchNormalization(name="bn_frozen", trainable=False)(c)
    h = L.Dense(3, activation="tanh", name="dense_frozen", trainable=False)(b)
    y = L.Dense(2, name="out")(h)
    model = keras.Model(x, y)
    _randomize_batch_norm(model.get_layer("bn_frozen"), _rng())
    assert len(model.trainable_weights) == 2
    # The default selection does not change when layers are frozen (their
    # neurons have nothing trainable upstream: zero to weights, not dead).
    return model, _normal(3, 5, 2), {"conv_frozen": c, "bn_frozen": b, "dense_frozen": h, "out": y}


def concatenate_time_axis():
    x = keras.Input((3, 2))
    a = L.Dense(4, activation="tanh", name="a")(x)
    b = L.Dense(4, activation="relu", name="b")(x)
    cat = L.Concatenate(axis=1, name="cat")([a, b])
    y = L.Dense(2, name="out")(cat)
    model = keras.Model(x, y)
    return model, _normal(2, 3, 2), {"a": a, "b": b, "out": y}


def noise_layers_off():
    x = keras.Input((4,))
    h = L.Dense(5, activation="relu", name="hidden")(x)
    n = L.GaussianDropout(0.4)(L.GaussianNoise(1.0)(h))
    y = L.Dense(2, name="out")(L.SpatialDropout1D(0.5)(L.Reshape((5, 1))(n)))
    model = keras.Model(x, y)
    return model, _normal(3, 4), {"hidden": h, "out": y}


def simple_rnn():
    x = keras.Input((3, 2))
    r = L.SimpleRNN(2, return_sequences=True, name="rnn")(x)
    y = L.Dense(2, name="out")(r)
    model = keras.Model(x, y)
    return model, _normal(2, 3, 2), {"rnn": r, "out": y}


class _Scale(L.Layer):
    """A layer of our own with a weight and no registered rule."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=input_shape[-1:], initializer="ones")

    def call(self, x):
        return x * self.w + x**2


class _DenseTwice(L.Dense):
    """Overrides `call`: must not inherit Dense's fast rule."""

    def call(self, x):
        return super().call(2.0 * x)


def custom_layers():
    x = keras.Input((3,))
    s = _Scale(name="scale")(x)
    d = _DenseTwice(3, activation="tanh", name="dense_twice")(s)
    y = L.Dense(2, name="out")(d)
    model = keras.Model(x, y)
    model.get_layer("scale").w.assign([0.5, -1.0, 2.0])
    return model, _normal(3, 3), {"scale": s, "dense_twice": d, "out": y}


def embedding_masked_pooling():
    # mask_zero=True: GlobalAveragePooling1D averages non-padded positions only.
    ids = keras.Input((4,), dtype="int32", name="ids_masked")
    e = L.Embedding(5, 3, mask_zero=True, name="emb")(ids)
    p = L.GlobalAveragePooling1D(name="gap")(e)
    y = L.Dense(2, name="out")(p)
    model = keras.Model(ids, y)
    probe = np.array([[1, 2, 0, 0], [3, 3, 4, 0], [2, 1, 4, 3]], "int32")
    return model, probe, {"emb": e, "out": y}


def nested_functional_two_deep():
    i2 = keras.Input((3,))
    inner2 = keras.Model(i2, L.Dense(2, activation="tanh", name="deep")(i2), name="inner2")
    i1 = keras.Input((4,))
    mid = L.Dense(3, name="mid")(i1)
    inner1 = keras.Model(i1, inner2(mid), name="inner1")
    x = keras.Input((5,))
    pre = L.Dense(4, activation="relu", name="pre")(x)
    y = L.Dense(2, name="head")(inner1(pre))
    model = keras.Model(x, y)
    to_pre, to_mid = keras.Model(x, pre), keras.Model(i1, mid)
    refs = {
        "pre": pre,
        "inner1/mid": lambda xs: to_mid(to_pre(xs[0])),
        "inner1/inner2/deep": lambda xs: inner2(to_mid(to_pre(xs[0]))),
        "head": y,
    }
    return model, _normal(3, 5), refs


def variable_length_sequence():
    x = keras.Input((None, 3))
    c = L.Conv1D(2, 2, activation="tanh", name="conv")(x)
    y = L.Dense(2, name="out")(c)
    model = keras.Model(x, y)
    return model, _normal(2, 5, 3), {"conv": c, "out": y}


def batch_norm_not_last_axis():
    # axis=1 on (n, t, c): not the channel axis, so the generic rule.
    x = keras.Input((3, 4))
    b = L.BatchNormalization(axis=1, name="bn_axis1")(x)
    y = L.Dense(2, name="out")(b)
    model = keras.Model(x, y)
    _randomize_batch_norm(model.get_layer("bn_axis1"), _rng())
    return model, _normal(2, 3, 4), {"bn_axis1": b, "out": y}


def siamese_shared_two_inputs():
    x1, x2 = keras.Input((3,), name="one"), keras.Input((3,), name="two")
    shared = L.Dense(2, activation="tanh", name="shared")
    a1, a2 = shared(x1), shared(x2)
    y = L.Dense(1, name="out")(L.Concatenate()([a1, a2]))
    model = keras.Model([x1, x2], y)
    return model, [_normal(2, 3), _normal(2, 3) + 1], {"shared": a1, "shared@1": a2, "out": y}


def activation_layers_only():
    # No trainable weight at all: every sensitivity to weights is zero.
    x = keras.Input((3,))
    a = L.ReLU(name="relu")(x)
    s = L.Activation("tanh", name="tanh")(a)
    return keras.Model(x, s), _normal(3, 3), {"relu": a, "tanh": s}


# Cases with integer inputs: the layers whose outputs are the embedded inputs.
EMBEDDED = {"int_and_float_inputs": ["emb"]}


def _embedded(model, case):
    return [model.get_layer(name) for name in EMBEDDED.get(case, ())]


CASES = {
    "mlp_relu_tanh_softmax": mlp,
    "dense_on_sequence_direct": dense_on_sequence_direct,
    "dense_on_sequence_ghost": dense_on_sequence_ghost,
    "conv1d_batchnorm": conv1d_batchnorm,
    "conv2d_batchnorm_pool_dense": conv2d_batchnorm_pool_dense,
    "ReLU": _activation_model(L.ReLU),
    "LeakyReLU": _activation_model(lambda: L.LeakyReLU(negative_slope=0.2)),
    "ELU": _activation_model(L.ELU),
    "Activation_sigmoid": _activation_model(lambda: L.Activation("sigmoid")),
    "Activation_softmax": _activation_model(lambda: L.Activation("softmax")),
    "Softmax": _activation_model(L.Softmax),
    "PReLU": _activation_model(L.PReLU),
    "branching_add_concatenate": branching,
    "two_inputs": two_inputs,
    "nested_sequential": nested_sequential,
    "shared_layer": shared_layer,
    "dropout": dropout,
    "sequential": sequential_model,
    "int_and_float_inputs": int_and_float_inputs,
    "layer_normalization": layer_normalization,
    "conv2d_strides_same_dilation_softmax": conv_strides_same_dilation,
    "conv2d_ghost_norm": conv_ghost_norm,
    "conv1d_same_stride_reshape": conv1d_same_stride_reshape,
    "conv3d": conv3d,
    "conv1d_grouped_causal_generic": conv_generic_variants,
    "frozen_layers": frozen_layers,
    "concatenate_time_axis": concatenate_time_axis,
    "noise_layers_off": noise_layers_off,
    "simple_rnn_generic": simple_rnn,
    "custom_layers_generic": custom_layers,
    "nested_functional_two_deep": nested_functional_two_deep,
    "variable_length_sequence": variable_length_sequence,
    "batch_norm_axis1_generic": batch_norm_not_last_axis,
    "siamese_shared_two_inputs": siamese_shared_two_inputs,
    "activation_layers_only": activation_layers_only,
}


def _oracle_fn(model, ref):
    return ref if callable(ref) and not isinstance(ref, keras.KerasTensor) else (
        oracle.output_fn(model, ref)
    )


def _quiet(fn, *args, **kwargs):
    # The integer-input warning is tested in test_validation.py.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
@pytest.mark.parametrize("case", list(CASES))
def test_per_sample_and_mean_match_brute_force(case, wrt):
    model, probe, refs = CASES[case]()
    per_sample = _quiet(neuron_sensitivity, model, probe, wrt=wrt, reduction=None)
    mean = _quiet(neuron_sensitivity, model, probe, wrt=wrt)

    # The default selection: layers with weights and activation layers, in
    # graph order, nested layers keyed "outer/inner".
    assert list(per_sample) == list(refs)
    assert list(mean) == list(refs)
    batch = len(oracle.as_list(probe)[0])
    for key, ref in refs.items():
        expected = oracle.brute_force(
            model, probe, _oracle_fn(model, ref), wrt, _embedded(model, case)
        )
        assert per_sample[key].shape == (batch, expected.shape[1]), key
        np.testing.assert_allclose(
            per_sample[key], expected, rtol=RTOL, atol=ATOL, err_msg=key
        )
        np.testing.assert_allclose(
            mean[key], expected.mean(0), rtol=RTOL, atol=ATOL, err_msg=key
        )


def test_nested_keys_are_outer_slash_inner():
    model, probe, _ = nested_sequential()
    result = neuron_sensitivity(model, probe, layers=["inner/inner_dense"])
    assert list(result) == ["inner/inner_dense"]
    assert result["inner/inner_dense"].shape == (3,)


def test_dict_probe_matches_list_probe():
    model, (left, right), _ = two_inputs()
    as_list = neuron_sensitivity(model, [left, right], wrt="inputs")
    as_dict = neuron_sensitivity(model, {"right": right, "left": left}, wrt="inputs")
    for key in as_list:
        np.testing.assert_array_equal(as_dict[key], as_list[key])


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_dropout_is_off(wrt):
    # In training mode every call would drop different units; in inference
    # mode two calls agree with each other and with the oracle (checked above).
    model, probe, _ = dropout()
    first = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
    second = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_batch_norm_statistics_are_not_updated():
    model, probe, _ = conv1d_batchnorm()
    before = [v.numpy().copy() for v in model.weights]
    neuron_sensitivity(model, probe)
    neuron_sensitivity(model, probe, wrt="inputs")
    for v, old in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_reductions_match_numpy_of_oracle(wrt):
    model, probe, refs = mlp()
    expected = {
        key: oracle.brute_force(model, probe, oracle.output_fn(model, ref), wrt)
        for key, ref in refs.items()
    }
    numpy_reductions = {
        "mean": lambda a: a.mean(0),
        "rms": lambda a: np.sqrt(np.mean(a**2, 0)),
        "max": lambda a: a.max(0),
    }
    for reduction, reduce in numpy_reductions.items():
        got = neuron_sensitivity(model, probe, wrt=wrt, reduction=reduction)
        for key in refs:
            np.testing.assert_allclose(
                got[key],
                reduce(expected[key]),
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{reduction} {key}",
            )


def test_layers_argument_selects_and_orders():
    model, probe, _ = mlp()
    by_name = neuron_sensitivity(model, probe, layers=["d_softmax", "d_relu"])
    assert list(by_name) == ["d_softmax", "d_relu"]
    by_object = neuron_sensitivity(model, probe, layers=[model.get_layer("d_tanh")])
    assert list(by_object) == ["d_tanh"]
    everything = neuron_sensitivity(model, probe)
    np.testing.assert_allclose(by_name["d_relu"], everything["d_relu"], rtol=1e-6)
    np.testing.assert_allclose(by_object["d_tanh"], everything["d_tanh"], rtol=1e-6)


# --- float64 finite differences ---------------------------------------------


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_float64_mlp_matches_finite_differences(float64, wrt):
    # Smooth activations only: a central difference across a ReLU kink is wrong.
    x = keras.Input((3,))
    h = L.Dense(4, activation="tanh", name="h")(x)
    s = L.Dense(3, activation="sigmoid", name="s")(h)
    y = L.Dense(2, activation="softmax", name="y")(s)
    model = keras.Model(x, y)
    assert model.trainable_weights[0].dtype == "float64"
    probe = np.random.default_rng(1).normal(size=(3, 3))
    got = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
    for key, ref in {"h": h, "s": s, "y": y}.items():
        expected = oracle.finite_difference(
            model, probe, oracle.output_fn(model, ref), wrt
        )
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-9)


# --- hand-set weights, literal answers --------------------------------------


def _literal_model():
    x = keras.Input((2,))
    z = L.Dense(2, use_bias=False, name="first")(x)
    y = L.Dense(1, name="second")(z)
    model = keras.Model(x, y)
    model.get_layer("first").set_weights([np.array([[1.0, 2.0], [3.0, 4.0]])])
    model.get_layer("second").set_weights([np.array([[1.0], [-2.0]]), np.array([0.5])])
    return model


def test_literal_linear_network():
    # W = [[1, 2], [3, 4]] (no bias), v = [1, -2], c = 0.5;  z = x W,  y = z v + c.
    # Sample x = [1, 2]: z = [7, 10].
    #   first, neuron k: dz_k/dW is x in column k -> ||x|| = sqrt(5) (both k);
    #     dz_k/dx = W[:, k] -> sqrt(1 + 9) = sqrt(10), sqrt(4 + 16) = sqrt(20).
    #   second: dy/dv = z, dy/dc = 1, dy/dW = x (x) v with norm ||x|| ||v|| = 5,
    #     so sqrt(49 + 100 + 1 + 25) = sqrt(175);  dy/dx = W v = [-3, -5] -> sqrt(34).
    # Sample x = [0, 0]: z = 0, so first's weight norms are 0 and second's is
    #   sqrt(0 + 1 + 0) = 1; input norms do not depend on x (linear network).
    model = _literal_model()
    probe = np.array([[1.0, 2.0], [0.0, 0.0]], "float32")
    weights = neuron_sensitivity(model, probe, reduction=None)
    inputs = neuron_sensitivity(model, probe, wrt="inputs", reduction=None)
    np.testing.assert_allclose(
        weights["first"], [[np.sqrt(5), np.sqrt(5)], [0.0, 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(weights["second"], [[np.sqrt(175)], [1.0]], rtol=1e-6)
    np.testing.assert_allclose(
        inputs["first"], [[np.sqrt(10), np.sqrt(20)]] * 2, rtol=1e-6
    )
    np.testing.assert_allclose(inputs["second"], [[np.sqrt(34)]] * 2, rtol=1e-6)
    # Reductions over the two samples, by hand.
    mean = neuron_sensitivity(model, probe)
    rms = neuron_sensitivity(model, probe, reduction="rms")
    peak = neuron_sensitivity(model, probe, reduction="max")
    np.testing.assert_allclose(mean["second"], [(np.sqrt(175) + 1) / 2], rtol=1e-6)
    np.testing.assert_allclose(rms["second"], [np.sqrt((175 + 1) / 2)], rtol=1e-6)
    np.testing.assert_allclose(peak["second"], [np.sqrt(175)], rtol=1e-6)
    np.testing.assert_allclose(rms["first"], [np.sqrt(5 / 2)] * 2, rtol=1e-6)


def test_literal_relu_gate():
    # z = x W + b with W = I (2x2), b = [0, -1], then ReLU; y = relu(z) . [2, 3].
    # x = [3, 0.5]: z = [3, -0.5], so neuron 0 is on and neuron 1 is off.
    #   dense (fused ReLU), neuron 0: d/dW column 0 = x, d/db_0 = 1
    #     -> sqrt(9 + 0.25 + 1) = sqrt(10.25); neuron 1: exactly 0.
    #   out: d/dv = relu(z) = [3, 0], d/dc = 1, d/dW = x (x) (v * gate) with
    #     gate [1, 0] -> ||x|| * 2, d/db = [2, 0] -> sqrt(9 + 1 + 4 * 9.25 + 4) = sqrt(51).
    #   inputs: dense neuron 0 -> W[:, 0] = [1, 0] -> 1; out: W (v * gate) = [2, 0] -> 2.
    x = keras.Input((2,))
    h = L.Dense(2, activation="relu", name="dense")(x)
    y = L.Dense(1, name="out")(h)
    model = keras.Model(x, y)
    model.get_layer("dense").set_weights([np.eye(2), np.array([0.0, -1.0])])
    model.get_layer("out").set_weights([np.array([[2.0], [3.0]]), np.array([0.0])])
    probe = np.array([[3.0, 0.5]], "float32")
    weights = neuron_sensitivity(model, probe, reduction=None)
    inputs = neuron_sensitivity(model, probe, wrt="inputs", reduction=None)
    np.testing.assert_allclose(weights["dense"], [[np.sqrt(10.25), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(weights["out"], [[np.sqrt(51.0)]], rtol=1e-6)
    np.testing.assert_allclose(inputs["dense"], [[1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(inputs["out"], [[2.0]], rtol=1e-6)


def test_literal_conv_position_average():
    # Conv1D(1 filter, kernel 1, no bias, weight w = 2) on x = [1, 2, 3] (one
    # channel): y_t = 2 x_t, neuron value a = mean_t y_t = 2 * mean(x) = 4.
    #   da/dw = mean(x) = 2 -> 2;  da/dx_t = 2 / 3 each -> sqrt(3 * 4 / 9) = 2/sqrt(3).
    x = keras.Input((3, 1))
    y = L.Conv1D(1, 1, use_bias=False, name="conv")(x)
    model = keras.Model(x, y)
    model.get_layer("conv").set_weights([np.full((1, 1, 1), 2.0)])
    probe = np.array([[[1.0], [2.0], [3.0]]], "float32")
    assert neuron_sensitivity(model, probe)["conv"] == pytest.approx([2.0], rel=1e-6)
    assert neuron_sensitivity(model, probe, wrt="inputs")["conv"] == pytest.approx(
        [2 / np.sqrt(3)], rel=1e-6
    )


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_dead_relu_neurons_are_exactly_zero(wrt):
    x = keras.Input((3,))
    h = L.Dense(4, activation="relu", name="hidden")(x)
    a = L.ReLU(name="act")(L.Dense(3, name="pre_act")(h))
    y = L.Dense(2, name="out")(a)
    model = keras.Model(x, y)
    rng = np.random.default_rng(5)
    # Positive kernels on inputs in [0, 1): the units with bias 0 are on for
    # every sample, those with bias -1000 never switch on.
    model.get_layer("hidden").set_weights(
        [rng.uniform(0.1, 1, (3, 4)), np.array([-1e3, 0.0, -1e3, 0.0])]
    )
    model.get_layer("pre_act").set_weights(
        [rng.uniform(0.1, 1, (4, 3)), np.array([0.0, -1e3, 0.0])]
    )
    probe = np.random.default_rng(2).uniform(0, 1, (5, 3)).astype("float32")
    got = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
    assert np.all(got["hidden"][:, [0, 2]] == 0.0)
    assert np.all(got["hidden"][:, [1, 3]] > 0.0)
    assert np.all(got["act"][:, 1] == 0.0)
    assert np.all(got["act"][:, [0, 2]] > 0.0)
    assert np.all(neuron_sensitivity(model, probe, wrt=wrt)["hidden"][[0, 2]] == 0.0)


# --- neuron_jacobian ----------------------------------------------------------


def test_neuron_jacobian_weights_shapes_and_values():
    model, probe, refs = mlp()
    got = neuron_jacobian(model, probe, "d_tanh")
    # Only the weights upstream of the layer, keyed by path.
    upstream = model.trainable_weights[:4]
    assert sorted(got) == sorted(v.path for v in upstream)
    per_sample = oracle.jacobians(
        model, probe, oracle.output_fn(model, refs["d_tanh"]), "weights"
    )
    for j, v in enumerate(model.trainable_weights[:4]):
        assert got[v.path].shape == (4, 4, *v.shape)
        expected = np.stack([jac[j] for jac in per_sample])
        np.testing.assert_allclose(got[v.path], expected, rtol=RTOL, atol=ATOL)


def test_neuron_jacobian_inputs_shape_and_values():
    model, probe, refs = conv1d_batchnorm()
    got = neuron_jacobian(model, probe, "bn", wrt="inputs")
    assert got.shape == (3, 3, 7, 2)
    per_sample = oracle.jacobians(
        model, probe, oracle.output_fn(model, refs["bn"]), "inputs"
    )
    expected = np.stack([jac[0] for jac in per_sample])
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_neuron_jacobian_two_inputs_gives_a_list():
    model, probe, refs = two_inputs()
    got = neuron_jacobian(model, probe, "out", wrt="inputs")
    assert isinstance(got, list) and len(got) == 2
    assert got[0].shape == (3, 2, 3) and got[1].shape == (3, 2, 2)
    per_sample = oracle.jacobians(
        model, probe, oracle.output_fn(model, refs["out"]), "inputs"
    )
    for i in range(2):
        expected = np.stack([jac[i] for jac in per_sample])
        np.testing.assert_allclose(got[i], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "case, key",
    [
        ("shared_layer", "shared@1"),
        ("nested_sequential", "inner/inner_out"),
        ("frozen_layers", "out"),
        ("int_and_float_inputs", "out"),
    ],
)
@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_neuron_jacobian_matches_brute_force(case, key, wrt):
    model, probe, refs = CASES[case]()
    got = _quiet(neuron_jacobian, model, probe, key, wrt=wrt)
    per_sample = oracle.jacobians(
        model, probe, _oracle_fn(model, refs[key]), wrt, _embedded(model, case)
    )
    if wrt == "inputs":
        got = got if isinstance(got, list) else [got]
        assert len(got) == len(per_sample[0])  # float inputs, embedded inputs
        for i, array in enumerate(got):
            expected = np.stack([jac[i] for jac in per_sample])
            np.testing.assert_allclose(array, expected, rtol=RTOL, atol=ATOL)
        return
    paths = [v.path for v in model.trainable_weights]
    assert set(got) <= set(paths)
    for j, path in enumerate(paths):
        expected = np.stack([jac[j] for jac in per_sample])
        if path in got:
            np.testing.assert_allclose(got[path], expected, rtol=RTOL, atol=ATOL)
        else:  # left out: downstream of the layer, so no derivative
            assert np.all(expected == 0), path


def test_neuron_jacobian_norms_agree_with_neuron_sensitivity():
    model, probe, _ = mlp()
    jac = neuron_jacobian(model, probe, "d_softmax")
    sq = sum(np.sum(j.reshape(4, 3, -1) ** 2, -1) for j in jac.values())
    per_sample = neuron_sensitivity(model, probe, layers=["d_softmax"], reduction=None)
    np.testing.assert_allclose(per_sample["d_softmax"], np.sqrt(sq), rtol=RTOL)


# --- memory budget ------------------------------------------------------------


@pytest.mark.parametrize("budget_mb", [1e-4, 0.01], ids=["one_row", "0.01MiB"])
@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_tiny_memory_budget_gives_same_values(budget_mb, wrt):
    # 7 samples (prime): any chunk of samples between 1 and 7 leaves a
    # remainder, so padding of the last chunk is exercised too.
    model, _, refs = conv2d_batchnorm_pool_dense()
    probe = np.random.default_rng(3).normal(size=(7, 6, 6, 1)).astype("float32")
    default = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
    tiny = neuron_sensitivity(
        model, probe, wrt=wrt, reduction=None, memory_budget_mb=budget_mb
    )
    assert list(tiny) == list(default)
    for key in default:
        np.testing.assert_allclose(tiny[key], default[key], rtol=1e-5, atol=1e-7)
    # And both are right, not merely equal.
    expected = oracle.brute_force(model, probe, oracle.output_fn(model, refs["out"]), wrt)
    np.testing.assert_allclose(tiny["out"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "budget_mb",
    [2e-4, 5e-4, 2e-3, 3e-3],
    ids=["one_sample_one_neuron", "two_of_three_samples", "two_neurons", "four_neurons"],
)
def test_partial_neuron_and_sample_chunks(budget_mb):
    # Layers of 5 and 7 neurons, 3 samples: budgets whose chunks do not divide
    # them, so the last chunk of neurons (or samples) is padded and must be
    # dropped, and one layer runs out of neurons before the other.
    x = keras.Input((3,))
    h = L.Dense(5, activation="tanh", name="five")(x)
    y = L.Dense(7, name="seven")(h)
    model = keras.Model(x, y)
    probe = np.random.default_rng(4).normal(size=(3, 3)).astype("float32")
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(
            model, probe, wrt=wrt, reduction=None, memory_budget_mb=budget_mb
        )
        for key, ref in {"five": h, "seven": y}.items():
            expected = oracle.brute_force(model, probe, oracle.output_fn(model, ref), wrt)
            np.testing.assert_allclose(
                got[key], expected, rtol=RTOL, atol=ATOL, err_msg=f"{wrt} {key}"
            )


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_new_weights_and_new_batch_shapes_after_first_call(wrt):
    # The compiled sweep is cached per model: it must read the current
    # weights, and take other batch sizes (and sequence lengths) after the
    # first call.
    model, probe, refs = variable_length_sequence()
    neuron_sensitivity(model, probe, wrt=wrt)
    model.set_weights([3.0 * w for w in model.get_weights()])
    rng = np.random.default_rng(6)
    for batch in (rng.normal(size=(5, 7, 3)), rng.normal(size=(1, 4, 3))):
        batch = batch.astype("float32")
        got = neuron_sensitivity(model, batch, wrt=wrt, reduction=None)
        for key, ref in refs.items():
            expected = oracle.brute_force(model, batch, oracle.output_fn(model, ref), wrt)
            np.testing.assert_allclose(got[key], expected, rtol=RTOL, atol=ATOL)


def test_float64_probe_on_float32_model():
    model, probe, _ = mlp()
    as_float32 = neuron_sensitivity(model, probe)
    as_float64 = neuron_sensitivity(model, probe.astype("float64"))
    for key in as_float32:
        assert as_float64[key].dtype == np.float32
        np.testing.assert_allclose(as_float64[key], as_float32[key], rtol=1e-6)


def test_tensor_probe_is_accepted():
    model, probe, _ = mlp()
    from_numpy = neuron_sensitivity(model, probe)
    from_tensor = neuron_sensitivity(model, tf.constant(probe))
    for key in from_numpy:
        np.testing.assert_array_equal(from_tensor[key], from_numpy[key])


# --- graphs with Keras ops between layers -------------------------------------


def _with_ops(kind):
    x = keras.Input((3,))
    h = L.Dense(4, activation="relu", name="d")(x)
    if kind == "operator":
        mid = h * 2.0 + 1.0
    else:
        mid = keras.ops.tanh(h)
    y = L.Dense(2, name="out")(mid)
    return keras.Model(x, y), _normal(3, 3), {"d": h, "out": y}


@pytest.mark.parametrize("kind", ["operator", "keras_ops_tanh"])
def test_keras_ops_between_layers(kind):
    model, probe, refs = _with_ops(kind)
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(model, probe, wrt=wrt, reduction=None)
        assert list(got) == ["d", "out"]
        for key, ref in refs.items():
            expected = oracle.brute_force(model, probe, oracle.output_fn(model, ref), wrt)
            np.testing.assert_allclose(got[key], expected, rtol=RTOL, atol=ATOL)


def test_embedding_mask_zero():
    model, probe, refs = embedding_masked_pooling()
    got = neuron_sensitivity(model, probe, reduction=None)
    for key, ref in refs.items():
        expected = oracle.brute_force(model, probe, oracle.output_fn(model, ref), "weights")
        np.testing.assert_allclose(got[key], expected, rtol=RTOL, atol=ATOL)


def test_freezing_a_layer_between_calls_changes_what_is_summed():
    # Fine-tuning freezes and unfreezes layers between fits: a cached sweep
    # must not keep summing over weights that are no longer trainable.
    model = keras.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh", name="base"), L.Dense(3, name="head")])
    x = _normal(3, 4)
    layers = ["base", "head"]  # the same selection before and after
    before = neuron_sensitivity(model, x, layers=layers, reduction=None)["head"]
    model.get_layer("base").trainable = False
    frozen = neuron_sensitivity(model, x, layers=layers, reduction=None)["head"]
    fn = oracle.output_fn(model, model.get_layer("head").output)
    np.testing.assert_allclose(frozen, oracle.brute_force(model, x, fn, "weights"), rtol=RTOL, atol=ATOL)
    assert np.all(frozen < before)
    model.get_layer("base").trainable = True
    again = neuron_sensitivity(model, x, layers=layers, reduction=None)["head"]
    np.testing.assert_allclose(again, before, rtol=1e-6)
