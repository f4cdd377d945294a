"""A zoo of the models Keras users train, each against brute force.

Every model's per-sample sensitivities (to weights and, where the inputs are
floating point, to inputs) must equal the brute-force oracle for every
selected layer, with the keys docs/definitions.md specifies (section "Default layers and keys").
"""

import warnings

import keras
import numpy as np
import pytest

import oracle
from keras_neuron_sensitivity import NeuronSensitivityCallback, neuron_sensitivity

RTOL, ATOL = 2e-3, 1e-6
L = keras.layers
RNG = np.random.default_rng(5)


def _floats(*shape, n=3):
    return RNG.normal(size=(n, *shape)).astype("float32")


def _seq(shape, *layers):
    return keras.Sequential([keras.Input(shape), *layers])


def branching_residual():
    x = keras.Input((6,))
    h = L.Dense(5, activation="relu", name="h")(x)
    a = L.Dense(5, activation="tanh", name="a")(h)
    b = L.Dense(5, activation="sigmoid", name="b")(h)
    r = L.Add(name="res")([h, a, b])
    return keras.Model(x, L.Dense(2, name="out")(r)), _floats(6)


def two_inputs_two_outputs():
    a, b = keras.Input((4,), name="a"), keras.Input((3, 2), name="b")
    ha = L.Dense(3, activation="relu", name="ha")(a)
    hb = L.Conv1D(3, 2, activation="elu", name="hb")(b)
    j = L.Concatenate(name="j")([ha, L.Flatten()(hb)])
    out1 = L.Dense(2, name="out1")(j)
    out2 = L.Dense(1, activation="sigmoid", name="out2")(ha)
    return keras.Model([a, b], [out1, out2]), [_floats(4), _floats(3, 2)]


def nested_sequential():
    inner = keras.Sequential(
        [keras.Input((4,)), L.Dense(3, activation="relu", name="d1"), L.Dense(3, name="d2")],
        name="inner",
    )
    x = keras.Input((5,))
    h = L.Dense(4, activation="tanh", name="pre")(x)
    return keras.Model(x, L.Dense(2, name="post")(inner(h))), _floats(5)


def embedding_lstm():
    ids = keras.Input((6,), dtype="int32")
    h = L.Embedding(7, 4, name="emb")(ids)
    h = L.LSTM(3, return_sequences=True, name="lstm")(h)
    return keras.Model(ids, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h))), RNG.integers(0, 7, (3, 6)).astype("int32")


def attention_block():
    x = keras.Input((4, 6))
    a = L.MultiHeadAttention(2, 3, name="mha")(x, x)
    h = L.LayerNormalization(name="ln")(L.Add()([x, a]))
    f = L.Dense(6, activation="gelu", name="ffn")(h)
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(f))), _floats(4, 6)


def recurrent(make_layer):
    # A fresh layer per model: a layer shared by two models has two inbound
    # nodes, and the oracle reads the first.
    return lambda: (_seq((5, 3), make_layer(), L.Dense(2, name="out")), _floats(5, 3))


