"""A small Transformer text classifier on raw strings, with the sensitivity callback.

Run with `python demos/text_transformer.py [LOG_DIR]` (under a minute). The
task: generated reviews of a dozen words, positive when they hold more
praising words than complaining ones. The model reads the strings itself
(on TensorFlow; JAX and PyTorch get token ids): TextVectorization -> Embedding + learned positions -> MultiHeadAttention
block -> pooling -> Dense. Strings have no derivative, so its sensitivity to
inputs is taken at the embedded input (the Embedding's output).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import print_summary  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

L = keras.layers
GOOD = ["great", "fine", "lovely", "superb", "tasty", "friendly"]
BAD = ["awful", "cold", "rude", "bland", "slow", "dirty"]
NEUTRAL = ["the", "food", "was", "and", "staff", "room", "very", "a", "bit", "service"]
LENGTH = 12


def data(n, seed=0):
    """Reviews as strings (object arrays, as `fit` takes them) and labels."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        good, bad = rng.integers(0, 4, 2)
        words = list(rng.choice(GOOD, good)) + list(rng.choice(BAD, bad))
        words += list(rng.choice(NEUTRAL, LENGTH - len(words)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(int(good > bad))
    return np.array(texts, dtype=object), np.array(labels)


class PositionEmbedding(L.Layer):
    """A learned vector per position, added to the token embeddings."""

    def __init__(self, length, dim, **kwargs):
        super().__init__(**kwargs)
        self.positions = L.Embedding(length, dim)

    def call(self, x):
        return x + self.positions(keras.ops.arange(keras.ops.shape(x)[1]))


def main(log_dir):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, _) = data(2000), data(128, seed=1)
    vectorize = L.TextVectorization(max_tokens=40, output_sequence_length=LENGTH, name="vectorize")
    vectorize.adapt(x_train)
    if keras.backend.backend() == "tensorflow":
        text = keras.Input((1,), dtype="string", name="review")
        ids = vectorize(text)
    else:
        # Only TensorFlow carries strings through a model: on JAX and
        # PyTorch the strings become token ids before the model.
        x_train, x_val = (keras.ops.convert_to_numpy(vectorize(x)) for x in (x_train, x_val))
        text = keras.Input((LENGTH,), dtype="int64", name="review")
        ids = text
    h = L.Embedding(40, 16, name="embedding")(ids)
    h = PositionEmbedding(LENGTH, 16, name="positions")(h)
    a = L.MultiHeadAttention(2, 8, name="attention")(h, h)
    h = L.LayerNormalization(name="norm")(L.Add()([h, a]))
    h = L.Dense(16, activation="relu", name="dense")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(text, L.Dense(1, activation="sigmoid", name="output")(h))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    # A probe as the model reads it (raw strings on TensorFlow).
    sensitivity = NeuronSensitivityCallback(x_val[:32], log_dir=log_dir, freq=2)
    model.fit(x_train, y_train, epochs=6, batch_size=64, verbose=2, callbacks=[sensitivity])
    print_summary(sensitivity, log_dir)
    print("\nSensitivity to inputs is taken at the embedding output (the embedded input).")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "text_transformer"))
