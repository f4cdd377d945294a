"""Models for the tests of sites inside layers, on every backend (no
TensorFlow import here: `tests/backends` builds them on JAX and PyTorch).

Tiny keras_hub `LlamaCausalLM`, `Gemma3CausalLM` (`preprocessor=None`) and a
`ViTBackbone` classifier with random weights (2 blocks, nothing downloaded),
and a frozen base around a user layer that calls layers, one of them
trainable.
"""

import keras
import keras_hub
import numpy as np

from benchmarks import models

L = keras.layers
VOCAB, LENGTH, HIDDEN = 20, 6, 16
RNG = np.random.default_rng(3)


def _tokens(n=2):
    mask = np.ones((n, LENGTH), "int32")
    mask[0, -2:] = 0  # the first sample is padded
    return {"padding_mask": mask, "token_ids": RNG.integers(1, VOCAB, (n, LENGTH)).astype("int32")}


def llama():
    model = models.llama(blocks=2, hidden=HIDDEN, vocabulary=VOCAB, sequence=LENGTH)
    return model, _tokens()


def gemma3():
    model = models.gemma(
        blocks=2, hidden=HIDDEN, intermediate=2 * HIDDEN, heads=2, head_dim=8, vocabulary=VOCAB
    )
    return model, _tokens()


def vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3), patch_size=4, num_layers=2, num_heads=2,
        hidden_dim=HIDDEN, mlp_dim=2 * HIDDEN,
    )
    images = keras.Input((8, 8, 3))
    tokens = backbone(images)
    logits = L.Dense(3, name="head")(L.Lambda(lambda t: t[:, 0], name="class_token")(tokens))
    return keras.Model(images, logits), RNG.normal(size=(2, 8, 8, 3)).astype("float32")


class Block(L.Layer):
    """A user layer that calls layers: a gated feed-forward block."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.norm = L.LayerNormalization(name="norm")
        self.up = L.Dense(2 * width, name="up")
        self.gate = L.Dense(2 * width, activation="relu", name="gate")
        self.down = L.Dense(width, name="down")

    def call(self, x):
        h = self.norm(x)
        return x + self.down(self.up(h) * self.gate(h))


def frozen_base():
    x = keras.Input((4, 6))
    h = L.Dense(6, name="stem")(x)
    h = Block(6, name="block")(h)
    model = keras.Model(x, L.Dense(3, name="head")(L.Flatten()(h)))
    model.get_layer("stem").trainable = False
    block = model.get_layer("block")
    block.trainable = False
    block.gate.trainable = True  # one trainable layer inside a frozen one
    model.get_layer("head").trainable = False
    return model, RNG.normal(size=(3, 4, 6)).astype("float32")
