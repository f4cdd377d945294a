"""Rules for elementwise layers: activations, merges, scales and pure hops.

Every map here acts on each element alone (after broadcasting), so its
Jacobian is diagonal: the hop multiplies the cotangent by a derivative cached
from the forward pass, and sums it back over the axes an input was broadcast
along. `LayerScale` is the one with weights: `y = gamma * x`, whose per-sample
gradient `sum_t g x` (per channel) needs no weight gradient.
"""

import keras
import numpy as np
from keras import ops

from keras_neuron_sensitivity.engine import backend

from keras_neuron_sensitivity.engine.rules import base
from keras_neuron_sensitivity.engine.rules.base import (
    ELEMENTWISE_ACTIVATIONS,
    Channelwise,
    Rule,
    concat_shapes,
    gather_channels,
    live_rows,
    plain_weights,
    seed_cotangent,
    shape_of,
    with_mask,
)


class ElementwiseRule(Rule):
    """Standalone elementwise activation layers (ReLU, LeakyReLU, ELU, ...)."""

    def applies(self, layer):
        if isinstance(layer, keras.layers.Activation):
            return (
                getattr(layer.activation, "__name__", None)
                in ELEMENTWISE_ACTIVATIONS
            )
        return not layer.trainable_weights

    def forward(self, site):
        (x,) = site.inputs
        y, derivative = base.elementwise_derivative(lambda z: site.run([with_mask(z, x)])[0], x)
        return [y], derivative

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0] * cache], None

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        channels = cotangent.channels
        values = cotangent.values * gather_channels(cache, channels)
        return [Channelwise(values, channels)], None

    def live_neurons(self, site, cache):
        return live_rows(cache)


class IdentityRule(Rule):
    """Layers that pass their input through in inference (dropout, noise)."""

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0]], None

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        return [cotangent], None


class ReshapeRule(Rule):
    """`Flatten`, `Reshape`: the cotangent takes the input's shape back."""

    def applies(self, layer):
        return not getattr(layer, "_channels_first", False)

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        (x,) = site.inputs
        g = cotangents[0]
        return [ops.reshape(g, concat_shapes([g.shape[0]], shape_of(x)))], None


class AddRule(Rule):
    """`Add`: every input receives the output's cotangent (summed back over
    the axes it was broadcast along)."""

    def applies(self, layer):
        return not getattr(layer, "_reshape_required", False)

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        return [unbroadcast(g, x) for x in site.inputs], None

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        if any(x.shape != site.outputs[0].shape for x in site.inputs):
            return super().channel_backward(
                site, cache, cotangent, need_inputs, need_weights
            )
        return [cotangent] * len(site.inputs), None


class ConcatenateRule(Rule):
    """`Concatenate`: the cotangent is split back along the joined axis."""

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        axis = site.layer.axis
        # Cotangents carry a leading neuron axis: shift non-negative axes.
        axis = axis + 1 if axis >= 0 else axis
        sizes = [x.shape[site.layer.axis] for x in site.inputs]
        return ops.split(g, [int(i) for i in np.cumsum(sizes)[:-1]], axis=axis), None


def unbroadcast(g, x):
    """`(k, n, *out)` -> `(k, n, *x.shape[1:])`: sums the axes `x` was
    broadcast along (its size-1 axes, and leading axes it lacks)."""
    lost = len(g.shape) - 1 - len(x.shape)
    if lost:
        g = ops.sum(g, axis=list(range(2, 2 + lost)))
    axes = [
        a + 1
        for a in range(1, len(x.shape))
        if x.shape[a] == 1 and g.shape[a + 1] != 1
    ]
    return ops.sum(g, axis=axes, keepdims=True) if axes else g


class ActivationRule(Rule):
    """`Activation` layers: linear, elementwise (hard_swish, silu, ...) or softmax.

    The hop is `g * f'(x)` with `f'` cached from the forward pass,
    `s * (g - <g, s>)` for softmax over the last axis, `g` for linear.
    """

    def applies(self, layer):
        return base.activation_kind(layer.activation) != "generic"

    def forward(self, site):
        (x,) = site.inputs
        y, cache = base.activation_forward(site.layer.activation, x)
        return [y], cache

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = base.activation_backward(site.layer.activation, cache, cotangents[0])
        return [g], None

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        kind = base.activation_kind(site.layer.activation)
        if kind == "linear":
            return [cotangent], None
        if kind != "elementwise":  # softmax mixes channels
            return super().channel_backward(
                site, cache, cotangent, need_inputs, need_weights
            )
        channels = cotangent.channels
        values = cotangent.values * gather_channels(cache, channels)
        return [Channelwise(values, channels)], None

    def live_neurons(self, site, cache):
        if base.activation_kind(site.layer.activation) != "elementwise":
            return None
        return live_rows(cache)


