"""Rule for `Embedding`: the per-sample table gradient has one row per token.

Positions holding the same token add into the same row, so the squared norm
is `sum_{t, s: id_t = id_s} <g_t, g_s>`, a Gram form over positions.
"""

import tensorflow as tf

from keras_neuron_sensitivity.engine.base import Rule, plain_weights, shape_of


class EmbeddingRule(Rule):
    """`Embedding` (not quantized, no LoRA): inputs are ids, so no hop."""

    def applies(self, layer):
        return plain_weights(layer)

    def forward(self, site):
        (ids,) = site.inputs
        (y,) = site.run([ids])
        return [y], ids

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        if not (need_weights and site.layer.trainable):
            return None, None
        ids = tf.reshape(cache, [shape_of(cache)[0], -1])
        g = cotangents[0]
        k = g.shape[0]
        g = tf.reshape(g, [k, shape_of(ids)[0], -1, g.shape[-1]])
        same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
        gram = tf.einsum("knto,knso->knts", g, g)
        return None, tf.einsum("nts,knts->kn", same, gram)
