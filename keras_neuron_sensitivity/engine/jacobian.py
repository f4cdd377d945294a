"""The derivatives themselves, for one layer: what `neuron_jacobian` returns.

Unlike the norms, these are as large as they are: `(B, C, *shape)` per weight
or input. They are computed one sample at a time by replaying the graph.
"""

import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine.base import variable_tensor
from keras_neuron_sensitivity.engine.replay import (
    Replay,
    float32_compute,
    neuron_values,
    primary_variables,
)


def layer_jacobian(graph, inputs, key, wrt):
    """`wrt="inputs"`: one `(B, C, *shape)` array per sensitivity input (the
    float inputs and the embedded inputs computed up to the target).

    `wrt="weights"`: `{path: (B, C, *weight.shape)}` over the trainable weights
    of every layer call replayed up to the target (those upstream of it).
    """
    replay = Replay(graph, [key])
    variables = replay.weights()
    with float32_compute(replay.layers()), primary_variables():
        per_sample = [
            _one_sample(replay, [x[n : n + 1] for x in inputs], wrt, variables)
            for n in range(int(inputs[0].shape[0]))
        ]
    if wrt == "inputs":
        return [np.concatenate(parts) for parts in zip(*per_sample)]
    return {
        getattr(v, "path", v.name): np.concatenate([s[j] for s in per_sample])
        for j, v in enumerate(variables)
    }


def _one_sample(replay, sample, wrt, variables):
    sensitivity = replay.graph.sensitivity_inputs
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x for t, x in zip(replay.graph.inputs, sample) if t in sensitivity])
        values = replay.run(sample, tape=tape)
        (y,) = replay.target_outputs(values)
        value = neuron_values(y)[0]
    # A loop over neurons, not pfor: pfor's Jacobian through
    # MultiHeadAttention gives wrong rows, then corrupts the heap (TF 2.21).
    if wrt == "inputs":
        # At the float inputs and the embedded inputs the target depends on.
        return [
            tape.jacobian(
                value, values[t], unconnected_gradients="zero", experimental_use_pfor=False
            ).numpy()[None, :, 0]
            for t in sensitivity
            if t in values
        ]
    grads = tape.jacobian(
        value,
        [variable_tensor(v) for v in variables],
        unconnected_gradients="zero",
        experimental_use_pfor=False,
    )
    return [g.numpy()[None] for g in grads]
