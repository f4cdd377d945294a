"""Rules for `Dense` layers."""

from keras import ops

from keras_neuron_sensitivity.engine import backend

from keras_neuron_sensitivity.engine.rules.base import (
    Rule,
    activation_backward,
    activation_forward,
    activation_kind,
    channel_sqnorm,
    gather_channels,
    live_rows,
    outer_sqnorm,
    shape_of,
)
from keras_neuron_sensitivity.engine.rules.einsum_dense import exact_weights, lora_scale


class DenseRule(Rule):
    """`Dense`: `||dW||^2 = ||h||^2 ||g_z||^2`, bias `||g_z||^2`; with LoRA,
    the factors' terms (`einsum_dense.py`)."""

    def applies(self, layer):
        return exact_weights(layer)

    def forward(self, site):
        layer = site.layer
        (h,) = site.inputs
        z = ops.matmul(h, layer.kernel) if len(h.shape) == 2 else ops.tensordot(
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
        if need_weights:
            with backend.name_scope("weight_term"):
                sqnorm = _weight_sqnorm(site, h, gz)
        input_cots = None
        if need_inputs:
            with backend.name_scope("hop"):
                input_cots = [ops.einsum("kn...o,io->kn...i", gz, layer.kernel)]
        return input_cots, sqnorm

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        layer = site.layer
        h, act = cache
        if activation_kind(layer.activation) not in ("linear", "elementwise") or getattr(
            layer, "lora_enabled", False
        ):
            return super().channel_backward(
                site, cache, cotangent, need_inputs, need_weights
            )
        # Row k's pre-activation cotangent is d_k e_{channels[k]}: its kernel
        # gradient is the one column h d_k, its hop d_k W[:, channels[k]].
        d = cotangent.values  # (k, n, *positions)
        if act is not None:
            d = d * gather_channels(act, cotangent.channels)
        k = d.shape[0]
        n = shape_of(h)[0]
        sqnorm = None
        if need_weights:
            with backend.name_scope("weight_term"):
                trainable = {id(v) for v in site.weights}
                u = ops.reshape(h, [n, -1, h.shape[-1]])
                flat = ops.reshape(d, [k, n, -1])
                sqnorm = ops.zeros([k, n], d.dtype)
                if id(layer._kernel) in trainable:
                    sqnorm += channel_sqnorm(u, flat)
                if layer.bias is not None and id(layer.bias) in trainable:
                    sqnorm += ops.square(ops.sum(flat, -1))
        input_cots = None
        if need_inputs:
            with backend.name_scope("hop"):
                # Rows of W^T, one per neuron (and sample, when packed).
                rows = ops.take(ops.transpose(layer.kernel), cotangent.channels, axis=0)
                if cotangent.per_sample:  # rows (k, n, i)
                    hop = d[..., None] * ops.reshape(
                        rows, list(rows.shape[:2]) + [1] * (len(d.shape) - 2) + [-1]
                    )
                else:
                    hop = ops.einsum("kn...,ki->kn...i", d, rows)
                input_cots = [hop]
        return input_cots, sqnorm

    def live_neurons(self, site, cache):
        _, act = cache
        if activation_kind(site.layer.activation) != "elementwise":
            return None
        return live_rows(act)

    def weight_rows(self, site, cache, cotangents):
        layer = site.layer
        if getattr(layer, "lora_enabled", False):
            return super().weight_rows(site, cache, cotangents)
        trainable = {id(v) for v in site.weights}
        h, act = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        k = gz.shape[0]
        n = shape_of(h)[0]
        u = ops.reshape(h, [n, -1, h.shape[-1]])
        g = ops.reshape(gz, [k, n, -1, gz.shape[-1]])
        rows = []
        if id(layer._kernel) in trainable:
            rows.append(ops.reshape(ops.einsum("nti,knto->knio", u, g), [k, n, -1]))
        if layer.bias is not None and id(layer.bias) in trainable:
            rows.append(ops.sum(g, 2))
        return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]


def _weight_sqnorm(site, h, gz):
    """`(k, n)`: the squared norm of the per-sample gradient over the
    trainable ones of the kernel (or its LoRA factors) and the bias."""
    layer = site.layer
    trainable = {id(v) for v in site.weights}
    k = gz.shape[0]
    n = shape_of(h)[0]
    u = ops.reshape(h, [n, -1, h.shape[-1]])
    g = ops.reshape(gz, [k, n, -1, gz.shape[-1]])
    total = ops.zeros([k, n], gz.dtype)
    if id(layer._kernel) in trainable:
        total += outer_sqnorm(u, g)
    if getattr(layer, "lora_enabled", False):
        s2 = lora_scale(layer) ** 2
        a, b = layer.lora_kernel_a, layer.lora_kernel_b  # (i, r), (r, o)
        if id(a) in trainable:
            total += s2 * outer_sqnorm(u, ops.einsum("knto,ro->kntr", g, b))
        if id(b) in trainable:
            total += s2 * outer_sqnorm(ops.einsum("nti,ir->ntr", u, a), g)
    if layer.bias is not None and id(layer.bias) in trainable:
        total += ops.sum(ops.square(ops.sum(g, 2)), -1)
    return total
