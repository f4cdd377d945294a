"""The methods behind one seam: exact and estimate, made once per model and
configuration and called at every logged epoch. `__call__(inputs, seed,
snapshot)` returns an `Output`: per `wrt`, a `Result`, reduced on demand to
`summary.Sensitivities`, and, for a method given the sites' activity plans,
their activity read in the method's own forward. `method="auto"` picks
between them by the one cost model (`cost.py`).
"""
import dataclasses

import numpy as np

from keras_neuron_sensitivity.engine import summary
from keras_neuron_sensitivity.engine.estimate import Estimator
from keras_neuron_sensitivity.engine.sweep import Sweep

METHODS = ("exact", "estimate", "auto")
DEFAULT_NUM_PROBES = 32

@dataclasses.dataclass
class Output:
    """What a method's call gives.

    Attributes:
        results: `{wrt: Result}`.
        activity: `{key: {statistic: (C,) np.ndarray}}` read in the
            method's forward (`activity.SiteSums`), or None: not asked for,
            or reading it failed (`activity_error`).
        activity_error: the exception reading the activity raised, or None.
    """

    results: dict
    activity: dict = None
    activity_error: Exception = None


class ExactMethod:
    """The multi-cotangent reverse sweep (`sweep.Sweep`): exact norms.

    `activity`: `[activity.SitePlan]` per key, read in the sweep's forward,
    or None.
    """

    name = "exact"
    num_probes = None

    def __init__(self, graph, keys, wrt, memory_budget, activity=None):
        self._sweep = Sweep(graph, keys, wrt, memory_budget, activity)

    def __call__(self, inputs, seed=None, snapshot=None):
        per_sample, activity = self._sweep.compute(inputs, snapshot)
        results = {w: Result(self, per_sample[w], exact=True) for w in per_sample}
        return Output(results, activity, self._sweep.activity_error)


class EstimateMethod:
    """Unbiased estimates of the squares from `num_probes` random JVPs.

    `activity`: `[activity.SitePlan]` per key, read in the first probe's
    forward, or None.
    """

    name = "estimate"

    def __init__(self, graph, keys, wrt, memory_budget, num_probes, activity=None):
        self.num_probes = num_probes
        self._estimator = Estimator(graph, keys, wrt, num_probes, memory_budget, activity)

    def __call__(self, inputs, seed, snapshot=None):
        squares, activity = self._estimator.compute(inputs, seed, snapshot)
        results = {w: Result(self, squares[w], exact=False) for w in squares}
        return Output(results, activity, self._estimator.activity_error)


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



