"""Rules for convolutions: per-sample filter-gradient norms from unfolded inputs.

The per-sample filter gradient of a convolution is `U^T G`: `U` the unfolded
input (`t` output positions by `i` = kernel positions times input channels),
`G` the output cotangent (`t` by `o` filters). Its squared norm is taken
directly or as `<U U^T, G G^T>`, whichever is cheaper (`base.outer_sqnorm`).
No filter gradient goes through `pfor`, which falls back to a slow loop.

A grouped convolution (`groups > 1`) is the same per group: group `g`'s
filters see only its input channels, so `U` and `G` are split by group.

A cotangent that lives in one output channel per row (a target's own
neurons, or what reaches the layer through per-channel layers) needs
neither a full `G` nor a full transposed convolution: its filter gradient is
one column `U^T d`, and its hop to the input is a transposed convolution of
one channel with that channel's filter, one filter per row, which a
depthwise convolution's input gradient computes for all rows at once.
"""

import numpy as np
from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import (
    Channelwise,
    Rule,
    activation_backward,
    activation_forward,
    activation_kind,
    channel_sqnorm,
    concat_shapes,
    gather_channels,
    ghost_is_cheaper,
    live_rows,
    merge,
    outer_sqnorm,
    plain_weights,
    shape_of,
)


class ConvRule(Rule):
    """`Conv1D`, `Conv2D`, `Conv3D`: channels last, any `groups`, no causal padding."""

    def applies(self, layer):
        return (
            layer.data_format == "channels_last"
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
            patches = ops.reshape(patches, [shape_of(x)[0], -1, patches.shape[-1]])
        return [y], (x, act, patches)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k = gz.shape[0]
        sqnorm = None
        if need_weights and layer.trainable:
            with backend.name_scope("weight_term"):
                g = ops.reshape(gz, [k, shape_of(x)[0], -1, layer.filters])
                sqnorm = _grouped_sqnorm(patches, g, layer)
                if layer.use_bias:
                    sqnorm += ops.sum(ops.square(ops.sum(g, 2)), -1)
        input_cots = None
        if need_inputs:
            with backend.name_scope("hop"):
                input_cots = [_transpose_conv(layer, x, gz)]
        return input_cots, sqnorm

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        kind = activation_kind(layer.activation)
        per_sample = cotangent.per_sample and not (
            _is_pointwise(layer) and layer.groups == 1
        )
        if kind not in ("linear", "elementwise") or not per_channel_hop_fits(layer) or per_sample:
            return super().channel_backward(
                site, cache, cotangent, need_inputs, need_weights
            )
        channels = cotangent.channels
        d = cotangent.values  # (k, n, *out_positions)
        if act is not None:
            d = d * gather_channels(act, channels)
        k = d.shape[0]
        n = shape_of(x)[0]
        sqnorm = None
        if need_weights and layer.trainable:
            with backend.name_scope("weight_term"):
                flat = ops.reshape(d, [k, n, -1])
                sqnorm = _channel_group_sqnorm(patches, flat, channels, layer)
                if layer.use_bias:
                    sqnorm += ops.square(ops.sum(flat, -1))
        input_cots = None
        if need_inputs:
            with backend.name_scope("hop"):
                input_cots = [_channel_transpose_conv(layer, x, d, channels)]
        return input_cots, sqnorm


    def live_neurons(self, site, cache):
        _, act, _ = cache
        if activation_kind(site.layer.activation) != "elementwise":
            return None
        return live_rows(act)

    def weight_rows(self, site, cache, cotangents):
        layer = site.layer
        x, act, patches = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k, n = gz.shape[0], shape_of(x)[0]
        g = ops.reshape(gz, [k, n, -1, layer.groups, layer.filters // layer.groups])
        u = _split_groups(patches, layer.groups, layer.kernel.shape[-2] * layer.groups)
        rows = [ops.reshape(ops.einsum("ntgi,kntgo->kngio", u, g), [k, n, -1])]
        if layer.use_bias:
            rows.append(ops.reshape(ops.sum(g, 2), [k, n, -1]))
        return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]


def unfold(layer, x):
    """`(n, *out_positions, i)`: the input patches each output position sees.

    Ordered as the kernel's `(*kernel_size, in_channels)` axes, so that
    `unfold(x) @ kernel.reshape(-1, filters)` is the convolution.
    """
    size = list(layer.kernel_size)
    strides = list(layer.strides)
    rates = list(layer.dilation_rate)
    if all(s == 1 for s in size + strides):
        return x  # a pointwise convolution sees each position alone
    patches = backend.extract_patches(x, size, strides, rates, layer.padding)
    if patches is not None:
        return patches
    # A convolution with a one-hot kernel copies each patch out.
    channels = x.shape[-1]
    depth = int(np.prod(size)) * channels
    eye = ops.reshape(ops.eye(depth, dtype=x.dtype), [*size, channels, depth])
    return ops.conv(x, eye, strides=strides, padding=layer.padding, dilation_rate=rates)


def _split_groups(patches, groups, in_channels):
    """`(n, t, p * c)` -> `(n, t, groups, p * c / groups)`."""
    n, t = shape_of(patches)[0], patches.shape[1]
    kernel_positions = patches.shape[2] // in_channels
    u = ops.reshape(patches, [n, t, kernel_positions, groups, in_channels // groups])
    u = ops.transpose(u, [0, 1, 3, 2, 4])
    return ops.reshape(u, [n, t, groups, -1])


def _grouped_sqnorm(patches, g, layer):
    """`outer_sqnorm` per group, summed: `patches` `(n, t, i)`, `g` `(k, n, t, o)`."""
    groups = layer.groups
    if groups == 1:
        return outer_sqnorm(patches, g)
    k, t, o = g.shape[0], g.shape[2], g.shape[3]
    u = _split_groups(patches, groups, layer.kernel.shape[-2] * groups)
    gg = ops.reshape(g, concat_shapes([k], shape_of(g)[1:3], [groups, o // groups]))
    i = u.shape[-1]
    if ghost_is_cheaper(k, t, i, o // groups):
        uu = ops.einsum("ntgi,nsgi->ngts", u, u)
        grams = ops.einsum("kntgo,knsgo->kngts", gg, gg)
        return ops.einsum("ngts,kngts->kn", uu, grams)
    return ops.sum(
        ops.square(ops.einsum("ntgi,kntgo->kngio", u, gg)), [2, 3, 4]
    )


def _channel_group_sqnorm(patches, d, channels, layer):
    """Squared norm of the filter gradient of rows living in one filter each.

    `d` is `(k, n, t)`; row `k`'s filter is `channels[k]`, whose gradient is
    `U_g^T d` over its group's unfolded inputs `U_g`.
    """
    if layer.groups == 1:
        return channel_sqnorm(patches, d)
    in_channels = layer.kernel.shape[-2] * layer.groups
    u = _split_groups(patches, layer.groups, in_channels)  # (n, t, G, i)
    per_group = layer.filters // layer.groups
    row_groups = channels // per_group
    u = ops.take(u, row_groups, axis=2)  # (n, t, k, i)
    return ops.sum(ops.square(ops.einsum("ntki,knt->kni", u, d)), -1)


def _transpose_conv(layer, x, gz):
    """Cotangents at the input of the (linear) convolution, `(k, n, ...)`."""
    k = gz.shape[0]
    zeros = ops.zeros(concat_shapes([k * shape_of(x)[0]], shape_of(x)[1:]), x.dtype)
    _, pullback = backend.vjp(lambda z: layer.convolution_op(z, layer.kernel), zeros)
    return ops.reshape(pullback(merge(gz)), concat_shapes([k], shape_of(x)))


def per_channel_hop_fits(layer):
    """Whether `_channel_transpose_conv` handles this layer: ranks 1 and 2
    with equal strides (TensorFlow's depthwise convolution needs them)."""
    if layer.rank == 1:
        return layer.strides[0] == 1 or _is_pointwise(layer)
    if layer.rank == 2:
        return layer.strides[0] == layer.strides[1] or _is_pointwise(layer)
    return _is_pointwise(layer)


def _is_pointwise(layer):
    return all(s == 1 for s in layer.kernel_size) and all(
        s == 1 for s in layer.strides
    )


def _channel_transpose_conv(layer, x, d, channels):
    """The hop of rows that live in one output channel each.

    Row `(k, n)` carries `d[k, n]` `(*out_positions)` at filter `channels[k]`;
    its input cotangent is the transposed convolution of that one map with
    that one filter. Returns a `Channelwise` when each filter reads a single
    input channel (depthwise-like grouped convolutions), else the full
    `(k, n, *in_positions, c)`.
    """
    kernel = layer.kernel  # (*size, c / groups, filters)
    k = d.shape[0]
    per_group_in = kernel.shape[-2]
    filters = ops.take(kernel, channels, axis=-1)  # (*size, c_g, k[, n])
    if _is_pointwise(layer):
        if len(channels.shape) == 2:  # a filter per row and sample
            rows = ops.reshape(filters, [per_group_in, k, -1])
            return ops.einsum("kn...,ikn->kn...i", d, rows)
        rows = ops.reshape(filters, [per_group_in, k])
        g = ops.einsum("kn...,ik->kn...i", d, rows)
    else:
        g = per_row_transpose_conv(layer, x, d, filters)
    if layer.groups == 1:
        return g
    row_groups = channels // (layer.filters // layer.groups)
    if per_group_in == 1:
        return Channelwise(g[..., 0], row_groups)
    # Place each row's group of input channels among all input channels.
    onehot = ops.one_hot(row_groups, layer.groups, dtype=g.dtype)
    onehot = ops.reshape(onehot, [k] + [1] * (len(g.shape) - 2) + [layer.groups, 1])
    full = g[..., None, :] * onehot
    return ops.reshape(full, concat_shapes(shape_of(g)[:-1], [-1]))


def per_row_transpose_conv(layer, x, d, filters):
    """`(k, n, *in_positions, c_g)`: each row's map through its own filter.

    A depthwise convolution with `k * c_g` channels of multiplier 1 computes
    every row's transposed convolution at once: channel `(k, i)` carries row
    `k`'s map and filter `filters[..., i, k]`.
    """
    k = d.shape[0]
    n = shape_of(x)[0]
    c_g = filters.shape[-2]
    in_positions = shape_of(x)[1:-1]
    if layer.rank == 1:
        d = d[:, :, None]
        filters = filters[None]
        in_positions = [1] + list(in_positions)
        strides = [1, 1] + list(layer.strides) + [1]
        rates = [1] + list(layer.dilation_rate)
    else:
        strides = [1] + list(layer.strides) + [1]
        rates = list(layer.dilation_rate)
    size = shape_of(filters)[:2]
    # (k, n, h, w) -> (n, h, w, k, c_g): each row's map, once per input channel.
    maps = ops.transpose(d, [1, 2, 3, 0])[..., None]
    maps = ops.broadcast_to(maps, concat_shapes([n], shape_of(d)[2:4], [k, c_g]))
    maps = ops.reshape(maps, concat_shapes([n], shape_of(d)[2:4], [k * c_g]))
    depthwise = ops.reshape(ops.transpose(filters, [0, 1, 3, 2]), [*size, k * c_g, 1])
    zeros = ops.zeros(concat_shapes([n], list(in_positions), [k * c_g]), d.dtype)

    def conv(z):
        return ops.depthwise_conv(
            z, depthwise, strides=tuple(strides[1:3]), padding=layer.padding, dilation_rate=tuple(rates)
        )

    _, pullback = backend.vjp(conv, zeros)
    g = pullback(maps)  # (n, *in, k * c_g)
    g = ops.reshape(g, concat_shapes([n], list(in_positions), [k, c_g]))
    rank = len(g.shape)
    g = ops.transpose(g, [rank - 2, 0] + list(range(1, rank - 2)) + [rank - 1])
    if layer.rank == 1:
        g = g[:, :, 0]
    return g
