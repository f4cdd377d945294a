"""Rule for transposed convolutions, from the unfolded cotangent.

`Conv2DTranspose` computes `z = A_W^T x`, with `A_W` the convolution of the
same kernel, strides, padding and dilation that maps a tensor of `z`'s shape
to one of `x`'s (`filters` channels in, `x`'s channels out). So
`<g, A_W^T x> = <A_W g, x>`, and the per-sample kernel gradient is that of a
convolution of `g` against `x`: `U_g^T X`, with `U_g` the cotangent unfolded
as that convolution sees it (`t` = `x`'s positions by `p * filters`) and `X`
the input (`t` by its channels). Its squared norm is taken directly or as
`<U_g U_g^T, X X^T>` (`base.outer_sqnorm`). The hop is `A_W g`, the
transposed convolution's own input gradient on all `k * n` rows at once.
"""

from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import (
    Rule,
    activation_backward,
    activation_forward,
    concat_shapes,
    merge,
    outer_sqnorm,
    plain_weights,
    shape_of,
)
from keras_neuron_sensitivity.engine.rules.conv import unfold


def _transpose_conv(layer, x):
    return ops.conv_transpose(
        x,
        layer.kernel,
        strides=list(layer.strides),
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


class ConvTransposeRule(Rule):
    """`Conv1DTranspose`, `Conv2DTranspose`, `Conv3DTranspose`, channels last."""

    def applies(self, layer):
        return (
            layer.data_format == "channels_last"
            and layer.padding in ("valid", "same")
            and plain_weights(layer)
        )

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        z = _transpose_conv(layer, x)
        if layer.use_bias:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        flat_x = None
        if site.need_weights:
            flat_x = ops.reshape(x, concat_shapes([shape_of(x)[0], -1, x.shape[-1]]))
        return [y], (x, act, flat_x)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act, flat_x = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k = gz.shape[0]
        sqnorm = None
        if need_weights and layer.trainable:
            sqnorm = outer_sqnorm(flat_x, _unfolded_cotangent(site, x, gz))
            if layer.use_bias:
                g = ops.reshape(gz, concat_shapes([k, shape_of(x)[0], -1, gz.shape[-1]]))
                sqnorm += ops.sum(ops.square(ops.sum(g, 2)), -1)
        input_cots = None
        if need_inputs:
            zeros = ops.zeros(concat_shapes([k * shape_of(x)[0]], shape_of(x)[1:]), x.dtype)
            _, pullback = backend.vjp(lambda z: _transpose_conv(layer, z), zeros)
            input_cots = [ops.reshape(pullback(merge(gz)), concat_shapes([k], shape_of(x)))]
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        """`(k, n, P)`: each row's kernel gradient `U_g^T X` and bias gradient."""
        layer = site.layer
        x, act, flat_x = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k, n = gz.shape[0], shape_of(x)[0]
        u = _unfolded_cotangent(site, x, gz)
        rows = [ops.reshape(ops.einsum("nti,kntj->knij", flat_x, u), [k, n, -1])]
        if layer.use_bias:
            g = ops.reshape(gz, concat_shapes([k, n, -1, gz.shape[-1]]))
            rows.append(ops.sum(g, 2))
        return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]


def _unfolded_cotangent(site, x, gz):
    """`(k, n, t, p * filters)`: `gz` unfolded as the adjoint convolution sees
    it, one row per position of the input `x`."""
    k = gz.shape[0]
    unfolded = unfold(site.layer, merge(gz))
    if unfolded.shape[1:-1] != x.shape[1:-1]:
        raise ValueError(
            f"Layer {site.key!r}: the unfolded cotangent has positions "
            f"{unfolded.shape[1:-1]}, the input {x.shape[1:-1]}. "
            "Expected them to match for a transposed convolution."
        )
    return ops.reshape(unfolded, concat_shapes([k, shape_of(x)[0], -1, unfolded.shape[-1]]))
