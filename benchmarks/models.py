"""The models the benchmarks time and the tests check, built one way for both.

Every builder is seeded by the caller (`keras.utils.set_random_seed`), has
random weights (nothing is downloaded), and imports only Keras and NumPy at
module level (sklearn and keras_hub when their model is built), so that the
backend tests can build them on JAX and PyTorch. Nothing here imports the
package.

Each builder returns the model; `probe(name, n)` gives a probe for it.
"""

import keras
import numpy as np

L = keras.layers


def digits_mlp():
    """MLP 64-128-64-10 (relu, softmax output): the digits demo's model."""
    return keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(128, activation="relu", name="hidden_1"),
            L.Dense(64, activation="relu", name="hidden_2"),
            L.Dense(10, activation="softmax", name="output"),
        ],
        name="digits_mlp",
    )


def digits():
    """sklearn's load_digits: `(x, y)`, 1,797 x 64 scaled to [0, 1], int32 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def mlp784():
    """MLP 784-512-256-128-10 (logits)."""
    return keras.Sequential(
        [
            keras.Input((784,)),
            L.Dense(512, activation="relu", name="dense1"),
            L.Dense(256, activation="relu", name="dense2"),
            L.Dense(128, activation="relu", name="dense3"),
            L.Dense(10, name="dense4"),
        ],
        name="mlp784",
    )


def mlp256():
    """MLP 64-256-128-64-10 (logits): compare_methods's smallest model."""
    return keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(256, activation="relu", name="dense1"),
            L.Dense(128, activation="relu", name="dense2"),
            L.Dense(64, activation="relu", name="dense3"),
            L.Dense(10, name="dense4"),
        ],
        name="mlp256",
    )


def readme_cnn():
    """The README's CNN: Conv32-Conv64-pool-Dense128-Dense10 on 28x28x1 (logits)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, 3, activation="relu", name="conv1"),
            L.Conv2D(64, 3, activation="relu", name="conv2"),
            L.MaxPooling2D(name="pool"),
            L.Flatten(name="flatten"),
            L.Dense(128, activation="relu", name="dense1"),
            L.Dense(10, name="dense2"),
        ],
        name="readme_cnn",
    )


def gap_cnn():
    """Conv16-pool-Conv32-GlobalAveragePooling-Dense10 on 28x28x1 (softmax output)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(16, 3, activation="relu", name="conv1"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(32, 3, activation="relu", name="conv2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, activation="softmax", name="output"),
        ],
        name="gap_cnn",
    )


def mobilenet_v2():
    """keras.applications.MobileNetV2, alpha 0.35, 32x32x3, 10 classes, softmax output."""
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )


def efficientnet_b0():
    """keras.applications.EfficientNetB0, 32x32x3, 10 classes, softmax output."""
    return keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10)


def resnet50():
    """keras.applications.ResNet50, 32x32x3, 10 classes, softmax output."""
    return keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)


def gemma(blocks=8, hidden=256, intermediate=1024, heads=4, head_dim=64, vocabulary=1024):
    """A keras_hub `Gemma3CausalLM` without preprocessor, one key/value head.

    The defaults are issue 19's Gemma-shaped decoder; the tests build a tiny one.
    """
    import keras_hub

    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=vocabulary, image_size=16, num_layers=blocks, num_query_heads=heads,
        num_key_value_heads=1, hidden_dim=hidden, intermediate_dim=intermediate,
        head_dim=head_dim, vision_encoder=None,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def llama(blocks=2, hidden=16, heads=4, kv_heads=2, vocabulary=20, sequence=6):
    """A keras_hub `LlamaCausalLM` without preprocessor (tiny by default)."""
    import keras_hub

    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=vocabulary, num_layers=blocks, num_query_heads=heads,
        num_key_value_heads=kv_heads, hidden_dim=hidden, intermediate_dim=2 * hidden,
        max_sequence_length=sequence,
    )
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def bert(blocks=2, hidden=32, heads=2, vocabulary=100, sequence=8):
    """A keras_hub `BertBackbone` (tiny by default: the text benchmark's)."""
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary, num_layers=blocks, num_heads=heads, hidden_dim=hidden,
        intermediate_dim=2 * hidden, max_sequence_length=sequence,
    )


