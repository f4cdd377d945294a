"""The methods behind one seam: exact and estimate, made once per model and
configuration and called at every logged epoch. `__call__(inputs, seed,
snapshot)` returns, per `wrt`, a `Result`, reduced on demand to
`summary.Sensitivities`. `method="auto"` picks between them by the one cost
model (`cost.py`).
"""
import numpy as np

from keras_neuron_sensitivity.engine import summary
from keras_neuron_sensitivity.engine.estimate import Estimator
from keras_neuron_sensitivity.engine.sweep import Sweep

METHODS = ("exact", "estimate", "auto")
DEFAULT_NUM_PROBES = 32

class ExactMethod:
    """The multi-cotangent reverse sweep (`sweep.Sweep`): exact norms."""

    name = "exact"
    num_probes = None

    def __init__(self, graph, keys, wrt, memory_budget):
        self._sweep = Sweep(graph, keys, wrt, memory_budget)

    def __call__(self, inputs, seed=None, snapshot=None):
        per_sample = self._sweep(inputs, snapshot)
        return {w: Result(self, per_sample[w], exact=True) for w in per_sample}


class EstimateMethod:
    """Unbiased estimates of the squares from `num_probes` random JVPs."""

    name = "estimate"

    def __init__(self, graph, keys, wrt, memory_budget, num_probes):
        self.num_probes = num_probes
        self._estimator = Estimator(graph, keys, wrt, num_probes, memory_budget)

    def __call__(self, inputs, seed, snapshot=None):
        squares = self._estimator(inputs, seed, snapshot)
        return {w: Result(self, squares[w], exact=False) for w in squares}


class Result:
    """One method's per-sample output for one `wrt`, reduced on demand.

    Attributes:
        frozen: `{key: (C,) bool}`, the neurons that no trainable weight
            reaches (`upstream.frozen_neurons`), set for the sensitivity to
            weights; None when unknown or for inputs.
    """

    def __init__(self, method, per_key, exact):
        self.method = method
        self.per_key = per_key
        self.exact = exact
        self.frozen = None

    def reduce(self, reduction):
        values, errors, frozen = {}, {}, {}
        for key, raw in self.per_key.items():
            if self.exact:
                values[key] = summary.reduce_samples(raw, reduction)
                errors[key] = np.zeros_like(values[key])
            else:
                values[key], errors[key] = summary.estimate_summary(raw, reduction)
            channels = np.shape(values[key])[-1]
            unreached = np.zeros(channels, bool) if self.frozen is None else self.frozen[key]
            # Frozen only where the value is exactly zero too: a neuron with
            # a measured sensitivity has something trainable upstream.
            frozen[key] = unreached & summary.dead_neurons(values[key])
        return summary.Sensitivities(
            values, self.method.name, errors, self.method.num_probes, frozen
        )



