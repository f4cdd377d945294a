"""Rules for attention: `MultiHeadAttention` and keras_hub's transformer layers.

A `MultiHeadAttention` call is replayed step by step from its own sub-layers
(query, key and value projections, scaled dot products, softmax, output
projection), keeping every intermediate tensor; cotangents then go back
through each step in closed form. Each projection is an `EinsumDense` applied
at every position, so its per-sample weight gradient is a sum over positions
of outer products and its squared norm comes from `base.outer_sqnorm`, as for
`Dense` on sequences. No per-row loop, no weight gradient is formed.

keras_hub's `TransformerEncoder` and `TransformerDecoder` (without cross-
attention) are one layer each in a model, with one key and one set of
neurons (their output). Their rules walk the layer's sub-layers in the order
its `call` does (attention, residual, layer norms, feed-forward `Dense`s),
using each sub-layer's own rule, and add the sub-layers' weight terms: each
weight belongs to exactly one sub-layer, called once. Expanding them into
separate calls of the model's graph instead would change the model's layer
keys and neurons, and their `call` computes between sub-layers (residuals,
masks) what a graph of layer calls cannot hold.

Index letters: `k` neuron (cotangent), `n` sample, `t` query position, `s`
key/value position, `h` head, `e` key feature per head, `f` value feature per
head, `i` feature in, `o` feature out.
"""

import inspect
import sys

import keras
from keras import ops
from keras.src.backend import get_keras_mask, set_keras_mask

from keras_neuron_sensitivity.engine.rules import table
from keras_neuron_sensitivity.engine.rules.base import (
    GENERIC_RULE,
    Rule,
    concat_shapes,
    outer_sqnorm,
    plain_weights,
    shape_of,
)
from keras_neuron_sensitivity.engine.site import Call, Site

_MHA = keras.layers.MultiHeadAttention


# --- one attention, step by step ----------------------------------------------


