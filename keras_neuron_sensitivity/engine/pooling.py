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
import tensorflow as tf
from keras.src.backend import get_keras_mask

from keras_neuron_sensitivity.engine.base import (
    Rule,
    concat_shapes,
    shape_of,
)
from keras_neuron_sensitivity.engine.conv import unfold


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


class MaxPoolingRule(Rule):
    """`MaxPooling1D/2D/3D`, channels last."""

    def applies(self, layer):
        return _channels_last(layer) and layer.padding in ("valid", "same")

    def forward(self, site):
        (x,) = site.inputs
        (y,) = site.run([x])
        if len(site.layer.pool_size) < 3:
            return [y], _argmax(site.layer, x)
        return [y], _routes(site.layer, x)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        (x,) = site.inputs
        if len(site.layer.pool_size) < 3:
            return [_route_argmax(site.layer, cotangents[0], cache, x)], None
        positions, shares = cache
        return [_route(cotangents[0], positions, shares, x)], None


def _as_2d(layer, x):
    """1D pooling as 2D over a unit first axis: `(n, 1, L, c)`, window, strides."""
    if len(layer.pool_size) == 2:
        return x, [1, *layer.pool_size, 1], [1, *layer.strides, 1]
    return x[:, None], [1, 1, *layer.pool_size, 1], [1, 1, *layer.strides, 1]


def _argmax(layer, x):
    """The flat input position of each window's maximum, per sample (1D, 2D).

    TensorFlow's own kernel, so ties go where its gradient sends them, and
    the hop is TensorFlow's scatter along these positions, which costs about
    a quarter of an unsorted segment sum here.
    """
    x2, window, strides = _as_2d(layer, x)
    _, argmax = tf.nn.max_pool_with_argmax(
        x2, window, strides, layer.padding.upper(), include_batch_in_index=False
    )
    return argmax


def _route_argmax(layer, g, argmax, x):
    """Cotangents `(k, n, *out, c)` sent to the cached maxima, `(k, n, *x)`."""
    k = g.shape[0]
    x2, window, strides = _as_2d(layer, x)
    rows = concat_shapes([k * shape_of(x)[0]], shape_of(x2)[1:])
    flat = tf.reshape(g, concat_shapes([-1], shape_of(argmax)[1:]))
    hop = tf.raw_ops.MaxPoolGradWithArgmax(
        input=tf.zeros(rows, x.dtype),
        grad=flat,
        argmax=tf.tile(argmax, [k, 1, 1, 1]),
        ksize=window,
        strides=strides,
        padding=layer.padding.upper(),
        include_batch_in_index=False,
    )
    return tf.reshape(hop, concat_shapes([k], shape_of(x)))


def _windows(layer, x):
    """`(n, t, w, c)`: the pooling window of each output position."""
    rank, size = len(layer.pool_size), int(np.prod(layer.pool_size))
    if rank == 3:
        patches = tf.extract_volume_patches(
            x, [1, *layer.pool_size, 1], [1, *layer.strides, 1], layer.padding.upper()
        )
    else:
        window = types.SimpleNamespace(
            rank=rank,
            kernel_size=layer.pool_size,
            strides=layer.strides,
            dilation_rate=(1,) * rank,
            padding=layer.padding,
        )
        patches = unfold(window, x)
    return tf.reshape(patches, concat_shapes(shape_of(x)[:1], [-1, size, x.shape[-1]]))


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
    spatial = x.shape[1:-1].as_list()
    # 1-based input positions, 0 where a window hangs over the edge (float32
    # holds them exactly up to 2**24 positions per sample).
    index = tf.reshape(
        tf.range(1, int(np.prod(spatial)) + 1, dtype=tf.float32), [1, *spatial, 1]
    )
    index = _windows(layer, index)[0, :, :, 0]  # (t, w)
    inside = index[None, :, :, None] > 0
    patches = tf.where(inside, _windows(layer, x), tf.constant(-np.inf, x.dtype))
    if len(spatial) == 3:
        best = tf.reduce_max(patches, 2, keepdims=True)
        shares = tf.cast(tf.equal(patches, best) & inside, x.dtype)
        positions = tf.cast(tf.maximum(index - 1, 0), tf.int64)
        return positions[None, :, :, None], shares
    best = tf.argmax(patches, axis=2, output_type=tf.int32)  # (n, t, c)
    t = tf.range(index.shape[0])[None, :, None]
    found = tf.gather(tf.reshape(index, [-1]), t * index.shape[1] + best)
    return tf.cast(found, tf.int64)[:, :, None, :] - 1, None


def _route(g, positions, shares, x):
    """Cotangents `(k, n, *out, c)` sent along the routes, to `(k, n, *x)`."""
    k = g.shape[0]
    n, channels = shape_of(x)[0], x.shape[-1]
    spatial = int(np.prod(x.shape[1:-1]))
    rows = k * n
    if positions.shape[0] != 1:
        positions = tf.tile(positions, [k, 1, 1, 1])
    row = tf.range(rows, dtype=tf.int64)[:, None, None, None]  # row j * n + m
    ids = (row * spatial + positions) * channels + tf.range(channels, dtype=tf.int64)
    values = tf.reshape(g, [rows, -1, 1, channels])
    if shares is not None:
        values = values * tf.tile(shares, [k, 1, 1, 1])
    ids = tf.broadcast_to(ids, tf.shape(values))
    hop = tf.math.unsorted_segment_sum(
        tf.reshape(values, [-1]), tf.reshape(ids, [-1]), rows * spatial * channels
    )
    return tf.reshape(hop, concat_shapes([k], shape_of(x)))


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
        keep = tf.cast(tf.reshape(mask, [shape_of(x)[0], -1, 1]), x.dtype)
        return [y], keep / tf.reduce_sum(keep, 1, keepdims=True)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        x = site.inputs[0]
        g = cotangents[0]
        k, channels = g.shape[0], g.shape[-1]
        g = tf.reshape(g, concat_shapes([k], shape_of(x)[:1], [1, channels]))
        if cache is None:
            positions = int(np.prod(x.shape[1:-1]))
            hop = tf.broadcast_to(
                g / positions, concat_shapes([k], shape_of(x)[:1], [positions, channels])
            )
        else:
            hop = g * cache
        hop = tf.reshape(hop, concat_shapes([k], shape_of(x)))
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
        flat = tf.reshape(x, [shape_of(x)[0], -1, x.shape[-1]])
        tied = tf.cast(
            tf.equal(flat, tf.reduce_max(flat, 1, keepdims=True)), x.dtype
        )
        return [y], tied / tf.reduce_sum(tied, 1, keepdims=True)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        (x,) = site.inputs
        g = cotangents[0]
        k, channels = g.shape[0], g.shape[-1]
        g = tf.reshape(g, concat_shapes([k], shape_of(x)[:1], [1, channels]))
        return [tf.reshape(g * cache, concat_shapes([k], shape_of(x)))], None
