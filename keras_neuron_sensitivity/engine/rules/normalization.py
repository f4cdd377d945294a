"""Rules for normalization layers in inference: closed forms per sample.

For `y = gamma * xhat + beta` with per-channel `gamma`, `beta`, the per-sample
gradients are `d gamma = sum_t g xhat` and `d beta = sum_t g` (sums over
positions `t`), so their squared norms need no weight gradient at all.
"""

from keras import ops

from keras_neuron_sensitivity.engine.rules.base import (
    Channelwise,
    Rule,
    gather_channels,
    shape_of,
)


def _affine_sqnorm(layer, xhat, g):
    """Squared norm of the per-sample gradient over `gamma` and `beta`."""
    k = g.shape[0]
    n = shape_of(xhat)[0]
    channels = xhat.shape[-1]
    g = ops.reshape(g, [k, n, -1, channels])
    xhat = ops.reshape(xhat, [n, -1, channels])
    total = ops.zeros([k, n], g.dtype)
    if layer.scale and layer.gamma.trainable:
        total += ops.sum(ops.square(ops.einsum("ntc,kntc->knc", xhat, g)), -1)
    if layer.center and layer.beta.trainable:
        total += ops.sum(ops.square(ops.sum(g, 2)), -1)
    return total


def _affine_rows(layer, xhat, g):
    """`(k, n, P)`: per-sample gradients over `gamma` and `beta`."""
    k = g.shape[0]
    n = shape_of(xhat)[0]
    channels = xhat.shape[-1]
    g = ops.reshape(g, [k, n, -1, channels])
    xhat = ops.reshape(xhat, [n, -1, channels])
    rows = []
    if layer.scale and layer.gamma.trainable:
        rows.append(ops.einsum("ntc,kntc->knc", xhat, g))
    if layer.center and layer.beta.trainable:
        rows.append(ops.sum(g, 2))
    return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]


class BatchNormalizationRule(Rule):
    """`BatchNormalization` on its moving statistics: a per-channel affine map."""

    def applies(self, layer):
        spec = layer.input_spec
        ndim = spec.ndim if spec is not None else None
        return (
            layer.axis == -1 or (ndim is not None and layer.axis == ndim - 1)
        ) and layer.compute_dtype == layer.variable_dtype

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        (y,) = site.run([x])
        inv = ops.rsqrt(layer.moving_variance + layer.epsilon)
        xhat = (x - layer.moving_mean) * inv
        slope = inv * layer.gamma if layer.scale else inv
        return [y], (xhat, slope)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        xhat, slope = cache
        g = cotangents[0]
        sqnorm = _affine_sqnorm(site.layer, xhat, g) if need_weights else None
        return ([g * slope] if need_inputs else None), sqnorm

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        # Channel by channel: a one-channel cotangent stays in its channel.
        layer = site.layer
        xhat, slope = cache
        d, channels = cotangent.values, cotangent.channels
        k = d.shape[0]
        sqnorm = None
        if need_weights:
            flat = ops.reshape(d, [k, shape_of(d)[1], -1])
            sqnorm = ops.zeros(shape_of(flat)[:2], d.dtype)
            if layer.scale and layer.gamma.trainable:
                xh = ops.reshape(gather_channels(xhat, channels), shape_of(flat))
                sqnorm += ops.square(ops.sum(flat * xh, -1))
            if layer.center and layer.beta.trainable:
                sqnorm += ops.square(ops.sum(flat, -1))
        input_cots = None
        if need_inputs:
            lead = len(channels.shape)  # (k,) or (k, n) channels
            scale = ops.reshape(
                ops.take(slope, channels, axis=0),
                list(d.shape)[:lead] + [1] * (len(d.shape) - lead),
            )
            input_cots = [Channelwise(d * scale, channels)]
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        return _affine_rows(site.layer, cache[0], cotangents[0])


class LayerNormalizationRule(Rule):
    """`LayerNormalization` over the last axis (not `rms_scaling`)."""

    def applies(self, layer):
        axis = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
        return (
            axis == [-1]
            and not getattr(layer, "rms_scaling", False)
            and layer.compute_dtype == layer.variable_dtype
        )

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        (y,) = site.run([x])
        mean, variance = ops.moments(x, axes=[-1], keepdims=True)
        inv = ops.rsqrt(variance + layer.epsilon)
        return [y], ((x - mean) * inv, inv)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        xhat, inv = cache
        g = cotangents[0]
        sqnorm = _affine_sqnorm(layer, xhat, g) if need_weights else None
        input_cots = None
        if need_inputs:
            gh = g * layer.gamma if layer.scale else g
            # d xhat / d x, applied to gh: center, then remove the xhat part.
            mean_g = ops.mean(gh, -1, keepdims=True)
            mean_gx = ops.mean(gh * xhat, -1, keepdims=True)
            input_cots = [inv * (gh - mean_g - xhat * mean_gx)]
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        return _affine_rows(site.layer, cache[0], cotangents[0])


class RMSScaleRule(Rule):
    """RMS normalization over the last axis with a learned scale, as
    keras_hub's decoder norms compute it (`LlamaLayerNorm`, Gemma's
    `RMSNormalization`, Mistral's, Qwen's, Phi-3's):
    `y = x / sqrt(mean(x^2) + eps) * (offset + scale)`, in float32.

    The scale's per-sample gradient is `sum_t g xhat`; the hop is
    `inv * (w g - xhat mean(xhat w g))` with `w = offset + scale` and `inv`
    the reciprocal RMS.

    Args:
        offset: 0 where the scale multiplies (`* scale`), 1 where it is an
            offset from one (`* (1 + scale)`, Gemma).
    """

    def __init__(self, offset=0.0):
        self.offset = offset

    def applies(self, layer):
        scale = getattr(layer, "scale", None)
        return (
            getattr(layer, "epsilon", None) is not None
            and scale is not None
            and len(scale.shape) == 1
            and layer.compute_dtype == getattr(layer, "variable_dtype", layer.dtype)
        )

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        x = ops.cast(x, "float32")
        inv = ops.rsqrt(ops.mean(ops.square(x), -1, keepdims=True) + layer.epsilon)
        xhat = x * inv
        y = ops.cast(xhat * self._weight(layer), layer.compute_dtype)
        return [y], (xhat, inv)

    def _weight(self, layer):
        return self.offset + ops.cast(layer.scale, "float32")

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        xhat, inv = cache
        g = ops.cast(cotangents[0], "float32")
        sqnorm = None
        if need_weights and any(v is layer.scale for v in site.weights):
            k = g.shape[0]
            n = shape_of(xhat)[0]
            channels = xhat.shape[-1]
            rows = ops.einsum(
                "ntc,kntc->knc",
                ops.reshape(xhat, [n, -1, channels]),
                ops.reshape(g, [k, n, -1, channels]),
            )
            sqnorm = ops.sum(ops.square(rows), -1)
        input_cots = None
        if need_inputs:
            wg = g * self._weight(layer)
            inner = ops.mean(wg * xhat, -1, keepdims=True)
            input_cots = [inv * (wg - xhat * inner)]
        return input_cots, sqnorm
