"""Every per-layer rule against brute force and against the generic rule.

Each case is a tiny model around one layer family. For each: the fast rule is
the one the engine picks, and its per-sample values equal (a) the brute-force
oracle and (b) the generic per-sample VJP rule on the same model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import oracle
from keras_neuron_sensitivity import Rule, neuron_sensitivity, register_rule
from keras_neuron_sensitivity.engine import Site
from keras_neuron_sensitivity.engine.rules import base, table
from keras_neuron_sensitivity.engine.sweep import Sweep
from keras_neuron_sensitivity.probe import build_graph

RTOL, ATOL = 2e-3, 1e-6
L = keras.layers


def _seq(shape, *layers):
    return keras.Sequential([keras.Input(shape), *layers])


def _randomize_norm_stats(model):
    """Non-trivial statistics and affine weights, so a wrong rule shows."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        for v in layer.weights:
            if any(s in v.path for s in ("moving_variance", "gamma")):
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype(v.dtype))
            elif any(s in v.path for s in ("moving_mean", "beta")):
                v.assign(rng.normal(size=v.shape).astype(v.dtype))
    return model


def _add_model():
    x = keras.Input((5,))
    a = L.Dense(4, activation="tanh", name="a")(x)
    b = L.Dense(4, name="b")(x)
    y = L.Add()([a, b])
    return keras.Model(x, L.Dense(3, name="out")(y))


def _squeeze_excite():
    # MobileNetV3/EfficientNet's gate: both inputs of Multiply carry cotangents,
    # the gate's through a (n, 1, 1, c) broadcast.
    x = keras.Input((5, 5, 3))
    h = L.Conv2D(4, 3, padding="same", name="c")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(h)
    s = L.Conv2D(4, 1, activation="sigmoid", name="gate")(s)
    y = L.Multiply(name="m")([h, s])
    return keras.Model(x, L.Dense(2, name="out")(L.Flatten()(y)))


def _hard_sigmoid_ops():
    # MobileNetV3's hard_sigmoid as Keras records it: ReLU(6)(x + 3) * (1 / 6),
    # two plain operations; then h * gate, h * h (one tensor twice), a mean
    # and a reshape as operations too.
    x = keras.Input((4, 3))
    h = L.Dense(3, name="d")(x)
    gate = L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)
    y = keras.ops.tanh(h * gate) - keras.ops.mean(h, axis=1, keepdims=True) + h * h
    return keras.Model(x, L.Dense(2, name="out")(keras.ops.reshape(y, (-1, 12))))


def _merges():
    x = keras.Input((4,))
    a = L.Dense(3, activation="tanh", name="a")(x)
    b = L.Dense(3, name="b")(x)
    y = L.Concatenate()([L.Maximum()([a, b]), L.Subtract()([a, b]), L.Average()([a, b]), L.Minimum()([a, a])])
    return keras.Model(x, L.Dense(2, name="out")(y))


def _layer_scale():
    from keras.src.applications.convnext import LayerScale

    x = keras.Input((3, 3, 2))
    h = L.Conv2D(4, 2, name="c")(x)
    y = LayerScale(1e-1, 4, name="ls")(h)
    model = keras.Model(x, L.Dense(2, name="out")(y))
    model.get_layer("ls").gamma.assign([0.5, -1.0, 2.0, 0.1])
    return model


def _normalization():
    layer = L.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1.0], name="norm")
    inverted = L.Normalization(mean=0.3, variance=2.0, invert=True, name="inv")
    return _seq((2, 3), layer, L.Dense(3), inverted, L.Dense(2))


def _concat_model():
    x = keras.Input((6, 3))
    a = L.Conv1D(2, 3, padding="same", activation="relu", name="a")(x)
    y = L.Concatenate(axis=1)([a, L.Conv1D(2, 1, name="b")(x)])
    return keras.Model(x, L.Dense(2, name="out")(L.Flatten()(y)))


# id -> (model factory, probe shape or token-id spec, the rule class expected
# for the layer under test, its name)
def _einsum_heads():
    # A query projection to (heads, head_dim), then an output projection back.
    x = keras.Input((3, 4))
    q = L.EinsumDense("abc,cde->abde", (3, 2, 3), bias_axes="de", activation="tanh", name="q")(x)
    o = L.EinsumDense("abcd,cde->abe", (3, 5), bias_axes="e", name="o")(q)
    return keras.Model(x, L.Dense(2)(L.Flatten()(o)))


