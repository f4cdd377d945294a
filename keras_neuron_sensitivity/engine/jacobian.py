"""The derivatives themselves, for one layer: what `neuron_jacobian` returns.

Unlike the norms, these are as large as they are: `(B, C, *shape)` per weight
or input. They are computed one sample at a time by replaying the graph:
one VJP per sample, pulled back once per neuron.
"""

import numpy as np
from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import primal_weights, weights_as
from keras_neuron_sensitivity.engine.replay import (
    Replay,
    Variables,
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
    variables = Variables(replay.calls)
    with float32_compute(replay.layers()), primary_variables(), backend.exact_kernels():
        with variables.scope(variables.values()):
            per_sample = [
                _one_sample(replay, variables, [x[n : n + 1] for x in inputs], wrt)
                for n in range(int(inputs[0].shape[0]))
            ]
    if wrt == "inputs":
        return [np.stack(parts) for parts in zip(*per_sample)]
    return {
        getattr(v, "path", v.name): np.stack([s[j] for s in per_sample])
        for j, v in enumerate(variables.trainable)
    }


def _one_sample(replay, variables, sample, wrt):
    """Per primal, the `(C, *shape)` Jacobian of one sample's neurons (the
    sample axis of an input dropped)."""
    if wrt == "inputs":
        computed = replay.run(sample, calls=replay.embedding_calls())
        ids = [t for t in replay.graph.sensitivity_inputs if t in computed]
        primal = [computed[t] for t in ids]

        def f(at):
            known = {**computed, **dict(zip(ids, at))}
            (y,) = replay.target_outputs(replay.run(sample, values=known))
            return neuron_values(y)[0]

    else:
        trainable = variables.trainable
        primal = primal_weights(trainable)

        def f(weights):
            with weights_as(trainable, weights):
                (y,) = replay.target_outputs(replay.run(sample))
            return neuron_values(y)[0]

    value, pullback = backend.vjp(f, primal)
    channels = int(value.shape[0])
    eye = ops.eye(channels, dtype=value.dtype)
    rows = [[backend.to_host(g) for g in pullback(eye[k])] for k in range(channels)]
    jacobians = [np.stack(per_primal) for per_primal in zip(*rows)]
    if wrt == "inputs":
        return [j[:, 0] for j in jacobians]  # drop the sample axis of size 1
    return jacobians