def attention_supported(layer):
    """Whether `attend` replays this attention exactly: Keras's own attention
    computation on `(batch, positions, features)` tensors, no gate, plain
    projections."""
    cls = type(layer)
    projections = (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
    return (
        layer.built
        and cls._compute_attention is _MHA._compute_attention
        and cls._masked_softmax is _MHA._masked_softmax
        and not getattr(layer, "_use_gate", False)
        and tuple(layer._attention_axes or ()) == (1,)
        and layer._query_dense.equation == "abc,cde->abde"
        and layer._key_dense.equation == "abc,cde->abde"
        and layer._value_dense.equation == "abc,cde->abde"
        and layer._output_dense.equation == "abcd,cde->abe"
        and all(plain_weights(d) and _is_linear(d.activation) for d in projections)
    )


def _is_linear(fn):
    return fn is None or getattr(fn, "__name__", None) == "linear"


def attend(layer, query, value, key, mask):
    """Replays `layer`'s attention on projected inputs; returns `(y, cache)`.

    Args:
        layer: a `MultiHeadAttention` (or a subclass with its computation).
        query: `(n, t, i)`; value, key: `(n, s, i)`.
        mask: the boolean attention mask, `(n or 1, t, s)`, or None.
    """
    q = layer._query_dense(_unmasked(query))  # (n, t, h, e)
    k = layer._key_dense(_unmasked(key))
    v = layer._value_dense(_unmasked(value))
    logits = ops.einsum("nthe,nshe->nhts", q, k) * ops.cast(layer._inverse_sqrt_key_dim, q.dtype)
    if mask is not None:
        mask = ops.cast(mask, "bool")[:, None]  # (n, 1, t, s): every head
        logits = ops.where(mask, logits, _large_negative(logits.dtype))
    probs = ops.softmax(logits, axis=-1)
    attended = _dropped_masked(layer, probs, mask)
    o = ops.einsum("nhts,nshf->nthf", attended, v)
    y = layer._output_dense(o)
    return y, (query, key, value, q, k, v, probs, mask, o)


def _unmasked(x):
    """`x` without its Keras mask (the attention has used it), so that the
    projections do not warn that they drop it, as `MultiHeadAttention.call`
    does by clearing it."""
    return ops.copy(x) if get_keras_mask(x) is not None else x


def _large_negative(dtype):
    # As Keras's own masking: far below any logit, finite.
    dtype = keras.backend.standardize_dtype(dtype)
    return ops.convert_to_tensor(-1e9 if dtype != "float16" else -3e4, dtype)


def _dropped_masked(layer, probs, mask):
    """The probabilities the values are averaged with. With dropout (off in
    inference, but it decides the path), Keras computes them with its
    `Softmax` layer, which zeroes masked entries even in a row masked
    entirely; without, `dot_product_attention` leaves such a row uniform."""
    if mask is None or layer._dropout <= 0.0:
        return probs
    return ops.where(mask, probs, ops.zeros_like(probs))


def attend_backward(layer, cache, g, trainable, need_inputs):
    """Cotangents `(k, n, t, o)` at the output -> at query, value and key.

    Args:
        trainable: ids of the variables whose weight terms are wanted.

    Returns:
        `((g_query, g_value, g_key), weight_sqnorm)`; the input cotangents are
        None when not `need_inputs`, the weight term None when no variable of
        the attention is in `trainable`.
    """
    query, key, value, q, k_, v, probs, mask, o = cache
    scale = ops.cast(layer._inverse_sqrt_key_dim, q.dtype)
    out = layer._output_dense
    terms = [_projection_sqnorm(out, _merge_heads(o), g, trainable)]
    go = ops.einsum("knto,hfo->knthf", g, out.kernel)
    gp = ops.einsum("knthf,nshf->knhts", go, v)
    if mask is not None and layer._dropout > 0.0:
        gp = ops.where(mask, gp, ops.zeros_like(gp))
    gl = probs * (gp - ops.sum(gp * probs, -1, keepdims=True))
    if mask is not None:  # masked logits are constants
        gl = ops.where(mask, gl, ops.zeros_like(gl))
    gv = ops.einsum("nhts,knthf->knshf", _dropped_masked(layer, probs, mask), go)
    gq = ops.einsum("knhts,nshe->knthe", gl, k_) * scale
    gk = ops.einsum("knhts,nthe->knshe", gl, q) * scale
    for dense, x, gz in (
        (layer._query_dense, query, gq),
        (layer._key_dense, key, gk),
        (layer._value_dense, value, gv),
    ):
        terms.append(_projection_sqnorm(dense, x, _merge_heads(gz), trainable))
    terms = [t for t in terms if t is not None]
    sqnorm = sum(terms) if terms else None
    if not need_inputs:
        return (None, None, None), sqnorm
    return (
        ops.einsum("knthe,ihe->knti", gq, layer._query_dense.kernel),
        ops.einsum("knshf,ihf->knsi", gv, layer._value_dense.kernel),
        ops.einsum("knshe,ihe->knsi", gk, layer._key_dense.kernel),
    ), sqnorm


def _merge_heads(x):
    """`(..., t, h, e)` -> `(..., t, h * e)`."""
    shape = shape_of(x)
    return ops.reshape(x, concat_shapes(shape[:-2], [x.shape[-2] * x.shape[-1]]))


def _projection_sqnorm(dense, u, g, trainable):
    """`EinsumDense` at every position: `||sum_t u_t (x) g_t||^2` for the
    kernel, `||sum_t g_t||^2` for the bias (summed over the kept ones)."""
    total = None
    if id(dense.kernel) in trainable:
        total = outer_sqnorm(u, g)
    if dense.bias is not None and id(dense.bias) in trainable:
        bias = ops.sum(ops.square(ops.sum(g, 2)), -1)
        total = bias if total is None else total + bias
    return total


def keras_attention_mask(layer, query, value, key, masks, attention_mask, use_causal_mask):
    """The boolean mask `MultiHeadAttention.call` computes: from the Keras
    masks of its tensors (`masks`: query, value, key), the explicit
    `attention_mask`, and the causal mask; None when nothing is masked."""
    query_mask, value_mask, key_mask = masks
    if (
        use_causal_mask
        and attention_mask is None
        and all(m is None for m in masks)
        and layer._sliding_window is None
    ):
        return layer._compute_causal_mask(query, value)  # Keras's causal path
    return layer._compute_attention_mask(
        query,
        value,
        query_mask=query_mask,
        value_mask=value_mask,
        key_mask=key_mask,
        attention_mask=attention_mask,
        use_causal_mask=use_causal_mask,
    )


def bound_arguments(site):
    """The call's arguments by name, defaults included."""
    args, kwargs = site.arguments(site.inputs)
    bound = inspect.signature(type(site.layer).call).bind(site.layer, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _by_position(site, roles):
    """One cotangent per entry of `site.inputs` from `[(tensor, cotangent)]`:
    a tensor passed in several places (`attention(x, x)`) gets their sum,
    once, at its first place."""
    result = [None] * len(site.inputs)
    for tensor, g in roles:
        if g is None or tensor is None:
            continue
        j = next(j for j, x in enumerate(site.inputs) if x is tensor)
        result[j] = g if result[j] is None else result[j] + g
    return result


def _trainable(site, need_weights):
    """Ids of the variables whose weight terms are wanted."""
    return {id(v) for v in site.weights} if need_weights else set()


# --- rules ----------------------------------------------------------------------


class MultiHeadAttentionRule(Rule):
    """`keras.layers.MultiHeadAttention` on sequences: closed form per step.

    A call that returns its attention scores goes through the generic rule.
    """

    def applies(self, layer):
        return attention_supported(layer)

    def needs_generic(self, a):
        """Whether this call (its arguments `a`) is one `attend` does not replay."""
        return bool(a["return_attention_scores"])

    def attention_mask(self, layer, a, key):
        """The boolean mask the layer's `call` computes from its arguments."""
        query, value = a["query"], a["value"]
        # As Keras's `__call__` fills them, from the tensors' Keras masks.
        masks = (
            get_keras_mask(query),
            a["value_mask"] if a["value_mask"] is not None else get_keras_mask(value),
            a["key_mask"] if a["key_mask"] is not None or a["key"] is None else get_keras_mask(key),
        )
        return keras_attention_mask(
            layer, query, value, key, masks, a["attention_mask"], a["use_causal_mask"]
        )

    def forward(self, site):
        a = bound_arguments(site)
        if self.needs_generic(a):
            return GENERIC_RULE.forward(site)
        key = a["value"] if a["key"] is None else a["key"]
        query_mask = get_keras_mask(a["query"])
        y, cache = attend(site.layer, a["query"], a["value"], key, self.attention_mask(site.layer, a, key))
        if query_mask is not None:  # as Keras: the output keeps the query's mask
            set_keras_mask(y, query_mask)
        return [y], cache

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        a = bound_arguments(site)
        if self.needs_generic(a):
            return GENERIC_RULE.backward(site, cache, cotangents, need_inputs, need_weights)
        (gq, gv, gk), sqnorm = attend_backward(
            site.layer, cache, cotangents[0], _trainable(site, need_weights), need_inputs
        )
        if not need_inputs:
            return None, sqnorm
        key = a["value"] if a["key"] is None else a["key"]
        return _by_position(site, [(a["query"], gq), (a["value"], gv), (key, gk)]), sqnorm


class CachedMultiHeadAttentionRule(MultiHeadAttentionRule):
    """keras_hub's `CachedMultiHeadAttention` without a cache: the same
    computation, masked by its `attention_mask` argument only."""

    def needs_generic(self, a):
        return super().needs_generic(a) or a["cache"] is not None

    def attention_mask(self, layer, a, key):
        return a["attention_mask"]


class _Steps:
    """A composite layer's sub-layer calls, each run through its own rule."""

    def __init__(self, site, need_weights):
        self.site = site
        self.trainable = _trainable(site, need_weights)

    def sub_site(self, layer, x):
        call = Call(layer, f"{self.site.key}/{layer.name}", (0,), (1,))
        need = any(id(v) in self.trainable for v in layer.trainable_weights)
        return Site(call, [x], need_weights=need)

    def forward(self, layer, x):
        """`(y, (x, cache))` of one sub-layer called on `x`."""
        site = self.sub_site(layer, x)
        (y,), cache = table.rule_for(layer).forward(site)
        return y, (x, cache)

    def backward(self, layer, saved, g):
        """`(g_x, weight_sqnorm or None)` of one sub-layer."""
        x, cache = saved
        site = self.sub_site(layer, x)
        cots, sq = table.rule_for(layer).backward(site, cache, [g], True, site.need_weights)
        return cots[0], sq


def _sum(terms):
    terms = [t for t in terms if t is not None]
    return sum(terms) if terms else None


def _sub_rules_exact(layers):
    return all(table.rule_for(layer) is not GENERIC_RULE for layer in layers)


class _TransformerRule(Rule):
    """A pre- or post-norm transformer block with self-attention only."""

    sequence_argument = None  # the name of `call`'s sequence argument

    def attention_parts(self, layer, a):
        """`(attention layer, sequence, the block's mask, query Keras mask)`."""
        raise NotImplementedError

    def attention_mask(self, attention, x, masks, mask):
        """The mask the block's attention computes from the block's mask and
        the Keras masks (query, value, key) its `__call__` would fill."""
        raise NotImplementedError

    def unsupported(self, a):
        """Whether this call needs the generic rule (caches, scores, ...)."""
        raise NotImplementedError

    def applies(self, layer):
        attention = layer._self_attention_layer
        return (
            layer.built
            and attention_supported(attention)
            and _sub_rules_exact(
                [
                    layer._self_attention_layer_norm,
                    layer._feedforward_layer_norm,
                    layer._feedforward_intermediate_dense,
                    layer._feedforward_output_dense,
                ]
            )
        )

    def forward(self, site):
        a = bound_arguments(site)
        if self.unsupported(a):
            return GENERIC_RULE.forward(site)
        layer, steps = site.layer, _Steps(site, site.need_weights)
        attention, x, mask, query_mask = self.attention_parts(layer, a)
        first_norm, second_norm = layer._self_attention_layer_norm, layer._feedforward_layer_norm
        saved = {}
        residual = x
        if layer.normalize_first:
            x, saved["norm_1"] = steps.forward(first_norm, x)
        masks = (query_mask, query_mask, None)
        attention_mask = self.attention_mask(attention, x, masks, mask)
        x, saved["attention"] = attend(attention, x, x, x, attention_mask)
        x = x + residual
        if not layer.normalize_first:
            x, saved["norm_1"] = steps.forward(first_norm, x)
        residual = x
        if layer.normalize_first:
            x, saved["norm_2"] = steps.forward(second_norm, x)
        x, saved["dense_1"] = steps.forward(layer._feedforward_intermediate_dense, x)
        x, saved["dense_2"] = steps.forward(layer._feedforward_output_dense, x)
        x = x + residual
        if not layer.normalize_first:
            x, saved["norm_2"] = steps.forward(second_norm, x)
        sequence = a[self.sequence_argument]
        if get_keras_mask(sequence) is not None:  # Keras passes it through
            set_keras_mask(x, get_keras_mask(sequence))
        return [x], saved

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        a = bound_arguments(site)
        if self.unsupported(a):
            return GENERIC_RULE.backward(site, cache, cotangents, need_inputs, need_weights)
        layer, steps, saved = site.layer, _Steps(site, need_weights), cache
        first_norm, second_norm = layer._self_attention_layer_norm, layer._feedforward_layer_norm
        g, terms = cotangents[0], []
        if not layer.normalize_first:
            g, sq = steps.backward(second_norm, saved["norm_2"], g)
            terms.append(sq)
        g_residual = g
        g, sq = steps.backward(layer._feedforward_output_dense, saved["dense_2"], g)
        terms.append(sq)
        g, sq = steps.backward(layer._feedforward_intermediate_dense, saved["dense_1"], g)
        terms.append(sq)
        if layer.normalize_first:
            g, sq = steps.backward(second_norm, saved["norm_2"], g)
            terms.append(sq)
        g = g + g_residual
        if not layer.normalize_first:
            g, sq = steps.backward(first_norm, saved["norm_1"], g)
            terms.append(sq)
        g_residual = g
        (gq, gv, gk), sq = attend_backward(
            layer._self_attention_layer, saved["attention"], g, steps.trainable, True
        )
        terms.append(sq)
        g = gq + gv + gk
        if layer.normalize_first:
            g, sq = steps.backward(first_norm, saved["norm_1"], g)
            terms.append(sq)
        g = g + g_residual
        sqnorm = _sum(terms) if need_weights else None
        if not need_inputs:
            return None, sqnorm
        return _by_position(site, [(a[self.sequence_argument], g)]), sqnorm


class TransformerEncoderRule(_TransformerRule):
    """keras_hub's `TransformerEncoder`."""

    sequence_argument = "inputs"

    def unsupported(self, a):
        return bool(a["return_attention_scores"])

    def attention_parts(self, layer, a):
        merge = _module_function(layer, "merge_padding_and_attention_mask")
        x = a["inputs"]
        mask = merge(x, a["padding_mask"], a["attention_mask"])
        # The attention's query is the encoder's input (or its layer norm,
        # which keeps the Keras mask): Keras's `__call__` gives the attention
        # that mask as query and value mask.
        return layer._self_attention_layer, x, mask, get_keras_mask(x)

    def attention_mask(self, attention, x, masks, mask):
        return keras_attention_mask(attention, x, x, x, masks, mask, False)


class TransformerDecoderRule(_TransformerRule):
    """keras_hub's `TransformerDecoder` without cross-attention or cache."""

    sequence_argument = "decoder_sequence"

    def applies(self, layer):
        return getattr(layer, "_cross_attention_layer", None) is None and super().applies(layer)

    def unsupported(self, a):
        return (
            a["encoder_sequence"] is not None
            or a["self_attention_cache"] is not None
            or a["cross_attention_cache"] is not None
        )

    def attention_parts(self, layer, a):
        x = a["decoder_sequence"]
        mask = layer._compute_self_attention_mask(
            decoder_sequence=x,
            decoder_padding_mask=a["decoder_padding_mask"],
            decoder_attention_mask=a["decoder_attention_mask"],
            use_causal_mask=a["use_causal_mask"],
            self_attention_cache=None,
            self_attention_cache_update_index=None,
        )
        return layer._self_attention_layer, x, mask, None

    def attention_mask(self, attention, x, masks, mask):
        return mask  # a `CachedMultiHeadAttention`: its argument, as given


def _module_function(layer, name):
    """A function of the module that defines the layer's class (keras_hub's
    own mask helpers, so that the masks are the layer's, not a copy)."""
    return getattr(sys.modules[type(layer).__module__], name)
