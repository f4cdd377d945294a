"""Rules for layers without weights of their own: activations and pure hops."""

import keras
import tensorflow as tf

from keras_neuron_sensitivity.engine.base import (
    ELEMENTWISE_ACTIVATIONS,
    Channelwise,
    Rule,
    concat_shapes,
    gather_channels,
    shape_of,
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
        with tf.GradientTape() as tape:
            tape.watch(x)
            (y,) = site.run([x])
        return [y], tape.gradient(y, x)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0] * cache], None

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        channels = cotangent.channels
        values = cotangent.values * gather_channels(cache, channels)
        return [Channelwise(values, channels)], None


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
        return [tf.reshape(g, concat_shapes([g.shape[0]], shape_of(x)))], None


class AddRule(Rule):
    """`Add`: every input receives the output's cotangent."""

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0]] * len(site.inputs), None

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
        return tf.split(g, sizes, axis=axis), None
