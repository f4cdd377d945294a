"""Rule for `Embedding`: the per-sample table gradient has one row per token.

Positions holding the same token add into the same row, so the squared norm
is `sum_{t, s: id_t = id_s} <g_t, g_s>`, a Gram form over positions.
"""

from keras import ops

from keras_neuron_sensitivity.engine.rules.base import Rule, plain_weights, shape_of


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
        return None, table_sqnorm(cache, cotangents[0])


def table_sqnorm(ids, g):
    """`(k, n)`: squared norm of a lookup table's per-sample gradient.

    Row `ids[n, t]` receives `g[k, n, t]`; positions holding the same id add
    into the same row, hence the Gram form over positions.

    Args:
        ids: `(n, ...)` integer ids, one per position.
        g: `(k, n, ..., o)` cotangents at the looked-up vectors.
    """
    ids = ops.reshape(ids, [shape_of(ids)[0], -1])
    k = g.shape[0]
    g = ops.reshape(g, [k, shape_of(ids)[0], -1, g.shape[-1]])
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    gram = ops.einsum("knto,knso->knts", g, g)
    return ops.einsum("nts,knts->kn", same, gram)
