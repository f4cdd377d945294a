"""Rules for depthwise and separable convolutions, from unfolded inputs.

A depthwise convolution filters each input channel `c` on its own, with `m`
filters per channel (`depth_multiplier`); output channel `c * m + j` is
filter `j` of channel `c`. Its per-sample kernel gradient for `(c, j)` is
`U_c^T g_cj`, with `U_c` the unfolded input of channel `c` (`t` positions by
`p` kernel positions), so the squared norm summed over channels and filters is

    direct: sum_{p, c, j} (sum_t U[t, p, c] g[t, c, j])^2       ~ t p c m
    ghost:  sum_c <U_c U_c^T, G_c G_c^T>                        ~ t^2 c m

per cotangent; the ghost form wins when the positions `t` are fewer than the
kernel positions `p` (only on the smallest maps). The hop is the depthwise
convolution's own input gradient, on all `k * n` rows at once. A separable
convolution is a depthwise one followed by a 1x1 convolution (`pointwise`):
both terms, read off the same pass.
"""

import numpy as np
from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import (
    Channelwise,
    Rule,
    activation_backward,
    activation_derivative,
    activation_forward,
    activation_kind,
    concat_shapes,
    gather_channels,
    merge,
    neuron_columns,
    outer_sqnorm,
    plain_weights,
    seed_cotangent,
    shape_of,
)
from keras_neuron_sensitivity.engine.rules.conv import (
    per_channel_hop_fits,
    per_row_transpose_conv,
    unfold,
)


def _applies(layer):
    return (
        layer.data_format == "channels_last"
        and layer.padding in ("valid", "same")
        and plain_weights(layer)
    )


def _depthwise(layer, x, kernel):
    return ops.depthwise_conv(
        x,
        kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _patches(layer, x):
    """`(n, t, p, c)`: each output position's window, per input channel."""
    patches = unfold(layer, x)
    size = int(np.prod(layer.kernel_size))
    return ops.reshape(patches, concat_shapes([shape_of(x)[0], -1, size, x.shape[-1]]))


def _kernel_sqnorm(patches, g):
    """`sum_{c, j} ||U_c^T g_cj||^2` per `(k, n)`; `g` is `(k, n, t, c, m)`."""
    t, p = patches.shape[1], patches.shape[2]
    if t < p:
        uu = ops.einsum("ntpc,nspc->ntsc", patches, patches)
        gg = ops.einsum("kntcj,knscj->kntsc", g, g)
        return ops.einsum("ntsc,kntsc->kn", uu, gg)
    return ops.sum(
        ops.square(ops.einsum("ntpc,kntcj->knpcj", patches, g)), [2, 3, 4]
    )


def _depthwise_hop(layer, x, kernel, g):
    """Cotangents at the input of the depthwise convolution, `(k, n, ...)`:
    its input gradient on all `k * n` rows at once."""
    k = g.shape[0]
    zeros = ops.zeros(concat_shapes([k * shape_of(x)[0]], shape_of(x)[1:]), x.dtype)
    _, pullback = backend.vjp(lambda z: _depthwise(layer, z, kernel), zeros)
    return ops.reshape(pullback(merge(g)), concat_shapes([k], shape_of(x)))


def _by_channel(x, g, multiplier):
    """`(k, n, ..., c * m)` -> `(k, n, t, c, m)`."""
    return ops.reshape(
        g, concat_shapes([g.shape[0], shape_of(x)[0], -1, x.shape[-1], multiplier])
    )


def _bias_sqnorm(layer, gz):
    if not layer.use_bias:
        return 0.0
    k = gz.shape[0]
    g = ops.reshape(gz, [k, shape_of(gz)[1], -1, gz.shape[-1]])
    return ops.sum(ops.square(ops.sum(g, 2)), -1)


class DepthwiseConvRule(Rule):
    """`DepthwiseConv1D/2D`, channels last, 'valid' or 'same' padding."""

    def applies(self, layer):
        return _applies(layer)

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        z = _depthwise(layer, x, layer.kernel)
        if layer.use_bias:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        patches = _patches(layer, x) if site.need_weights else None
        return [y], (x, act, patches)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        sqnorm = None
        if need_weights and layer.trainable:
            g = _by_channel(x, gz, layer.depth_multiplier)
            sqnorm = _kernel_sqnorm(patches, g) + _bias_sqnorm(layer, gz)
        input_cots = None
        if need_inputs:
            input_cots = [_depthwise_hop(layer, x, layer.kernel, gz)]
        return input_cots, sqnorm

    def seed_backward(self, site, cache, start, k, need_inputs, need_weights):
        layer = site.layer
        x, act, patches = cache
        y = site.outputs[0]
        if activation_kind(layer.activation) not in ("linear", "elementwise"):
            return super().seed_backward(site, cache, start, k, need_inputs, need_weights)
        input_cots = None
        if need_inputs:
            gz = activation_backward(layer.activation, act, seed_cotangent(y, start, k))
            input_cots = [_depthwise_hop(layer, x, layer.kernel, gz)]
        if not (need_weights and layer.trainable):
            return input_cots, None
        # Neuron (c, j)'s kernel gradient is U_c^T d_cj / t, the other
        # filters' zero: one product for all neurons of the layer.
        n, m = shape_of(x)[0], layer.depth_multiplier
        positions = int(np.prod(y.shape[1:-1]))
        d = activation_derivative(y, act) / positions
        d = ops.reshape(d, concat_shapes([n, -1, x.shape[-1], m]))
        per_filter = ops.sum(
            ops.square(ops.einsum("ntpc,ntcj->ncjp", patches, d)), -1
        )
        sq = ops.reshape(per_filter, concat_shapes([n, -1]))
        if layer.use_bias:
            sq += ops.square(ops.reshape(ops.sum(d, 1), concat_shapes([n, -1])))
        return input_cots, ops.transpose(neuron_columns(sq, start, k))

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        # Output channel c * m + j reads input channel c alone: a cotangent in
        # one output channel has its input cotangent in one channel, the
        # transposed convolution of that map with its one filter, and its
        # kernel gradient is U_c^T d.
        layer = site.layer
        if (
            activation_kind(layer.activation) not in ("linear", "elementwise")
            or not per_channel_hop_fits(layer)
            or cotangent.per_sample
        ):
            return super().channel_backward(
                site, cache, cotangent, need_inputs, need_weights
            )
        x, act, patches = cache
        channels = cotangent.channels
        d = cotangent.values  # (k, n, *out_positions)
        if act is not None:
            d = d * gather_channels(act, channels)
        k, n = d.shape[0], shape_of(x)[0]
        inputs = channels // layer.depth_multiplier
        sqnorm = None
        if need_weights and layer.trainable:
            flat = ops.reshape(d, [k, n, -1])
            windows = ops.take(patches, inputs, axis=-1)  # (n, t, p, k)
            sqnorm = ops.sum(
                ops.square(ops.einsum("ntpk,knt->knp", windows, flat)), -1
            )
            if layer.use_bias:
                sqnorm += ops.square(ops.sum(flat, -1))
        input_cots = None
        if need_inputs:
            kernel = ops.reshape(layer.kernel, [*layer.kernel_size, -1])
            filters = ops.take(kernel, channels, axis=-1)[..., None, :]
            g = per_row_transpose_conv(layer, x, d, filters)[..., 0]
            input_cots = [Channelwise(g, inputs)]
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        layer = site.layer
        x, act, patches = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k, n = gz.shape[0], shape_of(x)[0]
        g = _by_channel(x, gz, layer.depth_multiplier)
        rows = [
            ops.reshape(ops.einsum("ntpc,kntcj->knpcj", patches, g), [k, n, -1])
        ]
        if layer.use_bias:
            rows.append(ops.reshape(ops.sum(g, 2), [k, n, -1]))
        return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]


