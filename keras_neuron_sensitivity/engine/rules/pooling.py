"""Rules for pooling layers: routes and spreads shared by every cotangent.

Max pooling passes each output's cotangent to one input element, the maximum
of its window; which one depends on the sample only, so the route is found
once in the forward pass and every cotangent of the sample follows it (a
scatter, no replay). Ties go where TensorFlow's own gradient sends them: to
the first maximum of the window in 1D and 2D; in 3D every tied maximum gets
the whole cotangent. Average pooling is
linear (see `linear.LinearRule`); the global poolings spread the cotangent
evenly, or over the tied maxima, per channel.
"""

import types

import numpy as np
from keras import ops
from keras.src.backend import get_keras_mask

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import (
    Rule,
    concat_shapes,
    shape_of,
)
from keras_neuron_sensitivity.engine.rules.conv import unfold


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


class MaxPoolingRule(Rule):
    """`MaxPooling1D/2D/3D`, channels last."""

    def applies(self, layer):
        return _channels_last(layer) and layer.padding in ("valid", "same")

    def forward(self, site):
        (x,) = site.inputs
        (y,) = site.run([x])
        argmax = backend.max_pool_argmax(site.layer, x)
        if argmax is not None:  # a faster kernel of the backend's
            return [y], (argmax, None, None)
        return [y], (None, *_routes(site.layer, x))

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        (x,) = site.inputs
        argmax, positions, shares = cache
        if argmax is not None:
            return [backend.max_pool_argmax_hop(site.layer, cotangents[0], argmax, x)], None
        return [_route(cotangents[0], positions, shares, x)], None


def _windows(layer, x):
    """`(n, t, w, c)`: the pooling window of each output position."""
    rank, size = len(layer.pool_size), int(np.prod(layer.pool_size))
    window = types.SimpleNamespace(
        rank=rank,
        kernel_size=layer.pool_size,
        strides=layer.strides,
        dilation_rate=(1,) * rank,
        padding=layer.padding,
    )
    patches = unfold(window, x)
    return ops.reshape(patches, concat_shapes(shape_of(x)[:1], [-1, size, x.shape[-1]]))


def _routes(layer, x):
    """Where each output's cotangent goes: input positions and their shares.

    Returns `(positions, shares)`. In 1D and 2D, `positions` is `(n, t, 1, c)`:
    the (flattened spatial) input position of each output's maximum, the
    first of tied maxima as TensorFlow's gradient takes it; `shares` is None.
    In 3D TensorFlow's reference gradient gives the whole cotangent to every
    tied maximum (its oneDNN kernel, used in compiled graphs on CPU, picks
    one instead; the eager, reference behaviour is the one kept here):
    `positions` is `(1, t, w, 1)`, every element of the window, and `shares`
    `(n, t, w, c)` is 1 on the maxima, else 0.
    """
    spatial = shape_of(x)[1:-1]
    # 1-based input positions, 0 where a window hangs over the edge (float32
    # holds them exactly up to 2**24 positions per sample).
    index = ops.reshape(
        ops.arange(1, int(np.prod(spatial)) + 1, dtype="float32"), [1, *spatial, 1]
    )
    index = _windows(layer, index)[0, :, :, 0]  # (t, w)
    inside = index[None, :, :, None] > 0
    patches = ops.where(inside, _windows(layer, x), ops.full((), -np.inf, dtype=x.dtype))
    if len(spatial) == 3:
        best = ops.max(patches, 2, keepdims=True)
        shares = ops.cast(ops.equal(patches, best) & inside, x.dtype)
        positions = ops.cast(ops.maximum(index - 1, 0), "int32")
        return positions[None, :, :, None], shares
    best = ops.cast(ops.argmax(patches, axis=2), "int32")  # (n, t, c)
    t = ops.arange(index.shape[0], dtype="int32")[None, :, None]
    found = ops.take(ops.reshape(index, [-1]), t * index.shape[1] + best, axis=0)
    return ops.cast(found, "int32")[:, :, None, :] - 1, None


def _route(g, positions, shares, x):
    """Cotangents `(k, n, *out, c)` sent along the routes, to `(k, n, *x)`."""
    k = g.shape[0]
    n, channels = shape_of(x)[0], x.shape[-1]
    spatial = int(np.prod(x.shape[1:-1]))
    rows = k * n
    if positions.shape[0] != 1:
        positions = ops.tile(positions, [k, 1, 1, 1])
    row = ops.arange(rows, dtype="int32")[:, None, None, None]  # row j * n + m
    ids = (row * spatial + positions) * channels + ops.arange(channels, dtype="int32")
    values = ops.reshape(g, [rows, -1, 1, channels])
    if shares is not None:
        values = values * ops.tile(shares, [k, 1, 1, 1])
    ids = ops.broadcast_to(ids, shape_of(values))
    hop = ops.segment_sum(
        ops.reshape(values, [-1]), ops.reshape(ids, [-1]), rows * spatial * channels
    )
    return ops.reshape(hop, concat_shapes([k], shape_of(x)))


class GlobalAveragePoolingRule(Rule):
    """`GlobalAveragePooling1D/2D/3D`, channels last, with or without a mask.

    Each position gets `g / t` (with a mask: `g / count` on kept positions).
    """

    def applies(self, layer):
        return _channels_last(layer)

    def forward(self, site):
        (y,) = site.run(site.inputs)
        x = site.inputs[0]
        # The mask: an argument, or a Keras mask set on the input at run time
        # (keras_hub's embeddings with `mask_zero` set one).
        mask = site.inputs[1] if len(site.inputs) > 1 else get_keras_mask(x)
        if mask is None:
            return [y], None
        keep = ops.cast(ops.reshape(mask, [shape_of(x)[0], -1, 1]), x.dtype)
        return [y], keep / ops.sum(keep, 1, keepdims=True)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        x = site.inputs[0]
        g = cotangents[0]
        k, channels = g.shape[0], g.shape[-1]
        g = ops.reshape(g, concat_shapes([k], shape_of(x)[:1], [1, channels]))
        if cache is None:
            positions = int(np.prod(x.shape[1:-1]))
            hop = ops.broadcast_to(
                g / positions, concat_shapes([k], shape_of(x)[:1], [positions, channels])
            )
        else:
            hop = g * cache
        hop = ops.reshape(hop, concat_shapes([k], shape_of(x)))
        return [hop] + [None] * (len(site.inputs) - 1), None


class GlobalMaxPoolingRule(Rule):
    """`GlobalMaxPooling1D/2D/3D`, channels last: a gather of each channel's max.

    TensorFlow's gradient of a maximum over positions shares the cotangent
    equally among tied maxima; the shares are fixed per sample and cached.
    """

    def applies(self, layer):
        return _channels_last(layer)

    def forward(self, site):
        (x,) = site.inputs
        (y,) = site.run([x])
        flat = ops.reshape(x, [shape_of(x)[0], -1, x.shape[-1]])
        tied = ops.cast(
            ops.equal(flat, ops.max(flat, 1, keepdims=True)), x.dtype
        )
        return [y], tied / ops.sum(tied, 1, keepdims=True)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        (x,) = site.inputs
        g = cotangents[0]
        k, channels = g.shape[0], g.shape[-1]
        g = ops.reshape(g, concat_shapes([k], shape_of(x)[:1], [1, channels]))
        return [ops.reshape(g * cache, concat_shapes([k], shape_of(x)))], None
