"""Language models at the callback's defaults, each against brute force.

Token ids and strings have no derivative: the sensitivity to inputs is read
at the embedded input, the output of the layer that first turns them into
floats (README, "Models it works on"). The oracle (`oracle.py`) watches that
output in Keras's own forward pass and takes one `tape.gradient` per neuron
and sample; it knows nothing of the package.

Models: a Transformer classifier on token ids as in the Keras examples
(TokenAndPositionEmbedding + MultiHeadAttention), the "text classification
from scratch" shape on raw strings (TextVectorization -> Embedding -> pooling
-> Dense), and keras_hub's BertBackbone, GPT2CausalLM and DistilBertBackbone
at tiny configurations with random weights (no presets, nothing downloaded).
"""

import warnings

import keras
import numpy as np
import pytest

import oracle
from keras_neuron_sensitivity import (
    NeuronSensitivityCallback,
    neuron_jacobian,
    neuron_sensitivity,
)

keras_hub = pytest.importorskip("keras_hub")

RTOL, ATOL = 2e-3, 1e-6
L = keras.layers
VOCAB, LENGTH, HIDDEN = 50, 6, 8
RNG = np.random.default_rng(7)


class TokenAndPositionEmbedding(L.Layer):
    """The Keras example's layer: token embedding plus learned positions."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = L.Embedding(vocab_size, embed_dim)
        self.pos_emb = L.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = keras.ops.arange(0, keras.ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


def _ids(n=3):
    return RNG.integers(1, VOCAB, (n, LENGTH)).astype("int32")


def _padding(n=3):
    mask = np.ones((n, LENGTH), "int32")
    mask[0, -2:] = 0  # the first sample is padded
    return mask


def transformer_classifier():
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    h = TokenAndPositionEmbedding(LENGTH, VOCAB, HIDDEN, name="embedding")(ids)
    a = L.MultiHeadAttention(2, HIDDEN // 2, name="attention")(h, h)
    h = L.LayerNormalization(name="norm_1")(L.Add()([h, a]))
    f = L.Dense(2 * HIDDEN, activation="relu", name="ffn_1")(h)
    h = L.LayerNormalization(name="norm_2")(L.Add()([h, L.Dense(HIDDEN, name="ffn_2")(f)]))
    h = L.Dense(4, activation="relu", name="head")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(ids, L.Dense(2, activation="softmax", name="out")(h))
    return model, _ids(), ["embedding"]


TEXTS = np.array([
    "the cat sat on the mat", "a dog ran far away", "the dog sat",
    "cats and dogs and birds", "far far away", "a cat", "the end", "dogs ran",
])
# Without `output_sequence_length`, TextVectorization pads a batch to its
# longest text, so a sample's neurons depend on the batch it is in. The
# oracle runs one sample at a time: the probe's texts have equal lengths.
SAME_LENGTH = np.array(["the cat sat down", "a dog ran far", "cats and dogs ran"], dtype=object)


def text_vectorization(length=None):
    vectorize = L.TextVectorization(
        max_tokens=20, output_mode="int", output_sequence_length=length, name="text_vectorization"
    )
    vectorize.adapt(TEXTS)
    text = keras.Input(shape=(1,), dtype="string", name="text")
    h = L.Embedding(20, 4, name="embedding")(vectorize(text))
    h = L.Dense(3, activation="tanh", name="hidden")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(text, L.Dense(2, name="out")(h))
    # Object strings, as `fit` takes them (it refuses NumPy fixed-width "<U").
    probe = SAME_LENGTH if length is None else TEXTS[:3].astype(object)
    return model, probe, ["embedding"]


def _hub(cls, **extra):
    return cls(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
               intermediate_dim=2 * HIDDEN, max_sequence_length=LENGTH, **extra)


def bert():
    backbone = _hub(keras_hub.models.BertBackbone)
    ids = _ids()
    # Inputs in `model.inputs` order, so the oracle can take them as a list.
    x = {"padding_mask": _padding(), "segment_ids": (ids % 2).astype("int32"), "token_ids": ids}
    return backbone, x, ["token_embedding", "segment_embedding"]


def gpt2():
    backbone = _hub(keras_hub.models.GPT2Backbone)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    return model, {"padding_mask": _padding(), "token_ids": _ids()}, ["gpt2_backbone/token_embedding"]


def distil_bert():
    backbone = _hub(keras_hub.models.DistilBertBackbone)
    return backbone, {"padding_mask": _padding(), "token_ids": _ids()}, ["token_and_position_embedding"]


MODELS = {
    "transformer_classifier": transformer_classifier,
    "text_vectorization": text_vectorization,
    "text_vectorization_fixed_length": lambda: text_vectorization(LENGTH),
    "bert": bert,
    "gpt2_causal_lm": gpt2,
    "distil_bert": distil_bert,
}


def _as_list(model, x):
    """A dict probe as a list in `model.inputs` order (what the oracle takes)."""
    return [x[t.name] for t in model.inputs] if isinstance(x, dict) else x


def _layer(model, key):
    owner = model
    for part in key.split("/"):
        owner = owner.get_layer(part.partition("@")[0])
    return owner


def _output_tensor(model, key):
    """The Keras tensor of a key's call, in the outer model's graph."""
    *outer, name = key.split("/")
    owner = model.get_layer(outer[0]) if outer else model
    tensor = _node_output(owner, name)
    if outer:  # re-expressed through the outer model's call of the inner one
        tensor = keras.Model(owner.inputs, tensor)(_node_of(model, owner).arguments.args[0])
    return tensor


def _node_of(model, layer, call=0):
    """The `call`-th node of `layer` in `model`'s own graph (a layer shared
    with a nested model, like GPT-2's token embedding, has nodes in both)."""
    nodes = [
        node
        for depth in sorted(model._nodes_by_depth, reverse=True)
        for node in model._nodes_by_depth[depth]
        if node.operation is layer
    ]
    return nodes[call]


def _node_output(model, name):
    name, _, call = name.partition("@")
    return _node_of(model, model.get_layer(name), int(call or 0)).output_tensors[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_callback_defaults_log_both_wrt_per_default_layer(name, tmp_path):
    model, x, embedded = MODELS[name]()
    if isinstance(model, keras_hub.models.CausalLM):  # next-token targets
        targets = np.roll(x["token_ids"], -1, axis=1)
        model.compile()
    else:  # targets shaped like the outputs (a backbone's are a dict)
        targets = keras.tree.map_structure(lambda y: np.asarray(y) + 0.5, model.predict(x, verbose=0))
        model.compile("adam", "mse")
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path, on_error="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the padding mask's left-out warning
        model.fit(x, targets, epochs=1, verbose=0, callbacks=[callback])
    logged = callback.sensitivities[0]
    assert set(logged) == {"weights", "inputs"}
    assert set(logged["weights"]) == set(logged["inputs"]) and logged["inputs"]
    for wrt in logged:
        for key, values in logged[wrt].items():
            assert np.all(np.isfinite(values)), (wrt, key)
    # Each embedded input's own layer: its neurons' derivative with respect to
    # that output is 1/positions on each of its positions (here 4 or LENGTH).
    positions = 4 if name == "text_vectorization" else LENGTH
    for key in embedded:
        np.testing.assert_allclose(logged["inputs"][key], positions**-0.5, rtol=1e-5)