class SeparableConvRule(Rule):
    """`SeparableConv1D/2D`, channels last: depthwise, then a 1x1 convolution."""

    def applies(self, layer):
        return _applies(layer)

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        d = _depthwise(layer, x, layer.depthwise_kernel)
        pointwise = _pointwise(layer)
        z = ops.tensordot(d, pointwise, axes=1)
        if layer.use_bias:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        patches = flat_d = None
        if site.need_weights:
            patches = _patches(layer, x)
            flat_d = ops.reshape(d, concat_shapes([shape_of(d)[0], -1, d.shape[-1]]))
        return [y], (x, act, patches, flat_d)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act, patches, flat_d = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        pointwise = _pointwise(layer)
        gd = ops.einsum("kn...o,io->kn...i", gz, pointwise)
        sqnorm = None
        if need_weights and layer.trainable:
            k = gz.shape[0]
            g = ops.reshape(gz, concat_shapes([k, shape_of(x)[0], -1, gz.shape[-1]]))
            sqnorm = outer_sqnorm(flat_d, g) + _bias_sqnorm(layer, gz)
            sqnorm += _kernel_sqnorm(patches, _by_channel(x, gd, layer.depth_multiplier))
        input_cots = None
        if need_inputs:
            input_cots = [_depthwise_hop(layer, x, layer.depthwise_kernel, gd)]
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        """`(k, n, P)`: each row's gradient over the depthwise kernel, the
        pointwise kernel and the bias, flattened."""
        layer = site.layer
        x, act, patches, flat_d = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k, n = gz.shape[0], shape_of(x)[0]
        g = ops.reshape(gz, concat_shapes([k, n, -1, gz.shape[-1]]))
        gd = _by_channel(x, ops.einsum("kn...o,io->kn...i", gz, _pointwise(layer)), layer.depth_multiplier)
        rows = [
            ops.reshape(ops.einsum("ntpc,kntcj->knpcj", patches, gd), [k, n, -1]),
            ops.reshape(ops.einsum("nti,knto->knio", flat_d, g), [k, n, -1]),
        ]
        if layer.use_bias:
            rows.append(ops.sum(g, 2))
        return ops.concatenate(rows, -1)


def _pointwise(layer):
    """The 1x1 kernel as a matrix, `(c * m, filters)`."""
    kernel = layer.pointwise_kernel
    return ops.reshape(kernel, kernel.shape[-2:])
