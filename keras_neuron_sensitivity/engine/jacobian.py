"""The derivatives themselves, for one layer: what `neuron_jacobian` returns.

Unlike the norms, these are as large as they are: `(B, C, *shape)` per weight
or input. They are computed one sample at a time by replaying the graph.
"""

import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine.base import variable_tensor
from keras_neuron_sensitivity.engine.sweep import Sweep


def layer_jacobian(graph, inputs, key, wrt):
    """`wrt="inputs"`: one `(B, C, *input_shape)` array per model input.

    `wrt="weights"`: `{path: (B, C, *weight.shape)}` over the trainable weights
    of every layer call replayed up to the target (those upstream of it).
    """
    sweep = Sweep(graph, [key], (wrt,), memory_budget=1)
    target = graph.call(key)
    variables = _upstream_weights(sweep)
    per_sample = []
    for n in range(int(inputs[0].shape[0])):
        sample = [x[n : n + 1] for x in inputs]
        per_sample.append(_one_sample(sweep, target, sample, wrt, variables))
    if wrt == "inputs":
        return [np.concatenate(parts) for parts in zip(*per_sample)]
    return {
        getattr(v, "path", v.name): np.concatenate([s[j] for s in per_sample])
        for j, v in enumerate(variables)
    }


def _upstream_weights(sweep):
    seen, variables = set(), []
    for call in sweep._calls:
        for v in call.weights:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    return variables




def _one_sample(sweep, target, sample, wrt, variables):
    floats = [x for x in sample if x.dtype.is_floating]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(floats)
        values, _ = sweep._forward(sample)
        y = values[target.outputs[0]]
        value = tf.reduce_mean(tf.reshape(y, [1, -1, y.shape[-1]]), axis=1)[0]
    if wrt == "inputs":
        out = []
        for x in sample:
            if not x.dtype.is_floating:
                continue
            j = tape.jacobian(value, x, unconnected_gradients="zero")
            out.append(j.numpy()[None, :, 0])
        return out
    grads = tape.jacobian(
        value, [variable_tensor(v) for v in variables], unconnected_gradients="zero"
    )
    return [g.numpy()[None] for g in grads]
