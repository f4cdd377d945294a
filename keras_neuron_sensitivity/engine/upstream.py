"""Which neurons have nothing trainable upstream.

With a frozen base (fine-tuning a head, LoRA) many neurons have no trainable
weight upstream of them: their sensitivity to weights is exactly zero, but
they are not dead (they fire, and would respond to training if it could
reach them). They get a status of their own.

A neuron has something trainable upstream on a sample when its value depends
on a trainable weight there. To find that on every backend alike, the probe
batch is replayed once with every trainable weight set to NaN (through a
`keras.StatelessScope`, the model untouched): NaN reaches exactly the values
computed from those weights, through every operation a network uses
(products, sums, activations, normalizations; a ReLU of NaN is NaN, and
`0 * NaN` is NaN), so a neuron that stays finite on every sample has nothing
trainable upstream. `frozen_neurons` returns those; the callers count a
neuron as such only where its sensitivity to weights is also exactly zero,
so a neuron with a measured sensitivity is never called frozen.
"""

import keras
import numpy as np

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import weights_as
from keras_neuron_sensitivity.engine.replay import Replay, float32_compute, primary_variables


def frozen_neurons(graph, keys, inputs):
    """`{key: (C,) bool}`: the neurons no trainable weight reaches on any
    probe sample, or None where that cannot be told (a `tf_keras` model,
    whose variables a scope cannot replace)."""
    replay = Replay(graph, keys)
    variables = replay.weights()
    if not all(isinstance(v, keras.Variable) for v in variables):
        return None
    with float32_compute(replay.layers()), primary_variables():
        nan = [keras.ops.full(tuple(v.shape), float("nan"), dtype=v.dtype) for v in variables]
        with weights_as(variables, nan):
            values = replay.run(inputs)
        outputs = replay.target_outputs(values)
    frozen = {}
    for key, y in zip(keys, outputs):
        y = backend.to_host(y)
        per_sample = y.reshape(y.shape[0], -1, y.shape[-1])
        frozen[key] = ~np.isnan(per_sample).any(axis=(0, 1))
    return frozen