class SoftmaxRule(Rule):
    """`Softmax` over the last axis, with or without a mask: `s * (g - <g, s>)`.

    Masked entries have `s = 0` and receive nothing, as in Keras's own call.
    """

    def applies(self, layer):
        return layer.axis in (-1, [-1], (-1,))

    def forward(self, site):
        y = site.run(site.inputs)
        return y, y[0]

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        s, g = cache, cotangents[0]
        hop = s * (g - ops.sum(g * s, axis=-1, keepdims=True))
        return [hop] + [None] * (len(site.inputs) - 1), None


class BroadcastRule(Rule):
    """Elementwise maps of one or more tensors, with broadcasting.

    `Multiply`, `Subtract`, `Average`, `Maximum`, `Minimum` layers and
    elementwise Keras operations (`x + 3.0`, `x * s`, `keras.ops.tanh`). Each
    input's partial derivative is taken once per sample, on the inputs
    broadcast to the output's shape (there the map is diagonal, and TensorFlow's
    own gradient settles ties such as `maximum(x, x)`); the hop multiplies the
    cotangent by it and sums back over the broadcast axes. Every input gets
    its cotangent: in squeeze-and-excitation both the feature map and the gate.
    """

    def applies(self, layer):
        return not getattr(layer, "_reshape_required", False)

    def forward(self, site):
        (y,) = site.run(site.inputs)
        # One fresh copy per entry: a tensor passed twice (`x * x`) is replayed
        # from one of its copies, which receives its whole derivative.
        spread = [
            ops.broadcast_to(x, shape_of(y)) if backend.is_float(x) else x
            for x in site.inputs
        ]
        positions = [j for j, x in enumerate(spread) if backend.is_float(x)]

        def f(floats):
            replaced = list(spread)
            for j, x in zip(positions, floats):
                replaced[j] = x
            return site.run(replaced)[0]

        z, pullback = backend.vjp(f, [spread[j] for j in positions])
        partials = iter(pullback(ops.ones_like(z)))
        cache = tuple(next(partials) if backend.is_float(x) else None for x in spread)
        return [y], cache

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        return [
            None if d is None else unbroadcast(g * d, x)
            for d, x in zip(cache, site.inputs)
        ], None


class AffineRule(Rule):
    """`Rescaling`, `Normalization`: `y = a * x + b`, with `a` constant.

    The slope `a` is read once per pass as the derivative of the layer on one
    sample (it does not depend on the input), so the hop is `g * a` whatever
    the layer's axes or data format.
    """

    def applies(self, layer):
        return not layer.trainable_weights

    def forward(self, site):
        (x,) = site.inputs
        (y,) = site.run([x])
        if not backend.is_float(x):  # pixels as integers: nothing flows back
            return [y], None
        sample = ops.zeros(concat_shapes([1], shape_of(x)[1:]), x.dtype)
        _, slope = base.elementwise_derivative(lambda z: site.run([z])[0], sample)
        return [y], slope

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0] * cache], None


class LayerScaleRule(Rule):
    """ConvNeXt's `LayerScale`, `y = gamma * x` per channel.

    The per-sample gradient of `gamma` is `sum_t g x` per channel, so the
    weight term is `sum_c (sum_t g x)^2`; the hop is `g * gamma`.
    """

    def applies(self, layer):
        return plain_weights(layer)

    def forward(self, site):
        (x,) = site.inputs
        (y,) = site.run([x])
        return [y], _positions(x) if site.need_weights else None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        sqnorm = None
        if need_weights and site.layer.trainable:
            k = g.shape[0]
            gt = ops.reshape(g, concat_shapes([k], shape_of(cache)))
            sqnorm = ops.sum(
                ops.square(ops.einsum("kntc,ntc->knc", gt, cache)), -1
            )
        return ([g * site.layer.gamma] if need_inputs else None), sqnorm

    def weight_rows(self, site, cache, cotangents):
        """`(k, n, c)`: each row's gradient of `gamma`, `sum_t g x`."""
        g = cotangents[0]
        gt = ops.reshape(g, concat_shapes([g.shape[0]], shape_of(cache)))
        return ops.einsum("kntc,ntc->knc", gt, cache)

    def seed_backward(self, site, cache, start, k, need_inputs, need_weights):
        # Neuron k's gradient is gamma_k's alone: the mean of x_k over positions.
        y = site.outputs[0]
        sqnorm = None
        if need_weights and site.layer.trainable:
            mean = ops.mean(cache, 1)
            sqnorm = ops.transpose(ops.square(base.neuron_columns(mean, start, k)))
        input_cots = None
        if need_inputs:
            input_cots = [seed_cotangent(y, start, k) * site.layer.gamma]
        return input_cots, sqnorm


def _positions(x):
    """`(n, ..., c)` -> `(n, t, c)`."""
    return ops.reshape(x, [shape_of(x)[0], -1, x.shape[-1]])