def gpt2(blocks=2, hidden=32, heads=2, vocabulary=100, sequence=8):
    """A keras_hub `GPT2Backbone` (tiny by default: the text benchmark's)."""
    import keras_hub

    return keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, num_layers=blocks, num_heads=heads, hidden_dim=hidden,
        intermediate_dim=2 * hidden, max_sequence_length=sequence,
    )


def transformer_classifier(blocks=2, hidden=32, heads=2, vocabulary=100, sequence=8, classes=2):
    """A Keras Transformer classifier on token ids: `Embedding`, `blocks` x
    (`MultiHeadAttention`, Add, LayerNormalization, feed-forward `Dense`s,
    Add, LayerNormalization), global average pooling, `Dense(classes)` logits."""
    ids = keras.Input((sequence,), dtype="int32", name="token_ids")
    h = L.Embedding(vocabulary, hidden, name="token_embedding")(ids)
    for i in range(blocks):
        a = L.MultiHeadAttention(heads, hidden // heads, name=f"attention_{i}")(h, h)
        h = L.LayerNormalization(name=f"norm_{i}")(L.Add()([h, a]))
        f = L.Dense(2 * hidden, activation="relu", name=f"ffn_in_{i}")(h)
        f = L.Dense(hidden, name=f"ffn_out_{i}")(f)
        h = L.LayerNormalization(name=f"ffn_norm_{i}")(L.Add()([h, f]))
    out = L.Dense(classes, name="out")(L.GlobalAveragePooling1D()(h))
    return keras.Model(ids, out, name="transformer_classifier")


def with_head(backbone, classes=2):
    """A keras_hub backbone with a `Dense(classes)` logits head on its pooled
    output (BERT's) or its averaged sequence output (GPT-2's): a model that
    `train_on_batch` takes with integer labels."""
    output = backbone.output
    pooled = output["pooled_output"] if isinstance(output, dict) else L.GlobalAveragePooling1D()(output)
    return keras.Model(backbone.input, L.Dense(classes)(pooled))


def text_inputs(name, n, sequence, vocabulary, seed):
    """`n` random token sequences for `bert`, `gpt2` or `transformer_classifier`:
    ids in [1, vocabulary), the first half's last two positions padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary, (n, sequence)).astype("int32")
    mask = np.ones((n, sequence), "int32")
    mask[: n // 2, -2:] = 0
    if name == "transformer_classifier":
        return ids
    inputs = {"token_ids": ids, "padding_mask": mask}
    if name == "bert":
        inputs["segment_ids"] = np.zeros_like(ids)
    return inputs


def tokens(n, sequence, vocabulary, seed):
    """`{"token_ids", "padding_mask"}` of `n` unpadded random sequences."""
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, vocabulary, (n, sequence)).astype("int32"),
        "padding_mask": np.ones((n, sequence), "int32"),
    }


# name -> (builder, whether its output is logits)
MODELS = {
    "digits_mlp": (digits_mlp, False),
    "mlp784": (mlp784, True),
    "readme_cnn": (readme_cnn, True),
    "mobilenet_v2": (mobilenet_v2, False),
    "mlp256": (mlp256, True),
    "gap_cnn": (gap_cnn, False),
    "efficientnet_b0": (efficientnet_b0, False),
    "resnet50": (resnet50, False),
}


def probe(name, n, seed=1):
    """`n` probe samples for a model of `MODELS`: the digits' first rows for
    the digits MLP, uniform in [0, 1) otherwise."""
    if name == "digits_mlp":
        return digits()[0][:n]
    model_input = {"mlp784": (784,), "mlp256": (64,), "readme_cnn": (28, 28, 1), "gap_cnn": (28, 28, 1),
                   "mobilenet_v2": (32, 32, 3), "efficientnet_b0": (32, 32, 3), "resnet50": (32, 32, 3)}[name]
    return np.random.RandomState(seed).uniform(0.0, 1.0, (n, *model_input)).astype("float32")
