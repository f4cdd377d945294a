"""Rules for `ZeroPadding` and `Cropping` (1D/2D/3D, channels last).

Padding's hop crops the cotangent; cropping's hop pads it with zeros.
"""

from keras import ops

from keras_neuron_sensitivity.engine.rules.base import Rule


def _pairs(widths):
    """`(a, b)` (1D) or `((a, b), ...)` -> `[(a, b), ...]`, one per spatial axis."""
    if all(isinstance(w, int) for w in widths):
        return [tuple(widths)]
    return [tuple(w) for w in widths]


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


class ZeroPaddingRule(Rule):
    """`ZeroPadding1D/2D/3D`: the cotangent of the input is the middle part."""

    def applies(self, layer):
        return _channels_last(layer)

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        middle = [slice(None), slice(None)]
        middle += [slice(a, g.shape[2 + i] - b) for i, (a, b) in enumerate(_pairs(site.layer.padding))]
        return [g[tuple(middle)]], None


class CroppingRule(Rule):
    """`Cropping1D/2D/3D`: the cropped borders of the input get zero."""

    def applies(self, layer):
        return _channels_last(layer)

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        g = cotangents[0]
        widths = [[0, 0], [0, 0]] + [list(p) for p in _pairs(site.layer.cropping)] + [[0, 0]]
        return [ops.pad(g, widths)], None
