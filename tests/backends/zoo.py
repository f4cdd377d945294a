"""The models every backend is checked on, built the same way on each.

Imported by the backend tests (`KERAS_BACKEND=jax` or `torch`) and by
`workers/tf_reference.py` (TensorFlow), so the three backends see the same
architecture; the weights travel in a `.weights.h5` file. Nothing here imports
the package.
"""

import keras
import numpy as np


def cnn():
    """Conv2D, BatchNormalization, ReLU, MaxPooling, Dense: the issue's CNN."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, activation="tanh", name="dense"),
            keras.layers.Dense(3, name="head"),
        ],
        name="cnn",
    )
    # Moving statistics away from 0 and 1, so inference-mode BN is tested.
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(size=4).astype("float32") * 0.3)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=4).astype("float32"))
    return model


def text():
    """Embedding + LSTM + Dense on token ids: sensitivity to inputs is read at
    the embedding's output."""
    return keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(20, 4, name="embedding"),
            keras.layers.LSTM(5, name="lstm"),
            keras.layers.Dense(3, activation="tanh", name="dense"),
        ],
        name="text",
    )


class Subclassed(keras.Model):
    """A subclassed model whose `call` chains layers (recorded, replayed)."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(6, activation="relu", name="hidden")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


def two_inputs():
    """Two float inputs, concatenated, GELU and LayerNormalization."""
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Dense(5, activation="gelu", name="dense")(a)
    h = keras.layers.Concatenate(name="concat")([h, b])
    h = keras.layers.LayerNormalization(name="norm")(h)
    return keras.Model([a, b], keras.layers.Dense(2, name="head")(h), name="two_inputs")


def mixed_precision():
    """Built under `mixed_float16`: computed in float32 from float32 weights."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(5, activation="sigmoid", name="dense"),
                keras.layers.Dense(2, name="head"),
            ],
            name="mixed_precision",
        )
    finally:
        keras.config.set_dtype_policy(policy)


def convolutions():
    """Depthwise, separable and 1-D convolutions, a GRU, global pooling."""
    image = keras.Input((6, 6, 3), name="image")
    h = keras.layers.DepthwiseConv2D(3, name="depthwise")(image)
    h = keras.layers.SeparableConv2D(4, 3, activation="relu", name="separable")(h)
    h = keras.layers.Reshape((4, 1), name="reshape")(keras.layers.GlobalMaxPooling2D()(h))
    h = keras.layers.Conv1D(3, 2, name="conv1d")(h)
    h = keras.layers.GRU(4, name="gru")(h)
    return keras.Model(image, keras.layers.Dense(2, name="head")(h), name="convolutions")


def graph_features():
    """A nested model, a layer called twice, plain Keras ops between layers."""
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh", name="a")], name="inner"
    )
    x = keras.Input((4,))
    shared = keras.layers.Dense(5, activation="tanh", name="shared")
    h = shared(shared(inner(x)))
    h = keras.ops.tanh(h * 2.0) + h
    return keras.Model(x, keras.layers.Dense(2, name="out")(h), name="graph_features")


def masked_sequence():
    """A masking Embedding, a Bidirectional GRU, a Dense on the sequence,
    then attention."""
    ids = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True, name="embedding")(ids)
    h = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True), name="bi")(h)
    h = keras.layers.Dense(6, activation="tanh", name="proj")(h)  # passes the mask on
    a = keras.layers.MultiHeadAttention(2, 3, name="attention")(h, h)
    h = keras.layers.LayerNormalization(name="norm")(keras.layers.Add()([h, a]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(2, name="out")(h), name="masked_sequence")


def dense_sequence():
    """Dense layers on sequences: fewer positions than features (5 < 8), more
    (5 > 4), and without a bias."""
    x = keras.Input((5, 8))
    h = keras.layers.Dense(4, activation="relu", name="wide")(x)
    h = keras.layers.Dense(3, use_bias=False, name="narrow")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h), name="dense_sequence")


MODELS = {
    "cnn": cnn,
    "text": text,
    "subclassed": subclassed,
    "two_inputs": two_inputs,
    "mixed_precision": mixed_precision,
    "convolutions": convolutions,
    "graph_features": graph_features,
    "masked_sequence": masked_sequence,
    "dense_sequence": dense_sequence,
}


def probe(name, batch=3):
    """The probe batch: an array, or a list of arrays for `two_inputs`."""
    rng = np.random.default_rng(2)
    if name == "text":
        return rng.integers(0, 20, size=(batch, 7)).astype("int32")
    if name == "masked_sequence":
        ids = rng.integers(1, 10, size=(batch, 6)).astype("int32")
        ids[:, 4:] = 0  # padding, masked
        ids[0, 2:] = 0
        return ids
    if name == "two_inputs":
        return [rng.normal(size=(batch, 4)).astype("float32"),
                rng.normal(size=(batch, 3)).astype("float32")]
    if name in ("subclassed", "mixed_precision", "graph_features"):
        return rng.normal(size=(batch, 4)).astype("float32")
    if name == "dense_sequence":
        return rng.normal(size=(batch, 5, 8)).astype("float32")
    if name == "convolutions":
        return rng.normal(size=(batch, 6, 6, 3)).astype("float32")
    return rng.normal(size=(batch, 6, 6, 2)).astype("float32")


def train_data():
    """48 samples for the CNN, 3 classes."""
    rng = np.random.default_rng(6)
    return rng.normal(size=(48, 6, 6, 2)).astype("float32"), rng.integers(0, 3, size=48)
