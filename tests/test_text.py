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


def text_vectorization():
    vectorize = L.TextVectorization(max_tokens=20, output_mode="int", name="text_vectorization")
    vectorize.adapt(TEXTS)
    text = keras.Input(shape=(1,), dtype="string", name="text")
    h = L.Embedding(20, 4, name="embedding")(vectorize(text))
    h = L.Dense(3, activation="tanh", name="hidden")(L.GlobalAveragePooling1D()(h))
    # Object strings, as `fit` takes them (it refuses NumPy fixed-width "<U").
    return keras.Model(text, L.Dense(2, name="out")(h)), TEXTS[:3].astype(object), ["embedding"]


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
    """The Keras tensor of a key's first call, in the outer model's graph."""
    *outer, name = key.split("/")
    if not outer:
        return model.get_layer(name)._inbound_nodes[0].output_tensors[0]
    inner = model.get_layer(outer[0])
    tensor = inner.get_layer(name)._inbound_nodes[0].output_tensors[0]
    node = inner._inbound_nodes[0]
    return keras.Model(inner.inputs, tensor)(node.arguments.args[0])


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
    # that output is 1/positions on each of the LENGTH positions.
    for key in embedded:
        np.testing.assert_allclose(logged["inputs"][key], LENGTH**-0.5, rtol=1e-5)
