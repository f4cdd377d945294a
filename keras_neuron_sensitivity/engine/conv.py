"""Rules for convolutions: per-sample filter-gradient norms from unfolded inputs.

The per-sample filter gradient of a convolution is `U^T G`: `U` the unfolded
input (`t` output positions by `i` = kernel positions times input channels),
`G` the output cotangent (`t` by `o` filters). Its squared norm is taken
directly or as `<U U^T, G G^T>`, whichever is cheaper (`base.outer_sqnorm`).
No filter gradient goes through `pfor`, which falls back to a slow loop.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine.base import (
    Rule,
    activation_backward,
    concat_shapes,
    activation_derivative,
    activation_forward,
    activation_kind,
    merge,
    outer_sqnorm,
    plain_weights,
    neuron_columns,
    seed_cotangent,
    shape_of,
)


class ConvRule(Rule):
    """`Conv1D`, `Conv2D`, `Conv3D`, channels last, one group, no causal padding."""

    def applies(self, layer):
        return (
            layer.data_format == "channels_last"
            and layer.groups == 1
            and layer.padding in ("valid", "same")
            and plain_weights(layer)
        )

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        z = layer.convolution_op(x, layer.kernel)
        if layer.use_bias:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        patches = None
        if site.need_weights:
            patches = unfold(layer, x)
            patches = tf.reshape(patches, [shape_of(x)[0], -1, patches.shape[-1]])
        return [y], (x, act, patches)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k = gz.shape[0]
        sqnorm = None
        if need_weights and layer.trainable:
            g = tf.reshape(gz, [k, shape_of(x)[0], -1, layer.filters])
            sqnorm = outer_sqnorm(patches, g)
            if layer.use_bias:
                sqnorm += tf.reduce_sum(tf.square(tf.reduce_sum(g, 2)), -1)
        input_cots = None
        if need_inputs:
            input_cots = [_transpose_conv(layer, x, gz)]
        return input_cots, sqnorm

    def seed_backward(self, site, cache, start, k, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        y = site.outputs[0]
        if activation_kind(layer.activation) not in ("linear", "elementwise"):
            return super().seed_backward(
                site, cache, start, k, need_inputs, need_weights
            )
        input_cots = None
        if need_inputs:
            gz = activation_backward(layer.activation, act, seed_cotangent(y, start, k))
            input_cots = [_transpose_conv(layer, x, gz)]
        if not (need_weights and layer.trainable):
            return input_cots, None
        # Neuron k's filter gradient is the column U^T d_k / t, the other
        # columns zero: no (k, n, t, o) cotangent is needed for it.
        n = shape_of(x)[0]
        positions = int(np.prod(y.shape[1:-1]))
        d = activation_derivative(y, act)
        d = neuron_columns(tf.reshape(d, [n, -1, layer.filters]), start, k)
        d = d / positions
        sqnorm = tf.reduce_sum(
            tf.square(tf.einsum("nti,ntk->kni", patches, d)), -1
        )
        if layer.use_bias:
            sqnorm += tf.square(tf.transpose(tf.reduce_sum(d, 1)))
        return input_cots, sqnorm


def unfold(layer, x):
    """`(n, *out_positions, i)`: the input patches each output position sees.

    Ordered as the kernel's `(*kernel_size, in_channels)` axes, so that
    `unfold(x) @ kernel.reshape(-1, filters)` is the convolution.
    """
    size = list(layer.kernel_size)
    strides = list(layer.strides)
    rates = list(layer.dilation_rate)
    padding = layer.padding.upper()
    if layer.rank == 2:
        return tf.image.extract_patches(
            x, [1, *size, 1], [1, *strides, 1], [1, *rates, 1], padding
        )
    if layer.rank == 1:
        patches = tf.image.extract_patches(
            x[:, None], [1, 1, *size, 1], [1, 1, *strides, 1],
            [1, 1, *rates, 1], padding,
        )
        return patches[:, 0]
    # Rank 3: a convolution with a one-hot kernel copies each patch out.
    channels = x.shape[-1]
    depth = int(np.prod(size)) * channels
    eye = tf.reshape(tf.eye(depth, dtype=x.dtype), [*size, channels, depth])
    return keras.ops.conv(
        x, eye, strides=strides, padding=layer.padding, dilation_rate=rates
    )


def _transpose_conv(layer, x, gz):
    """Cotangents at the input of the (linear) convolution, `(k, n, ...)`."""
    k = gz.shape[0]
    zeros = tf.zeros(concat_shapes([k * shape_of(x)[0]], shape_of(x)[1:]), x.dtype)
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        z = layer.convolution_op(zeros, layer.kernel)
    flat = merge(gz)
    g = tape.gradient(z, zeros, output_gradients=flat)
    return tf.reshape(g, concat_shapes([k], shape_of(x)))
