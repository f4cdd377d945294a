"""Rules for the embeddings of language models.

`ReversibleEmbedding` (Keras) looks tokens up, or, called with
`reverse=True`, turns hidden states into logits with the same table (GPT-2's
output layer); keras_hub's `PositionEmbedding` adds a learned vector per
position and `TokenAndPositionEmbedding` both. Looking rows up gives a
per-sample table gradient whose squared norm is `embedding.table_sqnorm`;
the reverse call is a `Dense` without bias at every position.
"""

from keras import ops

from keras_neuron_sensitivity.engine.rules.attention import bound_arguments
from keras_neuron_sensitivity.engine.rules.base import Rule, outer_sqnorm, plain_weights, shape_of
from keras_neuron_sensitivity.engine.rules.embedding import table_sqnorm


def _counted(site, need_weights, variable):
    """Whether this variable's weight term is wanted at this site."""
    return need_weights and any(v is variable for v in site.weights)


class ReversibleEmbeddingRule(Rule):
    """`ReversibleEmbedding`: a lookup, or logits `h E^T` when reversed."""

    def applies(self, layer):
        return (
            plain_weights(layer)
            and getattr(layer, "logit_soft_cap", None) is None
            and getattr(layer, "reverse_dtype", None) in (None, layer.compute_dtype)
        )

    def forward(self, site):
        (x,) = site.inputs[:1]
        return site.run(site.inputs), x  # ids, or the hidden states

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer, g = site.layer, cotangents[0]
        if not bound_arguments(site)["reverse"]:
            counted = _counted(site, need_weights, layer.embeddings)
            return None, (table_sqnorm(cache, g) if counted else None)
        table = layer.embeddings if layer.tie_weights else layer.reverse_embeddings
        sqnorm = None
        if _counted(site, need_weights, table):
            sqnorm = outer_sqnorm(_positions_first(cache), _positions_first(g, cotangent=True))
        input_cots = None
        if need_inputs:
            # logits = h E^T (tied: E is (vocabulary, features)) or h R.
            pattern = "kn...v,vi->kn...i" if layer.tie_weights else "kn...v,iv->kn...i"
            input_cots = [ops.einsum(pattern, g, table)] + [None] * (len(site.inputs) - 1)
        return input_cots, sqnorm


def _positions_first(x, cotangent=False):
    """`(n, ..., c)` -> `(n, t, c)`, or `(k, n, ..., c)` -> `(k, n, t, c)`."""
    lead = 2 if cotangent else 1
    shape = shape_of(x)
    return ops.reshape(x, list(shape[:lead]) + [-1, x.shape[-1]])


def _positions(length, arguments):
    """`(n or 1, t)`: the table row each of `length` positions reads (from
    `start_index` on, or as the `positions` argument says)."""
    if arguments.get("positions") is not None:
        positions = ops.convert_to_tensor(arguments["positions"])
        return positions if len(positions.shape) == 2 else positions[None]
    start = ops.cast(arguments.get("start_index") or 0, "int32")
    return (start + ops.arange(length, dtype="int32"))[None]


class PositionEmbeddingRule(Rule):
    """keras_hub's `PositionEmbedding`: its output does not depend on its
    input's values, only on its shape, so nothing flows back through it."""

    def forward(self, site):
        a = bound_arguments(site)
        # Its input is a sequence of vectors: positions on the second last axis.
        return site.run(site.inputs), _positions(a["inputs"].shape[-2], a)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        if not _counted(site, need_weights, site.layer.position_embeddings):
            return None, None
        positions = ops.broadcast_to(cache, shape_of(g)[1:3])
        return None, table_sqnorm(positions, g)


class TokenAndPositionEmbeddingRule(Rule):
    """keras_hub's `TokenAndPositionEmbedding`: token rows plus position rows."""

    def applies(self, layer):
        return plain_weights(layer.token_embedding)

    def forward(self, site):
        a = bound_arguments(site)
        ids = a["inputs"]
        return site.run(site.inputs), (ids, _positions(ids.shape[-1], a))

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer, g = site.layer, cotangents[0]
        ids, positions = cache
        terms = []
        if _counted(site, need_weights, layer.token_embedding.embeddings):
            terms.append(table_sqnorm(ids, g))
        if _counted(site, need_weights, layer.position_embedding.position_embeddings):
            positions = ops.broadcast_to(positions, shape_of(g)[1:3])
            terms.append(table_sqnorm(positions, g))
        return None, (sum(terms) if terms else None)
