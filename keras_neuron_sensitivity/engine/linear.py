"""Rule for layers that are linear maps of their float inputs.

`AveragePooling`, `UpSampling`, `Resizing` and linear Keras operations
(`reshape`, `transpose`, `mean`, ...): their Jacobian does not depend on the
input, so the hop is one batched VJP of the layer replayed on zeros, for all
`k * n` cotangent rows at once; nothing needs caching.
"""

import tensorflow as tf

from keras_neuron_sensitivity.engine.base import Rule, merge, split, tile_rows


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
            tf.zeros_like(tile_rows(x, k)) if x.dtype.is_floating else tile_rows(x, k)
            for x in site.inputs
        ]
        floats = [x for x in rows if x.dtype.is_floating]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        with tf.GradientTape() as tape:
            tape.watch(floats)
            outs = site.run(rows)
        grads = iter(
            tape.gradient(
                [outs[j] for j in connected],
                floats,
                output_gradients=[merge(cotangents[j]) for j in connected],
            )
        )
        input_cots = []
        for x in rows:
            d = next(grads) if x.dtype.is_floating else None
            input_cots.append(None if d is None else split(tf.convert_to_tensor(d), k))
        return input_cots, None
