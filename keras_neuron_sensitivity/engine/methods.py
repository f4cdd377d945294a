"""The methods behind one seam: exact, estimate, and the choice between them.

A method object is made once per model and configuration and called at
every logged epoch. `__call__(inputs, seed)` returns, per `wrt`, a
`summary.Sensitivities` builder: `result(reduction)`.

`method="auto"` picks, per `wrt`, the exact sweep when its predicted cost is
at most `EXACT_PREFERENCE` times the estimator's, else the estimator. The
prediction is a count of multiply-adds per sample from the model's shapes
alone (`predict_costs`), so the choice is deterministic for a model and a
probe shape:

- exact: every target's `C` cotangents travel back through every call that
  leads to the target (hop, and for weights the weight term):
  `sum_l C_l * sum_{calls before l} work(call)`;
- estimate: `m` forward-mode passes over the calls up to the last target,
  each about three forwards (primal, tangent, weight-tangent terms):
  `3 m * sum_calls work(call)`;

plus a fixed cost per operation launched, which dominates small models.
"""

import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine import summary
from keras_neuron_sensitivity.engine.estimate import Estimator
from keras_neuron_sensitivity.engine.replay import Replay, float32_compute, primary_variables
from keras_neuron_sensitivity.engine.sweep import Sweep

METHODS = ("exact", "estimate", "auto")
DEFAULT_NUM_PROBES = 32

# Exact values are worth this many times the estimator's cost.
EXACT_PREFERENCE = 2.0
# The cost of launching one operation, in multiply-adds of work (about 20 us
# at about 5 GFLOP/s on this project's 2-core CPU).
_OPERATION_COST = 1e5


class ExactMethod:
    """The multi-cotangent reverse sweep (`sweep.Sweep`): exact norms."""

    name = "exact"
    num_probes = None

    def __init__(self, graph, keys, wrt, memory_budget):
        self._sweep = Sweep(graph, keys, wrt, memory_budget)

    def __call__(self, inputs, seed=None):
        per_sample = self._sweep(inputs)
        return {w: _Result(self, per_sample[w], exact=True) for w in per_sample}


class EstimateMethod:
    """Unbiased estimates of the squares from `num_probes` random JVPs."""

    name = "estimate"

    def __init__(self, graph, keys, wrt, memory_budget, num_probes):
        self.num_probes = num_probes
        self._estimator = Estimator(graph, keys, wrt, num_probes, memory_budget)

    def __call__(self, inputs, seed):
        squares = self._estimator(inputs, seed)
        return {w: _Result(self, squares[w], exact=False) for w in squares}


class _Result:
    """One method's per-sample output for one `wrt`, reduced on demand."""

    def __init__(self, method, per_key, exact):
        self.method = method
        self.per_key = per_key
        self.exact = exact

    def reduce(self, reduction):
        values, errors = {}, {}
        for key, raw in self.per_key.items():
            if self.exact:
                values[key] = summary.reduce_samples(raw, reduction)
                errors[key] = np.zeros_like(values[key])
            else:
                values[key], errors[key] = summary.estimate_summary(raw, reduction)
        return summary.Sensitivities(
            values, self.method.name, errors, self.method.num_probes
        )


def predict_costs(graph, keys, wrt, inputs, num_probes):
    """`{"exact": cost, "estimate": cost}` for one `wrt`, in multiply-adds.

    Only shapes are used (one sample is replayed to learn them), so the
    prediction is the same for every probe batch of the same shape.
    """
    replay = Replay(graph, keys)
    with float32_compute(replay.layers()), primary_variables():
        values = replay.run([x[:1] for x in inputs])
    work, ancestors = [], []
    producer = {}
    for i, call in enumerate(replay.calls):
        outs = [values[t] for t in call.outputs]
        ins = [values[t] for t in call.inputs]
        out_size = sum(_size(y) for y in outs)
        in_size = sum(_size(x) for x in ins if _is_float(x))
        params = sum(int(np.prod(v.shape)) for v in call.weights)
        channels = int(outs[0].shape[-1]) if outs and outs[0].shape.rank else 1
        # A layer with weights does (weights per output channel) multiply-adds
        # per output entry: Dense in*out, Conv T*D*p, Depthwise T*C*kh*kw.
        per_entry = max(1.0, params / max(channels, 1)) if in_size else 1.0
        work.append(in_size + out_size * per_entry)
        before = set()
        for t in call.inputs:
            if t in producer:
                before |= ancestors[producer[t]] | {producer[t]}
        ancestors.append(before)
        for t in call.outputs:
            producer[t] = i
    passes = 2.0 if wrt == "weights" else 1.0
    exact = 0.0
    exact_ops = 0
    for target in replay.targets:
        crossed = ancestors[target] | {target}
        channels = int(values[replay.calls[target].outputs[0]].shape[-1])
        exact += channels * passes * sum(work[i] for i in crossed)
        exact_ops += len(crossed)
    batch = int(inputs[0].shape[0])
    estimate = num_probes * 3.0 * sum(work)
    return {
        "exact": batch * exact + _OPERATION_COST * 4 * exact_ops,
        "estimate": batch * estimate + _OPERATION_COST * 3 * num_probes * len(work),
    }


def choose(costs):
    """`"exact"` when its cost is at most `EXACT_PREFERENCE` times the other."""
    return "exact" if costs["exact"] <= EXACT_PREFERENCE * costs["estimate"] else "estimate"


def _size(x):
    return int(np.prod(x.shape[1:])) if hasattr(x, "shape") and x.shape.rank else 1


def _is_float(x):
    return hasattr(x, "dtype") and tf.as_dtype(x.dtype).is_floating