def _randomized_lora(layer):
    layer.enable_lora(2)
    rng = np.random.default_rng(4)
    for v in (layer.lora_kernel_a, layer.lora_kernel_b):
        v.assign(rng.normal(size=v.shape).astype("float32"))


def _einsum_lora():
    model = _einsum_heads()
    _randomized_lora(model.get_layer("q"))
    return model


def _dense_lora():
    model = _seq((3, 4), L.Dense(5, activation="relu", name="d"), L.Flatten(), L.Dense(2))
    _randomized_lora(model.get_layer("d"))
    return model


CASES = {
    "dense_relu": (lambda: _seq((5,), L.Dense(4, activation="relu", name="d"), L.Dense(3)), (5,), "DenseRule", "d"),
    "dense_softmax": (lambda: _seq((5,), L.Dense(4, activation="softmax", name="s")), (5,), "DenseRule", "s"),
    "dense_on_sequence": (lambda: _seq((3, 4), L.Dense(3, activation="gelu", name="d"), L.Dense(2)), (3, 4), "DenseRule", "d"),
    "conv1d_same_strided": (lambda: _seq((9, 2), L.Conv1D(3, 3, strides=2, padding="same", activation="elu", name="c"), L.Flatten(), L.Dense(2)), (9, 2), "ConvRule", "c"),
    "conv1d_dilated": (lambda: _seq((9, 2), L.Conv1D(3, 2, dilation_rate=2, name="c"), L.GlobalAveragePooling1D(), L.Dense(2)), (9, 2), "ConvRule", "c"),
    "conv2d_valid": (lambda: _seq((6, 6, 2), L.Conv2D(3, 3, activation="relu", name="c"), L.Conv2D(2, 2, name="c2")), (6, 6, 2), "ConvRule", "c"),
    "conv2d_same_stride2": (lambda: _seq((7, 7, 1), L.Conv2D(3, 3, strides=2, padding="same", activation="tanh", name="c"), L.Flatten(), L.Dense(2)), (7, 7, 1), "ConvRule", "c"),
    "conv2d_grouped": (lambda: _seq((6, 6, 4), L.Conv2D(4, 3, groups=2, activation="relu", name="c"), L.Conv2D(2, 2, name="c2")), (6, 6, 4), "ConvRule", "c"),
    "conv2d_grouped_depthwise_like": (lambda: _seq((5, 5, 4), L.Conv2D(4, 3, groups=4, padding="same", name="c"), L.BatchNormalization(name="bn"), L.Flatten(), L.Dense(2)), (5, 5, 4), "ConvRule", "c"),
    "conv1d_grouped_strided": (lambda: _seq((9, 6), L.Conv1D(6, 3, strides=2, groups=3, activation="tanh", name="c"), L.Flatten(), L.Dense(2)), (9, 6), "ConvRule", "c"),
    "conv3d": (lambda: _seq((4, 4, 4, 1), L.Conv3D(2, 2, activation="sigmoid", name="c"), L.Flatten(), L.Dense(2)), (4, 4, 4, 1), "ConvRule", "c"),
    "batchnorm_after_conv": (lambda: _randomize_norm_stats(_seq((6, 6, 1), L.Conv2D(3, 3, name="c"), L.BatchNormalization(name="bn"), L.Flatten(), L.Dense(2))), (6, 6, 1), "BatchNormalizationRule", "bn"),
    "batchnorm_dense": (lambda: _randomize_norm_stats(_seq((4,), L.Dense(5), L.BatchNormalization(name="bn"), L.Dense(2))), (4,), "BatchNormalizationRule", "bn"),
    "layernorm": (lambda: _randomize_norm_stats(_seq((3, 4), L.Dense(5), L.LayerNormalization(name="ln"), L.Dense(2))), (3, 4), "LayerNormalizationRule", "ln"),
    "embedding": (lambda: _seq((5,), L.Embedding(4, 3, name="e"), L.Flatten(), L.Dense(2)), ("ids", 5, 4), "EmbeddingRule", "e"),
    "relu6_layer": (lambda: _seq((4,), L.Dense(4), L.ReLU(max_value=6.0, name="r"), L.Dense(2)), ("spread", 4), "ElementwiseRule", "r"),
    "relu_layer": (lambda: _seq((4,), L.Dense(4), L.ReLU(negative_slope=0.1, name="r"), L.Dense(2)), (4,), "ElementwiseRule", "r"),
    "leaky_relu_layer": (lambda: _seq((4,), L.Dense(4), L.LeakyReLU(name="r"), L.Dense(2)), (4,), "ElementwiseRule", "r"),
    "elu_layer": (lambda: _seq((4,), L.Dense(4), L.ELU(name="r"), L.Dense(2)), (4,), "ElementwiseRule", "r"),
    "activation_sigmoid": (lambda: _seq((4,), L.Dense(4), L.Activation("sigmoid", name="r"), L.Dense(2)), (4,), "ActivationRule", "r"),
    "activation_hard_swish": (lambda: _seq((4,), L.Dense(4), L.Activation("hard_swish", name="r"), L.Activation("hard_sigmoid"), L.Dense(2)), ("spread", 4), "ActivationRule", "r"),
    "activation_linear": (lambda: _seq((4,), L.Dense(4), L.Activation("linear", name="r"), L.Dense(2)), (4,), "ActivationRule", "r"),
    "activation_softmax": (lambda: _seq((4,), L.Dense(4), L.Activation("softmax", name="r"), L.Dense(2)), (4,), "ActivationRule", "r"),
    "softmax_layer": (lambda: _seq((2, 4), L.Dense(4), L.Softmax(name="r"), L.Dense(2)), (2, 4), "SoftmaxRule", "r"),
    "dropout": (lambda: _seq((4,), L.Dense(4), L.Dropout(0.5, name="r"), L.Dense(2)), (4,), "IdentityRule", "r"),
    "flatten_reshape": (lambda: _seq((2, 3), L.Dense(4), L.Flatten(name="f"), L.Reshape((4, 2)), L.Dense(2)), (2, 3), "ReshapeRule", "f"),
    "add": (_add_model, (5,), "AddRule", None),
    "multiply_squeeze_excite": (_squeeze_excite, (5, 5, 3), "BroadcastRule", "m"),
    "merges": (_merges, (4,), "BroadcastRule", None),
    "keras_ops_hard_sigmoid": (_hard_sigmoid_ops, (4, 3), "BroadcastRule", None),
    "keras_ops_linear": (_hard_sigmoid_ops, (4, 3), "LinearRule", None),
    "rescaling": (lambda: _seq((3, 2), L.Rescaling([0.5, -2.0], offset=1.0, name="r"), L.Dense(3), L.Rescaling(1 / 127.5, offset=-1), L.Dense(2)), (3, 2), "AffineRule", "r"),
    "normalization": (_normalization, (2, 3), "AffineRule", "norm"),
    "layer_scale": (_layer_scale, (3, 3, 2), "LayerScaleRule", "ls"),
    # Depthwise and separable: strided, dilated, 'same'/'valid', multiplier > 1;
    # a 2x2 map (fewer positions than kernel taps) takes the ghost form.
    "depthwise2d": (lambda: _seq((7, 7, 2), L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw"), L.DepthwiseConv2D(2, strides=2, padding="same", name="dw2"), L.DepthwiseConv2D(2, dilation_rate=2, use_bias=False, activation="tanh"), L.Flatten(), L.Dense(2)), (7, 7, 2), "DepthwiseConvRule", "dw"),
    "depthwise2d_small_map": (lambda: _seq((2, 2, 3), L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw"), L.Flatten(), L.Dense(2)), (2, 2, 3), "DepthwiseConvRule", "dw"),
    "depthwise1d": (lambda: _seq((9, 2), L.DepthwiseConv1D(3, strides=2, padding="same", depth_multiplier=3, activation="elu", name="dw"), L.DepthwiseConv1D(2, dilation_rate=2), L.GlobalAveragePooling1D(), L.Dense(2)), (9, 2), "DepthwiseConvRule", "dw"),
    "separable2d": (lambda: _seq((6, 6, 2), L.SeparableConv2D(3, 3, depth_multiplier=2, padding="same", activation="relu", name="sep"), L.SeparableConv2D(2, 2, strides=2, use_bias=False), L.Flatten(), L.Dense(2)), (6, 6, 2), "SeparableConvRule", "sep"),
    "separable1d": (lambda: _seq((9, 2), L.SeparableConv1D(3, 3, dilation_rate=2, activation="tanh", name="sep"), L.Flatten(), L.Dense(2)), (9, 2), "SeparableConvRule", "sep"),
    "conv2d_transpose": (lambda: _seq((3, 3, 2), L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu", name="ct"), L.Conv2DTranspose(2, 2, use_bias=False), L.Flatten(), L.Dense(2)), (3, 3, 2), "ConvTransposeRule", "ct"),
    "conv2d_transpose_output_padding": (lambda: _seq((3, 3, 2), L.Conv2DTranspose(2, 3, strides=2, output_padding=1, name="ct"), L.Flatten(), L.Dense(2)), (3, 3, 2), "ConvTransposeRule", "ct"),
    "conv1d_transpose_dilated": (lambda: _seq((4, 2), L.Conv1DTranspose(3, 3, dilation_rate=2, activation="tanh", name="ct"), L.Flatten(), L.Dense(2)), (4, 2), "ConvTransposeRule", "ct"),
    "conv3d_transpose": (lambda: _seq((2, 2, 2, 1), L.Conv3DTranspose(2, 2, strides=2, name="ct"), L.Flatten(), L.Dense(2)), (2, 2, 2, 1), "ConvTransposeRule", "ct"),
    # Pooling. "ties": small integers as floats, so that windows hold equal
    # maxima and the route must be TensorFlow's.
    "maxpool2d": (lambda: _seq((6, 6, 1), L.Conv2D(2, 3, name="c"), L.MaxPooling2D(name="p"), L.Flatten(), L.Dense(2)), (6, 6, 1), "MaxPoolingRule", "p"),
    "maxpool2d_ties_overlapping": (lambda: _seq((6, 6, 2), L.MaxPooling2D(3, strides=2, padding="same", name="p"), L.Flatten(), L.Dense(2)), ("ties", 6, 6, 2), "MaxPoolingRule", "p"),
    "maxpool1d_ties": (lambda: _seq((7, 2), L.MaxPooling1D(3, strides=1, name="p"), L.Flatten(), L.Dense(2)), ("ties", 7, 2), "MaxPoolingRule", "p"),
    "maxpool3d_ties": (lambda: _seq((4, 4, 4, 1), L.MaxPooling3D(2, strides=1, name="p"), L.Flatten(), L.Dense(2)), ("ties", 4, 4, 4, 1), "MaxPoolingRule", "p"),
    "avgpool": (lambda: _seq((6, 6, 2), L.AveragePooling2D(3, strides=2, padding="same", name="p"), L.Reshape((9, 2)), L.AveragePooling1D(2), L.Flatten(), L.Dense(2)), (6, 6, 2), "LinearRule", "p"),
    "avgpool3d": (lambda: _seq((4, 4, 4, 1), L.AveragePooling3D(2, name="p"), L.Flatten(), L.Dense(2)), (4, 4, 4, 1), "LinearRule", "p"),
    "global_avgpool": (lambda: _seq((4, 4, 2), L.Conv2D(3, 2, name="c"), L.GlobalAveragePooling2D(name="p"), L.Dense(2)), (4, 4, 2), "GlobalAveragePoolingRule", "p"),
    "global_avgpool3d_keepdims": (lambda: _seq((3, 3, 3, 2), L.GlobalAveragePooling3D(keepdims=True, name="p"), L.Dense(2)), (3, 3, 3, 2), "GlobalAveragePoolingRule", "p"),
    "global_maxpool_ties": (lambda: _seq((4, 4, 2), L.GlobalMaxPooling2D(name="p"), L.Dense(2)), ("ties", 4, 4, 2), "GlobalMaxPoolingRule", "p"),
    "global_maxpool1d_3d": (lambda: _seq((3, 3, 3, 2), L.Conv3D(2, 2, name="c"), L.GlobalMaxPooling3D(keepdims=True, name="p"), L.Reshape((1, 2)), L.GlobalMaxPooling1D(), L.Dense(2)), (3, 3, 3, 2), "GlobalMaxPoolingRule", "p"),
    # Spatial: padding, cropping, upsampling, resizing (1D/2D/3D).
    "zero_padding": (lambda: _seq((4, 4, 2), L.ZeroPadding2D(((1, 2), (0, 1)), name="p"), L.Conv2D(2, 3), L.Reshape((15, 2)), L.ZeroPadding1D(2), L.Flatten(), L.Dense(2)), (4, 4, 2), "ZeroPaddingRule", "p"),
    "zero_padding3d": (lambda: _seq((2, 2, 2, 1), L.ZeroPadding3D(1, name="p"), L.Conv3D(2, 2), L.Flatten(), L.Dense(2)), (2, 2, 2, 1), "ZeroPaddingRule", "p"),
    "cropping": (lambda: _seq((5, 5, 2), L.Conv2D(2, 1), L.Cropping2D(((1, 0), (1, 2)), name="p"), L.Reshape((8, 2)), L.Cropping1D((1, 2)), L.Flatten(), L.Dense(2)), (5, 5, 2), "CroppingRule", "p"),
    "cropping3d": (lambda: _seq((4, 4, 4, 1), L.Conv3D(2, 1), L.Cropping3D(1, name="p"), L.Flatten(), L.Dense(2)), (4, 4, 4, 1), "CroppingRule", "p"),
    "upsampling": (lambda: _seq((3, 3, 2), L.Conv2D(2, 1), L.UpSampling2D(2, interpolation="bilinear", name="p"), L.UpSampling2D((1, 2)), L.Reshape((72, 2)), L.UpSampling1D(2), L.Flatten(), L.Dense(2)), (3, 3, 2), "LinearRule", "p"),
    "upsampling3d": (lambda: _seq((2, 2, 2, 1), L.UpSampling3D(2, name="p"), L.Conv3D(2, 2), L.Flatten(), L.Dense(2)), (2, 2, 2, 1), "LinearRule", "p"),
    "resizing": (lambda: _seq((4, 4, 2), L.Conv2D(2, 1), L.Resizing(6, 5, name="p"), L.Resizing(3, 3, interpolation="nearest"), L.Flatten(), L.Dense(2)), (4, 4, 2), "LinearRule", "p"),
    "concatenate_axis1": (_concat_model, (6, 3), "ConcatenateRule", None),
    # No closed form: the generic rule is the rule, still against brute force.
    "generic_prelu": (lambda: _seq((4,), L.Dense(4), L.PReLU(name="p"), L.Dense(2)), (4,), "GenericRule", "p"),
    "generic_depthwise_channels_first": (lambda: _seq((2, 5, 5), L.DepthwiseConv2D(2, depth_multiplier=2, data_format="channels_first", name="p"), L.Flatten(), L.Dense(2)), (2, 5, 5), "GenericRule", "p"),
    "generic_maxpool_channels_first": (lambda: _seq((2, 5, 5), L.Conv2D(2, 1, name="c"), L.MaxPooling2D(data_format="channels_first", name="p"), L.Flatten(), L.Dense(2)), (2, 5, 5), "GenericRule", "p"),
    # EinsumDense: positions, several features in and out, bias axes,
    # activations, and LoRA (on EinsumDense and on Dense), its factors trained.
    "einsum_dense": (lambda: _seq((3, 4), L.EinsumDense("abc,cd->abd", (3, 2), bias_axes="d", name="p"), L.Flatten(), L.Dense(2)), (3, 4), "EinsumDenseRule", "p"),
    "einsum_dense_heads": (_einsum_heads, (3, 4), "EinsumDenseRule", "q"),
    "einsum_dense_lora": (_einsum_lora, (3, 4), "EinsumDenseRule", "q"),
    "dense_lora": (_dense_lora, (3, 4), "DenseRule", "d"),
    "generic_einsum_dense_grouped": (lambda: _seq((3, 2, 4), L.EinsumDense("abnc,ncd->abnd", (3, 2, 5), name="p"), L.Flatten(), L.Dense(2)), (3, 2, 4), "GenericRule", "p"),
}


def _probe(spec, n=3):
    rng = np.random.default_rng(2)
    if spec[0] == "ids":
        return rng.integers(0, spec[2], size=(n, spec[1])).astype("int32")
    if spec[0] == "spread":  # wide: saturates ReLU6 and hard_sigmoid
        return (spec[1] * rng.normal(size=(n, spec[1]))).astype("float32")
    if spec[0] == "ties":
        return rng.integers(0, 3, size=(n, *spec[1:])).astype("float32")
    return rng.normal(size=(n, *spec)).astype("float32")


def _with_generic(monkeypatch):
    monkeypatch.setattr(table, "rule_for", lambda layer: base.GENERIC_RULE)


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request):
    factory, spec, rule_name, layer_name = CASES[request.param]
    model, x = _runnable(factory, spec)
    return model, x, rule_name, layer_name


def _runnable(factory, spec):
    """The case's model and probe, or a skip where TensorFlow's own kernels
    cannot run the model on this CPU (without oneDNN, as on AMD CPUs, a
    dilated transposed convolution raises "Current CPU implementations do
    not yet support dilation rates larger than 1")."""
    model, x = factory(), _probe(spec)
    try:
        model(x)
    except tf.errors.InvalidArgumentError as error:
        pytest.skip(f"TensorFlow cannot run this model on this CPU: {error.message[:160]}")
    return model, x


def _wrts(x):
    return ["weights"] if x.dtype.kind == "i" else ["weights", "inputs"]


def test_rule_is_picked(case):
    model, x, rule_name, layer_name = case
    if layer_name:
        layers = [model.get_layer(layer_name)]
    else:  # every call, plain Keras operations included
        layers = [call.layer for call in build_graph(model).calls]
    names = {type(table.rule_for(layer)).__name__ for layer in layers}
    assert rule_name in names


def test_rule_matches_brute_force(case):
    model, x, _, _ = case
    got = {wrt: neuron_sensitivity(model, x, wrt=wrt, reduction=None) for wrt in _wrts(x)}
    for key in got["weights"]:
        layer = model.get_layer(key)
        fn = oracle.output_fn(model, layer.output, oracle.kernel_output_axes(layer))
        expected = oracle.brute_force(model, x, fn, tuple(got))
        for wrt in got:
            np.testing.assert_allclose(got[wrt][key], expected[wrt], rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


# TensorFlow's own 3D max-pooling gradient settles ties one way eagerly (every
# tied maximum) and another in compiled graphs on CPU (oneDNN: one of them);
# the generic rule runs compiled, so it is compared on tie-free values.
GRAPH_TIES_DIFFER = {"maxpool3d_ties"}


def test_rule_matches_generic_rule(case, monkeypatch, request):
    model, x, _, _ = case
    if request.node.callspec.id in GRAPH_TIES_DIFFER:
        x = _probe(x.shape[1:])
    fast = {w: neuron_sensitivity(model, x, wrt=w, reduction=None) for w in _wrts(x)}
    _with_generic(monkeypatch)
    graph = build_graph(model)
    # One generic sweep for both wrt (every wrt selects the same layers).
    generic = Sweep(graph, list(fast["weights"]), tuple(fast), 2**30)([tf.constant(x)])
    for wrt, per_layer in fast.items():
        assert list(per_layer) == list(fast["weights"])
        for key in per_layer:
            np.testing.assert_allclose(per_layer[key], generic[wrt][key], rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


# Rules with weights also give each row's gradient itself (`weight_rows`), for
# a sweep that sums what lies below a narrow tensor as a Gram matrix of rows.
WEIGHT_ROWS = {
    "layer_scale": "ls",
    "separable2d": "sep",
    "separable1d": "sep",
    "conv2d_transpose": "ct",
    "conv1d_transpose_dilated": "ct",
    "conv3d_transpose": "ct",
}


@pytest.mark.parametrize("case_id", sorted(WEIGHT_ROWS))
def test_weight_rows_are_per_row_gradients(case_id):
    factory, spec, _, _ = CASES[case_id]
    model, x = _runnable(factory, spec)
    layer = model.get_layer(WEIGHT_ROWS[case_id])
    layer_input = tf.constant(keras.Model(model.inputs[0], layer.input)(x))
    site = Site(build_graph(model).call(layer.name), [layer_input], need_weights=True)
    rule = table.rule_for(layer)
    site.outputs, cache = rule.forward(site)
    k, n = 3, x.shape[0]
    g = tf.random.stateless_normal((k, *site.outputs[0].shape), seed=[1, 2])
    rows = rule.weight_rows(site, cache, [g]).numpy()
    # Brute force: one tape.gradient of Keras's own call per row (k, n).
    expected = np.zeros((k, n, rows.shape[-1]))
    for j in range(k):
        for m in range(n):
            with tf.GradientTape() as tape:
                y = layer(layer_input[m : m + 1])
            grads = tape.gradient(y, [v.value for v in layer.trainable_weights], output_gradients=g[j, m : m + 1])
            expected[j, m] = np.concatenate([np.ravel(d) for d in grads])
    # The rows' order within P is the rule's own: compare inner products.
    gram = lambda r: np.einsum("knp,jnp->nkj", r, r)  # noqa: E731
    np.testing.assert_allclose(gram(rows), gram(expected), rtol=RTOL, atol=1e-5)


CHANNELS_FIRST = [
    L.DepthwiseConv1D(2, data_format="channels_first"),
    L.DepthwiseConv2D(2, data_format="channels_first"),
    L.SeparableConv1D(2, 2, data_format="channels_first"),
    L.SeparableConv2D(2, 2, data_format="channels_first"),
    L.Conv1DTranspose(2, 2, data_format="channels_first"),
    L.Conv2DTranspose(2, 2, data_format="channels_first"),
    L.Conv3DTranspose(2, 2, data_format="channels_first"),
    L.MaxPooling1D(data_format="channels_first"),
    L.MaxPooling2D(data_format="channels_first"),
    L.MaxPooling3D(data_format="channels_first"),
    L.GlobalAveragePooling2D(data_format="channels_first"),
    L.GlobalMaxPooling2D(data_format="channels_first"),
    L.ZeroPadding2D(data_format="channels_first"),
    L.Cropping2D(data_format="channels_first"),
]


@pytest.mark.parametrize("layer", CHANNELS_FIRST, ids=lambda layer: type(layer).__name__)
def test_channels_first_gets_generic_rule(layer):
    # The closed forms unfold and route along the last axis: channels first
    # is left to the generic rule (checked for values in CASES above).
    assert table.rule_for(layer) is base.GENERIC_RULE


def test_subclass_overriding_call_gets_generic_rule():
    class Doubled(L.Dense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    class Renamed(L.Dense):
        pass

    assert table.rule_for(Doubled(3)) is base.GENERIC_RULE
    assert type(table.rule_for(Renamed(3))).__name__ == "DenseRule"


class Scale(L.Layer):
    """`y = x * w`, one weight per feature: a user's own layer."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.w


class ScaleRule(Rule):
    """Closed form for `Scale`: `d w = x * g`, hop `g * w`."""

    calls = 0

    def forward(self, site):
        return site.run(site.inputs), site.inputs[0]

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        ScaleRule.calls += 1
        g = cotangents[0]
        sq = tf.reduce_sum(tf.square(g * cache), -1) if need_weights else None
        return ([g * site.layer.w] if need_inputs else None), sq


def test_user_registered_rule_is_used_and_exact(monkeypatch):
    monkeypatch.setattr(table, "_RULES", dict(table._RULES))
    register_rule(Scale, ScaleRule())
    model = _seq((3,), L.Dense(3, name="d"), Scale(name="s"), L.Dense(2, name="o"))
    model.get_layer("s").w.assign([0.5, -2.0, 3.0])
    x = _probe((3,))
    got = neuron_sensitivity(model, x, layers=["o"], reduction=None)["o"]
    assert ScaleRule.calls > 0
    fn = oracle.output_fn(model, model.get_layer("o").output)
    np.testing.assert_allclose(got, oracle.brute_force(model, x, fn, "weights"), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "layer_class, rule, match",
    [(int, ScaleRule(), "subclass of `keras.layers.Layer`"), (Scale, object(), "instance of")],
    ids=["not_a_layer", "not_a_rule"],
)
def test_register_rule_rejects_bad_arguments(layer_class, rule, match):
    with pytest.raises(TypeError, match=match):
        register_rule(layer_class, rule)


def test_shared_layer_sums_gradients_over_calls():
    # One Dense applied to two inputs: its per-sample gradient is the sum over
    # both calls, so per-call norms must not simply be added.
    a, b = keras.Input((3,)), keras.Input((3,))
    shared = L.Dense(2, activation="tanh", name="shared")
    y = L.Dense(2, name="out")(L.Concatenate()([shared(a), shared(b)]))
    model = keras.Model([a, b], y)
    x = [_probe((3,)), _probe((3,)) * 0.5]
    got = neuron_sensitivity(model, x, layers=["out"], reduction=None)["out"]
    fn = oracle.output_fn(model, y)
    np.testing.assert_allclose(got, oracle.brute_force(model, x, fn, "weights"), rtol=RTOL, atol=ATOL)


def _sweeps(model):
    """`{memory budget in bytes: Sweep}` of the exact method objects cached for `model`."""
    from keras_neuron_sensitivity import _computation

    return {
        key[2]: runner._sweep
        for (_, key), runner in _computation.cache_entries(model).items()
        if key[0] == "exact"
    }


def test_one_trace_across_calls():
    model = _seq((4,), L.Dense(5, activation="relu"), L.Dense(3))
    x = _probe((4,), n=6)
    for _ in range(3):
        neuron_sensitivity(model, x, wrt="inputs")
        model.layers[0].kernel.assign(model.layers[0].kernel * 1.1)
    (sweep,) = _sweeps(model).values()
    # Everything fits in one chunk: one compiled function, traced once.
    assert sweep._whole_fn.experimental_get_tracing_count() == 1
    assert sweep._forward_fn.experimental_get_tracing_count() == 0


def test_one_trace_across_calls_when_chunked():
    model = _seq((4,), L.Dense(5, activation="relu"), L.Dense(3))
    x = _probe((4,), n=6)
    for _ in range(3):
        neuron_sensitivity(model, x, memory_budget_mb=0.0005)  # 524 bytes: chunks
        model.layers[0].kernel.assign(model.layers[0].kernel * 1.1)
    (sweep,) = _sweeps(model).values()
    assert sweep.plan.samples < 6 or max(sweep.plan.rows) < 5  # really chunked
    assert sweep._forward_fn.experimental_get_tracing_count() == 1
    assert sweep._reverse_fn.experimental_get_tracing_count() == 1


def test_wide_layer_under_small_budget_equals_unchunked():
    # 1024 units after a 1024-wide input, B=32: the whole sweep to inputs
    # holds 32 x 1024 x 1024 floats (128 MiB); a 16 MiB budget forces chunks
    # over neurons (and the values must not change).
    model = _seq((1024,), L.Dense(1024, activation="relu", name="wide"), L.Dense(8, name="out"))
    x = np.random.default_rng(3).normal(size=(32, 1024)).astype("float32")
    small = neuron_sensitivity(model, x, wrt="inputs", reduction=None, memory_budget_mb=16)
    big = neuron_sensitivity(model, x, wrt="inputs", reduction=None, memory_budget_mb=2048)
    plans = {budget: sweep.plan for budget, sweep in _sweeps(model).items()}
    assert max(plans[16 * 2**20].rows) < 1024  # really chunked
    assert max(plans[2048 * 2**20].rows) == 1024  # really not
    for key in big:
        np.testing.assert_allclose(small[key], big[key], rtol=1e-5, atol=1e-7)
    # And against the literal first-layer answer: |relu'(z_k)| * ||W[:, k]||.
    kernel = model.get_layer("wide").kernel.numpy()
    z = x @ kernel + model.get_layer("wide").bias.numpy()
    literal = (z > 0) * np.linalg.norm(kernel, axis=0)
    np.testing.assert_allclose(big["wide"], literal, rtol=1e-4, atol=1e-6)
