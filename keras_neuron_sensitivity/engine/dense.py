"""Rules for `Dense` layers."""

import tensorflow as tf

from keras_neuron_sensitivity.engine.base import (
    Rule,
    activation_backward,
    activation_derivative,
    activation_forward,
    activation_kind,
    outer_sqnorm,
    plain_weights,
    neuron_columns,
    shape_of,
)


class DenseRule(Rule):
    """`Dense`: `||dW||^2 = ||h||^2 ||g_z||^2`, bias `||g_z||^2`."""

    def applies(self, layer):
        return plain_weights(layer)

    def forward(self, site):
        layer = site.layer
        (h,) = site.inputs
        z = tf.matmul(h, layer.kernel) if h.shape.rank == 2 else tf.tensordot(
            h, layer.kernel, axes=1
        )
        if layer.bias is not None:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        return [y], (h, act)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        h, act = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        sqnorm = None
        if need_weights and layer.trainable:
            k = gz.shape[0]
            n = shape_of(h)[0]
            u = tf.reshape(h, [n, -1, h.shape[-1]])
            g = tf.reshape(gz, [k, n, -1, gz.shape[-1]])
            sqnorm = outer_sqnorm(u, g)
            if layer.bias is not None:
                sqnorm += tf.reduce_sum(tf.square(tf.reduce_sum(g, 2)), -1)
        input_cots = None
        if need_inputs:
            input_cots = [tf.einsum("kn...o,io->kn...i", gz, layer.kernel)]
        return input_cots, sqnorm

    def seed_backward(self, site, cache, start, k, need_inputs, need_weights):
        layer = site.layer
        h, act = cache
        if h.shape.rank != 2 or activation_kind(layer.activation) not in ("linear", "elementwise"):
            return super().seed_backward(
                site, cache, start, k, need_inputs, need_weights
            )
        # The pre-activation cotangent of neuron k is d_k e_k: diagonal.
        y = site.outputs[0]
        d = activation_derivative(y, act)
        d = tf.transpose(neuron_columns(d, start, k))
        sqnorm = None
        if need_weights and layer.trainable:
            scale = tf.reduce_sum(tf.square(h), -1)
            if layer.bias is not None:
                scale += 1
            sqnorm = tf.square(d) * scale
        input_cots = None
        if need_inputs:
            columns = neuron_columns(layer.kernel, start, k)
            input_cots = [tf.einsum("kn,ik->kni", d, columns)]
        return input_cots, sqnorm
