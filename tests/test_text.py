"""Language models at the callback's defaults, each against brute force.

Token ids and strings have no derivative: the sensitivity to inputs is read
at the embedded input, the output of the layer that first turns them into
floats (docs/definitions.md, "Sensitivity"). The oracle (`oracle.py`) watches that
output in Keras's own forward pass and takes one `tape.gradient` per neuron
and sample; it knows nothing of the package. Each test names the layers
whose outputs are the embedded inputs.

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
from keras_neuron_sensitivity.engine.rules import table

keras_hub = pytest.importorskip("keras_hub")

RTOL, ATOL = 2e-3, 1e-6
L = keras.layers
VOCAB, LENGTH, HIDDEN = 20, 6, 8
RNG = np.random.default_rng(7)


# --- the models ------------------------------------------------------------------


class TokenAndPositionEmbedding(L.Layer):
    """The Keras example's layer: token embedding plus learned positions."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = L.Embedding(vocab_size, embed_dim)
        self.pos_emb = L.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = keras.ops.arange(0, keras.ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


def _ids(n=2):
    return RNG.integers(1, VOCAB, (n, LENGTH)).astype("int32")


def _padding(n=2):
    mask = np.ones((n, LENGTH), "int32")
    mask[0, -2:] = 0  # the first sample is padded
    return mask


def transformer_classifier(dropout=0.0):
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    h = TokenAndPositionEmbedding(LENGTH, VOCAB, HIDDEN, name="embedding")(ids)
    a = L.MultiHeadAttention(2, HIDDEN // 2, dropout=dropout, name="attention")(h, h)
    h = L.LayerNormalization(name="norm_1")(L.Add()([h, L.Dropout(dropout)(a)]))
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
# oracle runs one sample at a time: these texts have equal lengths.
SAME_LENGTH = np.array(["the cat sat down", "a dog ran far", "cats and dogs ran"])


def text_vectorization(length=None):
    vectorize = L.TextVectorization(
        max_tokens=20, output_mode="int", output_sequence_length=length, name="text_vectorization"
    )
    vectorize.adapt(TEXTS)
    text = keras.Input(shape=(1,), dtype="string", name="text")
    h = L.Embedding(20, 4, name="embedding")(vectorize(text))
    h = L.Dense(3, activation="tanh", name="hidden")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(text, L.Dense(2, name="out")(h))
    # Object strings, as `fit` takes them (it refuses NumPy's fixed-width
    # "<U" strings, which the package accepts too).
    probe = SAME_LENGTH if length is None else TEXTS[:3]
    return model, probe.astype(object), ["embedding"]


def _hub(cls, **extra):
    return cls(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
               intermediate_dim=2 * HIDDEN, max_sequence_length=LENGTH, **extra)


def bert():
    backbone = _hub(keras_hub.models.BertBackbone)
    ids = _ids()
    x = {"padding_mask": _padding(), "segment_ids": (ids % 2).astype("int32"), "token_ids": ids}
    return backbone, x, ["token_embedding", "segment_embedding"]


def gpt2():
    backbone = _hub(keras_hub.models.GPT2Backbone)  # named gpt2_backbone, or _1, _2...
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    return model, {"padding_mask": _padding(), "token_ids": _ids()}, [f"{backbone.name}/token_embedding"]


def distil_bert():
    backbone = _hub(keras_hub.models.DistilBertBackbone)
    return backbone, {"padding_mask": _padding(), "token_ids": _ids()}, ["token_and_position_embedding"]


# The models: model -> (factory, layers checked against the oracle,
# None for all). The last layer's neurons depend on every weight before them.
MODELS = {
    "transformer_classifier": (transformer_classifier, None),
    "text_vectorization": (text_vectorization, None),
    # Inside the blocks too: the attention context (the other inside sites
    # are tests/test_inside.py's, on Llama, Gemma 3 and ViT).
    "bert": (bert, ["token_embedding", "transformer_layer_0", "pooled_dense",
                    "transformer_layer_0/self_attention_layer/heads"]),
    # Short names (the backbone's own are unique): its last block, and the
    # output layer, the token embedding called again in reverse.
    "gpt2_causal_lm": (gpt2, ["transformer_layer_1", "token_embedding", "transformer_layer_0/ffn"]),
}


# --- helpers -----------------------------------------------------------------------


def _as_list(model, x):
    """A dict probe as a list in `model.inputs` order (what the oracle takes)."""
    return [x[t.name] for t in model.inputs] if isinstance(x, dict) else x


def _layer(model, key):
    owner = model
    for part in key.split("/"):
        owner = owner.get_layer(part.partition("@")[0])
    return owner


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


def _output_tensor(model, key):
    """The Keras tensor of a key's call, in the outer model's graph."""
    *outer, name = key.split("/")
    owner = model.get_layer(outer[0]) if outer else model
    name, _, call = name.partition("@")
    tensor = _node_of(owner, owner.get_layer(name), int(call or 0)).output_tensors[0]
    if outer:  # re-expressed through the outer model's call of the inner one
        tensor = keras.Model(owner.inputs, tensor)(_node_of(model, owner).arguments.args[0])
    return tensor


def _expected(model, x, key, wrt, embedded):
    fn = oracle.site_fn(model, key) or oracle.output_fn(model, _output_tensor(model, key))
    layers = [_layer(model, k) if isinstance(k, str) else k for k in embedded]
    return oracle.brute_force(model, _as_list(model, x), fn, wrt, layers)


def _quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a padding mask's left-out warning
        return fn(*args, **kwargs)


# --- the models at the callback's defaults ---------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_callback_defaults_log_both_wrt_matching_brute_force(name, tmp_path):
    factory, checked = MODELS[name]
    model, x, embedded = factory()
    # Eager training steps: tracing a backbone's train step takes seconds,
    # and the callback's own computation is compiled either way.
    if isinstance(model, keras_hub.models.CausalLM):  # next-token targets
        targets = np.roll(x["token_ids"], -1, axis=1)
        model.compile(run_eagerly=True)
    else:  # targets shaped like the outputs (a backbone's are a dict)
        targets = keras.tree.map_structure(lambda y: np.asarray(y) + 0.5, model.predict(x, verbose=0))
        model.compile("adam", "mse", run_eagerly=True)
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path, on_error="raise")
    _quietly(model.fit, x, targets, epochs=1, verbose=0, callbacks=[callback])
    logged = callback.sensitivities[0]
    assert set(logged) == {"weights", "inputs"}
    assert list(logged["inputs"]) == list(logged["weights"]) and logged["inputs"]
    for name in checked or logged["weights"]:
        key = name if name in logged["weights"] else next(k for k in logged["weights"] if k.endswith("/" + name))
        expected = _expected(model, x, key, ("weights", "inputs"), embedded)
        for wrt in ("weights", "inputs"):
            np.testing.assert_allclose(logged[wrt][key], expected[wrt].mean(axis=0), rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


@pytest.mark.parametrize("length", [None, LENGTH], ids=["length_from_probe", "fixed_length"])
def test_text_vectorization_per_sample_matches_brute_force(length):
    model, x, embedded = text_vectorization(length)
    texts = x.astype(str)  # NumPy fixed-width strings, shape (B,) for Input((1,))
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(model, texts, wrt=wrt, reduction=None)
        assert list(got) == ["embedding", "hidden", "out"]
        for key, values in got.items():
            expected = _expected(model, x, key, wrt, embedded)
            np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")
    # Its own neurons, with respect to its output: 1/positions on each of its
    # positions (the probe's 4 words, or the fixed length).
    np.testing.assert_allclose(got["embedding"], (length or 4) ** -0.5, rtol=1e-6)


def test_distil_bert_matches_brute_force():
    model, x, embedded = distil_bert()
    got = {wrt: _quietly(neuron_sensitivity, model, x, wrt=wrt, reduction=None) for wrt in ("weights", "inputs")}
    for wrt in got:
        outer = [key for key in got[wrt] if "/" not in key]
        assert outer == ["token_and_position_embedding", "embeddings_layer_norm", "transformer_layer_0", "transformer_layer_1"]
    for key in ["token_and_position_embedding", "transformer_layer_1", "transformer_layer_1/ffn",
                "token_and_position_embedding/position_embedding"]:
        expected = _expected(model, x, key, tuple(got), embedded)
        for wrt in got:
            np.testing.assert_allclose(got[wrt][key], expected[wrt], rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


def test_neuron_jacobian_inputs_is_at_the_embedding_output():
    model, x, embedded = transformer_classifier()
    got = neuron_jacobian(model, x, "head", wrt="inputs")
    assert got.shape == (2, 4, LENGTH, HIDDEN)  # (B, C, *embedding output)
    per_sample = oracle.jacobians(
        model, x, oracle.output_fn(model, _output_tensor(model, "head")), "inputs", [_layer(model, "embedding")]
    )
    np.testing.assert_allclose(got, np.stack([jac[0] for jac in per_sample]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_chunks_of_one_row_read_the_embedded_input(wrt):
    # Budget for one (neuron, sample) row at a time: several rounds, each
    # reading the cotangent at the embedding output before it is used up.
    model, x, embedded = transformer_classifier()
    got = neuron_sensitivity(model, x, wrt=wrt, layers=["embedding", "ffn_2"], reduction=None, memory_budget_mb=1e-4)
    for key in got:
        np.testing.assert_allclose(got[key], _expected(model, x, key, wrt, embedded), rtol=RTOL, atol=ATOL)


def test_training_is_bit_identical_with_and_without_callback(tmp_path):
    def train(with_callback):
        keras.utils.set_random_seed(3)
        model, x, _ = transformer_classifier(dropout=0.3)
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", run_eagerly=True)
        ids = np.random.default_rng(0).integers(1, VOCAB, (16, LENGTH)).astype("int32")
        labels = np.arange(16) % 2
        callbacks = [NeuronSensitivityCallback(ids[:4], log_dir=tmp_path)] if with_callback else []
        model.fit(ids, labels, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
        return model.get_weights()

    for a, b in zip(train(False), train(True), strict=True):
        np.testing.assert_array_equal(a, b)


# --- preprocessing layers and string probes ----------------------------------------


def lookups():
    """Every preprocessing layer of the issue in one model, and a multi-hot
    TextVectorization, whose float output is itself the embedded input."""
    words = keras.Input((3,), dtype="string", name="words")
    codes = keras.Input((3,), dtype="int32", name="codes")
    amounts = keras.Input((3,), name="amounts")
    text = keras.Input((1,), dtype="string", name="text")
    vocabulary = ["cat", "dog", "bird"]
    branches = [
        L.Embedding(5, 2, name="word_embedding")(L.StringLookup(vocabulary=vocabulary)(words)),
        L.Embedding(5, 2, name="code_embedding")(L.IntegerLookup(vocabulary=[3, 7, 9])(codes)),
        L.Embedding(8, 2, name="hash_embedding")(L.Hashing(8)(words)),
        L.Embedding(4, 2, name="bin_embedding")(L.Discretization(bin_boundaries=[-1.0, 0.0, 1.0])(amounts)),
    ]
    h = L.Flatten()(L.Concatenate(name="joined")(branches))
    bag = L.TextVectorization(max_tokens=6, output_mode="multi_hot", vocabulary=vocabulary, name="bag")(text)
    h = L.Concatenate()([h, L.Flatten()(L.Dense(2, name="bag_dense")(bag))])
    model = keras.Model([words, codes, amounts, text], L.Dense(3, activation="tanh", name="out")(h))
    x = [
        np.array([["cat", "dog", "eel"], ["bird", "cat", "cat"]]),
        np.array([[3, 7, 1], [9, 9, 3]], "int32"),
        RNG.normal(size=(2, 3)).astype("float32"),
        np.array(["the cat and the dog", "a bird"]),
    ]
    # The bag's declared float output: what bag_dense receives.
    embedded = ["word_embedding", "code_embedding", "hash_embedding", "bin_embedding", oracle.InputOf(model.get_layer("bag_dense"))]
    return model, x, embedded


def test_lookup_hashing_discretization_and_multi_hot_match_brute_force():
    model, x, embedded = lookups()
    for wrt in ("weights", "inputs"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every input reaches an embedded input
            got = neuron_sensitivity(model, x, wrt=wrt, reduction=None)
        assert list(got) == ["word_embedding", "code_embedding", "hash_embedding", "bin_embedding", "bag_dense", "out"]
        for key, values in got.items():
            expected = _expected(model, [a.astype(object) if a.dtype.kind == "U" else a for a in x], key, wrt, embedded)
            np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


def test_where_the_sensitivity_to_inputs_is_measured_is_named():
    from keras_neuron_sensitivity import _computation

    graph = _computation.model_graph(*lookups()[:2])
    assert list(graph.sensitivity_inputs.values()) == [
        "bag output (from text)",
        "word_embedding output (from words)",
        "code_embedding output (from codes)",
        "hash_embedding output (from words)",
        "bin_embedding output (from amounts)",
    ]
    assert graph.left_out_inputs == []
    graph = _computation.model_graph(*bert()[:2])
    assert list(graph.sensitivity_inputs.values()) == [
        "token_embedding output (from token_ids)",
        "segment_embedding output (from segment_ids)",
    ]
    # The padding mask only masks: left out without a warning.
    assert graph.left_out_inputs == []


def test_string_probe_shapes_and_dtypes():
    model, x, _ = text_vectorization(LENGTH)
    as_rows = neuron_sensitivity(model, x.astype(str)[:, None])  # (B, 1)
    as_vector = neuron_sensitivity(model, x.astype(bytes))  # (B,), as Keras takes it
    for key in as_rows:
        np.testing.assert_array_equal(as_rows[key], as_vector[key])
    with pytest.raises(TypeError, match=r"input 'text' of dtype float32.*Expected strings"):
        neuron_sensitivity(model, np.zeros((2, 1), "float32"))
    ids_model, ids, _ = transformer_classifier()
    with pytest.raises(TypeError, match=r"'token_ids' holding strings.*Expected int32"):
        neuron_sensitivity(ids_model, np.full((2, LENGTH), "a"))


def test_callback_with_a_string_dataset_probe(tmp_path):
    import tensorflow as tf

    model, x, _ = text_vectorization(LENGTH)
    model.compile("adam", "mse")
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS.astype(object), np.zeros((8, 2)))).batch(4)
    callback = NeuronSensitivityCallback(dataset, log_dir=tmp_path, probe_size=6, on_error="raise")
    model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    logged = callback.sensitivities[0]
    expected = _expected(model, TEXTS[:6].astype(object), "out", "inputs", ["embedding"])
    np.testing.assert_allclose(logged["inputs"]["out"], expected.mean(0), rtol=RTOL, atol=ATOL)


def test_preprocessing_layer_cannot_be_selected():
    model, x, _ = text_vectorization()
    with pytest.raises(ValueError, match=r"'text_vectorization', a preprocessing layer.*one of \['embedding', .*'hidden', 'out'\]"):
        neuron_sensitivity(model, x, layers=["text_vectorization"])


# --- layer keys of nested backbones ------------------------------------------------


def test_short_names_of_nested_layers():
    model, x, _ = gpt2()
    got = _quietly(neuron_sensitivity, model, x, layers=["transformer_layer_1", "token_embedding"])
    # A unique tail names the nested layer; an exact key wins over a tail.
    assert list(got) == [f"{model.backbone.name}/transformer_layer_1", "token_embedding"]
    twins = keras.Input((3,))
    inner = [keras.Sequential([keras.Input((3,)), L.Dense(3, name="d")], name=f"block_{i}") for i in range(2)]
    twin_model = keras.Model(twins, inner[1](inner[0](twins)))
    with pytest.raises(ValueError, match=r"'d' that names several layers.*'block_0/d', 'block_1/d'"):
        neuron_sensitivity(twin_model, np.ones((1, 3), "float32"), layers=["d"])


# --- attention rules, case by case -------------------------------------------------


def _floats(*shape, n=2):
    return RNG.normal(size=(n, *shape)).astype("float32")


def masked_self_attention():
    x, mask = keras.Input((4, 6), name="x"), keras.Input((4, 4), dtype="int32", name="mask")
    a = L.MultiHeadAttention(2, 3, name="mha")(x, x, attention_mask=mask)
    model = keras.Model([x, mask], L.Dense(2, name="out")(L.Flatten()(a)))
    masks = np.tril(np.ones((2, 4, 4), "int32"))
    masks[1, 0] = 0  # a row masked entirely
    return model, [_floats(4, 6), masks], []


def cross_attention_with_key():
    q, v, k = keras.Input((3, 4), name="q"), keras.Input((5, 6), name="v"), keras.Input((5, 2), name="k")
    a = L.MultiHeadAttention(3, 2, value_dim=3, output_shape=5, use_bias=False, name="mha")(q, v, key=k)
    return keras.Model([q, v, k], L.Dense(2, name="out")(L.GlobalAveragePooling1D()(a))), [_floats(3, 4), _floats(5, 6), _floats(5, 2)], []


def causal(dropout):
    def factory():
        x = keras.Input((4, 6), name="x")
        h = L.Dense(6, activation="tanh", name="pre")(x)
        a = L.MultiHeadAttention(2, 3, dropout=dropout, name="mha")(h, h, use_causal_mask=True)
        return keras.Model(x, L.Dense(2, name="out")(L.Flatten()(a))), [_floats(4, 6)], []
    return factory


def mask_zero(dropout):
    """Keras masks from `Embedding(mask_zero=True)`: padded query rows are
    masked entirely (zeroed with dropout, uniform without, as Keras does)."""
    def factory():
        ids = keras.Input((5,), dtype="int32", name="ids")
        e = L.Embedding(VOCAB, 6, mask_zero=True, name="emb")(ids)
        a = L.MultiHeadAttention(2, 3, dropout=dropout, name="mha")(e, e)
        model = keras.Model(ids, L.Dense(2, name="out")(L.Flatten()(a)))
        return model, np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 9]], "int32"), ["emb"]
    return factory


def mask_through_rules():
    """The Keras mask crosses layers that rules compute themselves (a `Dense`
    and a `LayerNormalization` on the masked sequence) before reaching the
    attention, as Keras's `__call__` carries it."""
    ids = keras.Input((5,), dtype="int32", name="ids")
    e = L.Embedding(VOCAB, 6, mask_zero=True, name="emb")(ids)
    h = L.LayerNormalization(name="norm")(L.Dense(6, activation="tanh", name="proj")(e))
    a = L.MultiHeadAttention(2, 3, name="mha")(h, h)
    model = keras.Model(ids, L.Dense(2, name="out")(L.Flatten()(a)))
    return model, np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 9]], "int32"), ["emb"]


