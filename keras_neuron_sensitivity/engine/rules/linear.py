"""Rule for layers that are linear maps of their float inputs.

`AveragePooling`, `UpSampling`, `Resizing` and linear Keras operations
(`reshape`, `transpose`, `mean`, ...): their Jacobian does not depend on the
input, so the hop is one batched VJP of the layer replayed on zeros, for all
`k * n` cotangent rows at once; nothing needs caching.
"""

from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import Rule, input_vjp, merge, split, tile_rows, with_mask


class LinearRule(Rule):
    """A layer linear in its floating-point inputs (other inputs: masks, ids)."""

    def __init__(self, exclude=None):
        # `exclude(layer)`: True for configurations that are not linear or
        # have no gradient (`Resizing(interpolation="area")`).
        self._exclude = exclude

    def applies(self, layer):
        return self._exclude is None or not self._exclude(layer)

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        k = next(g for g in cotangents if g is not None).shape[0]
        rows = [
            with_mask(ops.zeros_like(tile_rows(x, k)), tile_rows(x, k))
            if backend.is_float(x) else tile_rows(x, k)
            for x in site.inputs
        ]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        grads = iter(input_vjp(site, rows, connected, [merge(cotangents[j]) for j in connected]))
        input_cots = [split(next(grads), k) if backend.is_float(x) else None for x in rows]
        return input_cots, None