ZOO = {
    "sequential_with_input": lambda: (_seq((4,), L.Dense(5, activation="relu", name="h"), L.Dropout(0.5), L.Dense(3, activation="softmax", name="o")), _floats(4)),
    "branching_residual": branching_residual,
    "two_inputs_two_outputs": two_inputs_two_outputs,
    "nested_sequential": nested_sequential,
    "einsum_dense": lambda: (_seq((3, 4), L.EinsumDense("abc,cd->abd", (3, 5), bias_axes="d", activation="relu", name="e"), L.Flatten(), L.Dense(2, name="o")), _floats(3, 4)),
    "conv1d_conv2d_conv3d": lambda: (_seq((4, 4, 4, 1), L.Conv3D(2, 2, activation="relu", name="c3"), L.Reshape((9, 6)), L.Conv1D(2, 2, name="c1"), L.Reshape((4, 4, 1)), L.Conv2D(2, 2, padding="same", name="c2"), L.Flatten(), L.Dense(2, name="o")), _floats(4, 4, 4, 1)),
    "conv2d_transpose": lambda: (_seq((3, 3, 2), L.Conv2DTranspose(2, 3, strides=2, activation="relu", name="t"), L.GlobalAveragePooling2D(), L.Dense(2, name="o")), _floats(3, 3, 2)),
    "depthwise_separable": lambda: (_seq((6, 6, 2), L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw"), L.SeparableConv2D(3, 2, name="sep"), L.Flatten(), L.Dense(2, name="o")), _floats(6, 6, 2)),
    "norms": lambda: (_seq((5, 5, 2), L.Conv2D(4, 2, name="c"), L.BatchNormalization(name="bn"), L.GroupNormalization(2, name="gn"), L.LayerNormalization(name="ln"), L.Flatten(), L.Dense(2, name="o")), _floats(5, 5, 2)),
    "simple_rnn_last": recurrent(lambda: L.SimpleRNN(3, name="rnn")),
    "lstm_sequences": lambda: (_seq((5, 3), L.LSTM(3, return_sequences=True, name="rnn"), L.Dense(2, name="out")), _floats(5, 3)),
    "gru_last": recurrent(lambda: L.GRU(3, name="rnn")),
    "bidirectional_lstm": recurrent(lambda: L.Bidirectional(L.LSTM(2), name="bi")),
    "embedding_lstm_int_input": embedding_lstm,
    "attention_residual_layernorm": attention_block,
}


def _output_tensor(model, key):
    """The Keras tensor a key names, found through Keras's own graph."""
    *outer, name = key.split("/")
    name, _, call = name.partition("@")
    owner = model.get_layer(outer[0]) if outer else model
    layer = owner.get_layer(name)
    tensor = layer._inbound_nodes[int(call or 0)].output_tensors[0]
    if outer:  # re-express an inner tensor in terms of the outer model's inputs
        inner_out = keras.Model(owner.inputs, tensor)
        tensor = inner_out(model.get_layer(outer[0])._inbound_nodes[0].input_tensors[0])
    return tensor


@pytest.mark.parametrize("name", sorted(ZOO), ids=sorted(ZOO))
def test_zoo_model_matches_brute_force(name):
    model, x = ZOO[name]()
    # Token ids: the sensitivity to inputs is read at the Embedding's output.
    embedded = [layer for layer in model.layers if isinstance(layer, L.Embedding)]
    got = {wrt: neuron_sensitivity(model, x, wrt=wrt, reduction=None) for wrt in ("weights", "inputs")}
    assert got["weights"], "no layer selected"
    assert list(got["inputs"]) == list(got["weights"])
    for key in got["weights"]:
        fn = oracle.site_fn(model, key) or oracle.output_fn(model, _output_tensor(model, key))
        expected = oracle.brute_force(model, x, fn, tuple(got), embedded)
        for wrt in got:
            np.testing.assert_allclose(got[wrt][key], expected[wrt], rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


def test_nested_model_keys_are_outer_slash_inner():
    model, x = nested_sequential()
    assert list(neuron_sensitivity(model, x)) == ["pre", "inner/d1", "inner/d2", "post"]


def test_layer_called_twice_has_one_key_per_call():
    x = keras.Input((4,))
    shared = L.Dense(4, activation="tanh", name="shared")
    y = L.Dense(2, name="out")(shared(shared(x)))
    model = keras.Model(x, y)
    probe = _floats(4)
    got = neuron_sensitivity(model, probe, reduction=None)
    assert list(got) == ["shared", "shared@1", "out"]
    for key in got:
        fn = oracle.output_fn(model, _output_tensor(model, key))
        np.testing.assert_allclose(got[key], oracle.brute_force(model, probe, fn, "weights"), rtol=RTOL, atol=ATOL)


def test_sequential_without_input_built_by_fit(tmp_path):
    model = keras.Sequential([L.Dense(4, activation="relu", name="h"), L.Dense(2, name="o")])
    model.compile("sgd", "mse")
    x = _floats(3, n=16)
    callback = NeuronSensitivityCallback(x[:4], log_dir=tmp_path)
    model.fit(x, np.zeros((16, 2)), epochs=1, verbose=0, callbacks=[callback])
    for key in ["h", "o"]:
        fn = oracle.output_fn(model, model.get_layer(key).output)
        expected = oracle.brute_force(model, x[:4], fn, "weights").mean(axis=0)
        np.testing.assert_allclose(callback.sensitivities[0]["weights"][key], expected, rtol=RTOL, atol=ATOL)


def test_integer_and_float_inputs_to_inputs_reads_floats_and_embedding_output():
    ids, feats = keras.Input((3,), dtype="int32", name="ids"), keras.Input((2,), name="feats")
    h = L.Concatenate()([L.Flatten()(L.Embedding(5, 2, name="emb")(ids)), feats])
    model = keras.Model([ids, feats], L.Dense(2, name="o")(h))
    x = [RNG.integers(0, 5, (3, 3)).astype("int32"), _floats(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every input is measured: no warning
        got = neuron_sensitivity(model, x, wrt="inputs", reduction=None)
    fn = oracle.output_fn(model, model.get_layer("o").output)
    expected = oracle.brute_force(model, x, fn, "inputs", embedded=[model.get_layer("emb")])
    np.testing.assert_allclose(got["o"], expected, rtol=RTOL, atol=ATOL)


@pytest.fixture
def mixed_precision():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)


def _cnn():
    return _seq((6, 6, 1), L.Conv2D(3, 3, activation="relu", name="c"), L.BatchNormalization(name="bn"), L.Flatten(), L.Dense(4, activation="tanh", name="d"), L.Dense(2, name="o"))


def test_mixed_precision_agrees_with_float32_twin(mixed_precision):
    model16 = _cnn()
    assert model16.get_layer("c").compute_dtype == "float16"
    keras.config.set_dtype_policy("float32")
    model32 = _cnn()
    model32.set_weights(model16.get_weights())
    x = _floats(6, 6, 1)
    for wrt in ["weights", "inputs"]:
        got = neuron_sensitivity(model16, x, wrt=wrt, reduction=None)
        twin = neuron_sensitivity(model32, x, wrt=wrt, reduction=None)
        for key in twin:
            np.testing.assert_allclose(got[key], twin[key], rtol=3e-2, atol=1e-4)
    # The policy the user chose is intact afterwards.
    assert model16.get_layer("c").compute_dtype == "float16"


class Net(keras.Model):
    """A subclassed model that only chains layers (with a nested Sequential)."""

    def __init__(self):
        super().__init__()
        self.d1 = L.Dense(5, activation="relu", name="d1")
        self.d2 = L.Dense(4, activation="tanh", name="d2")
        self.inner = keras.Sequential([keras.Input((5,)), L.Dense(4, name="i1")], name="inner")
        self.add = L.Add(name="add")
        self.out = L.Dense(3, name="out")

    def call(self, x):
        h = self.d1(x)
        return self.out(self.add([self.d2(h), self.inner(h)]))


def test_subclassed_model_equals_functional_twin():
    net = Net()
    x = _floats(3)
    net(x)
    inp = keras.Input((3,))
    h = net.d1(inp)
    twin = keras.Model(inp, net.out(net.add([net.d2(h), net.inner(h)])))
    for wrt in ["weights", "inputs"]:
        got = neuron_sensitivity(net, x, wrt=wrt, reduction=None)
        assert list(got) == ["d1", "d2", "inner/i1", "out"]
        for key, values in got.items():
            tensor = {"d1": h, "d2": twin.get_layer("d2")._inbound_nodes[-1].output_tensors[0],
                      "inner/i1": twin.get_layer("inner")._inbound_nodes[-1].output_tensors[0],
                      "out": twin.outputs[0]}[key]
            expected = oracle.brute_force(twin, x, oracle.output_fn(twin, tensor), wrt)
            np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


def test_subclassed_model_with_raw_ops_is_refused_with_the_reason():
    class Scaled(keras.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = L.Dense(3, name="a"), L.Dense(2, name="b")

        def call(self, x):
            return self.b(self.a(x) * 2.0)

    model = Scaled()
    x = _floats(3)
    model(x)
    with pytest.raises(ValueError, match=r"passes layer 'b' a tensor.*computes something between layers.*Lambda"):
        neuron_sensitivity(model, x)