def scores_returned():
    x = keras.Input((3, 4), name="x")
    a, scores = L.MultiHeadAttention(1, 2, name="mha")(x, x, return_attention_scores=True)
    h = L.Concatenate()([L.Flatten()(a), L.Flatten()(scores)])
    return keras.Model(x, L.Dense(2, name="out")(h)), [_floats(3, 4)], []


def hub_encoder_pre_norm_masked():
    """keras_hub's own TokenAndPositionEmbedding with mask_zero: its Keras
    mask reaches the (pre-norm) encoder."""
    ids = keras.Input((5,), dtype="int32", name="ids")
    e = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 5, 6, mask_zero=True, name="embedding")(ids)
    h = keras_hub.layers.TransformerEncoder(8, 2, normalize_first=True, name="encoder")(e)
    model = keras.Model(ids, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h)))
    return model, np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 9]], "int32"), ["embedding"]


def hub_decoder_post_norm():
    x, padding = keras.Input((4, 6), name="x"), keras.Input((4,), dtype="int32", name="padding")
    h = keras_hub.layers.TransformerDecoder(8, 2, activation="gelu", name="decoder")(x, decoder_padding_mask=padding)
    model = keras.Model([x, padding], L.Dense(2, name="out")(L.Flatten()(h)))
    return model, [_floats(4, 6), np.array([[1, 1, 1, 0], [1, 1, 1, 1]], "int32")], []


