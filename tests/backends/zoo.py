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


MODELS = {"cnn": cnn, "text": text}


def probe(name, batch=3):
    rng = np.random.default_rng(2)
    if name == "text":
        return rng.integers(0, 20, size=(batch, 7)).astype("int32")
    return rng.normal(size=(batch, 6, 6, 2)).astype("float32")


def train_data():
    """48 samples for the CNN, 3 classes."""
    rng = np.random.default_rng(6)
    return rng.normal(size=(48, 6, 6, 2)).astype("float32"), rng.integers(0, 3, size=48)