def hub_decoder_cross_attention():
    """With an encoder sequence: no rule of its own, the generic rule."""
    x, memory = keras.Input((3, 4), name="x"), keras.Input((2, 4), name="memory")
    h = keras_hub.layers.TransformerDecoder(6, 2, name="decoder")(x, memory)
    return keras.Model([x, memory], L.Dense(2, name="out")(L.Flatten()(h))), [_floats(3, 4), _floats(2, 4)], []


# case -> (factory, the rule the layer under test gets)
ATTENTION = {
    "masked_self_attention": (masked_self_attention, "MultiHeadAttentionRule"),
    "cross_attention_with_key": (cross_attention_with_key, "MultiHeadAttentionRule"),
    "causal": (causal(0.0), "MultiHeadAttentionRule"),
    "causal_dropout": (causal(0.2), "MultiHeadAttentionRule"),
    "mask_zero": (mask_zero(0.0), "MultiHeadAttentionRule"),
    "mask_zero_dropout": (mask_zero(0.2), "MultiHeadAttentionRule"),
    "mask_through_rules": (mask_through_rules, "MultiHeadAttentionRule"),
    "scores_returned": (scores_returned, "MultiHeadAttentionRule"),
    "hub_encoder_pre_norm_masked": (hub_encoder_pre_norm_masked, "TransformerEncoderRule"),
    "hub_decoder_post_norm": (hub_decoder_post_norm, "TransformerDecoderRule"),
    "hub_decoder_cross_attention": (hub_decoder_cross_attention, "GenericRule"),
}
UNDER_TEST = {"hub_encoder_pre_norm_masked": "encoder", "hub_decoder_post_norm": "decoder", "hub_decoder_cross_attention": "decoder"}


@pytest.mark.parametrize("case", list(ATTENTION))
def test_attention_rule_matches_brute_force(case):
    factory, rule = ATTENTION[case]
    model, x, embedded = factory()
    got = {wrt: _quietly(neuron_sensitivity, model, x, wrt=wrt, reduction=None) for wrt in ("weights", "inputs")}
    assert list(got["inputs"]) == list(got["weights"])
    for key in got["weights"]:
        expected = _expected(model, x, key, tuple(got), embedded)
        for wrt in got:
            np.testing.assert_allclose(got[wrt][key], expected[wrt], rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")
    layer = model.get_layer(UNDER_TEST.get(case, "mha"))
    assert type(table.rule_for(layer)).__name__ == rule


@pytest.mark.parametrize(
    "mha, shape",
    [
        (lambda: L.MultiHeadAttention(2, 3, attention_axes=(1, 2)), (3, 4, 4)),
        (lambda: L.MultiHeadAttention(2, 3, use_gate=True), (3, 4)),
    ],
    ids=["attention_axes", "gated"],
)
def test_attention_variants_without_closed_form_use_the_generic_rule(mha, shape):
    layer = mha()
    x = keras.Input(shape)
    layer(x, x)
    assert type(table.rule_for(layer)).__name__ == "GenericRule"
