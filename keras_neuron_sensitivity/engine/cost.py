"""The one cost model: what `method="auto"` reads, and the constants the
exact sweep's own planning (its Gram cuts) uses.

`method="auto"` picks, per `wrt`, the exact sweep when its predicted cost is
at most `EXACT_PREFERENCE` times the estimator's, else the estimator. The
prediction is a count of multiply-adds per sample from the model's shapes
alone (`predict_costs`), so the choice is deterministic for a model and a
probe shape:

- exact: a target's own `C` rows are diagonal (together about one forward
  through its layer); then each row crosses every call that leads to the
  target: the hop to the call's inputs where anything below is wanted, and
  for weights the weight term (closed form from norms for a call with one
  position, such as `Dense`; about a forward's work otherwise);
- estimate: `m` forward-mode passes over the calls up to the last target,
  each about three forwards (primal, tangent, weight-tangent terms), plus,
  to weights, one launch of the compiled function per probe;

plus a fixed cost per operation launched, which dominates small models. The
exact prediction leaves out the sweep's shortcuts (rows kept in one channel,
Gram matrices at narrow tensors), so on deep convolutional networks it
overestimates exact: auto errs towards the estimator there.
"""

import numpy as np

from keras_neuron_sensitivity.engine import backend, gram
from keras_neuron_sensitivity.engine.replay import Replay, float32_compute, primary_variables
from keras_neuron_sensitivity.engine.rules import table
from keras_neuron_sensitivity.engine.rules.base import Rule
from keras_neuron_sensitivity.engine.rules.conv import ConvRule
from keras_neuron_sensitivity.engine.rules.dense import DenseRule

# Exact values are worth this many times the estimator's cost.
EXACT_PREFERENCE = 2.0
# The cost of launching one operation, in multiply-adds of work (about 20 us
# at about 5 GFLOP/s on this project's 2-core CPU).
_OPERATION_COST = 1e5
# Operations per layer call in the exact sweep's compiled function.
_OPS_PER_CALL = 8
# Gram matrices the prediction allows at one cut (a quarter of the default
# memory budget, as the sweep does).
_GRAM_BYTES = 2**28
# One call of the estimator's compiled function (per probe, to weights).
_LAUNCH_COST = 1e7


# Relative cost of one multiply-add in a matrix product against one float
# read or written by an elementwise op (what most hops are), on CPU: the
# sweep's Gram cuts weigh their matrices with it.
MAC_COST = 1 / 16
# A rule without a closed-form `weight_rows` takes one gradient per row.
PER_ROW_LOOP_COST = 200.0


def predict_costs(graph, keys, wrt, inputs, num_probes):
    """`{"exact": cost, "estimate": cost}` for one `wrt`, in multiply-adds.

    Only shapes are used (one sample is replayed to learn them), so the
    prediction is the same for every probe batch of the same shape.
    """
    replay = Replay(graph, keys)
    with float32_compute(replay.layers()), primary_variables():
        values = backend.evaluate_shapes(replay.run, [x[:1] for x in inputs])
    calls = replay.calls
    work, weight_term, ancestors = [], [], []
    producer = {}
    reads_input = []  # per call: whether a float input lies upstream
    has_weights_below = []  # per call: whether a call with weights lies upstream
    for i, call in enumerate(calls):
        outs = [values[t] for t in call.outputs]
        ins = [values[t] for t in call.inputs]
        out_size = sum(_size(y) for y in outs)
        in_size = sum(_size(x) for x in ins if _is_float(x))
        params = sum(int(np.prod(v.shape)) for v in call.weights)
        channels = int(outs[0].shape[-1]) if outs and len(outs[0].shape) else 1
        # A layer with weights does (weights per output channel) multiply-adds
        # per output entry: Dense in*out, Conv T*D*p, Depthwise T*C*kh*kw.
        per_entry = max(1.0, params / max(channels, 1)) if in_size else 1.0
        work.append(in_size + out_size * per_entry)
        # A row's weight term: closed form from norms when the output has one
        # position (Dense: ||h||^2 ||g||^2); over T positions ||U^T G||^2,
        # directly (about a forward's work) or in Gram form (T^2 per channel).
        positions = out_size // max(channels, 1)
        if positions > 1:
            weight_term.append(min(work[-1], positions * out_size + in_size))
        else:
            weight_term.append(in_size + out_size)
        before = set()
        for t in call.inputs:
            if t in producer:
                before |= ancestors[producer[t]] | {producer[t]}
        ancestors.append(before)
        reads_input.append(
            any(t in graph.sensitivity_inputs for t in call.inputs)
            or any(reads_input[j] for j in before)
        )
        has_weights_below.append(any(calls[j].weights for j in before))
        for t in call.outputs:
            producer[t] = i
    want_weights = wrt == "weights"
    # The cost of one (dense) row crossing each call: the hop to its inputs
    # when anything below is wanted, and its weight term.
    row_cost = []
    for i, call in enumerate(calls):
        needs_hop = has_weights_below[i] if want_weights else reads_input[i]
        cost = work[i] if needs_hop else 0.0
        if want_weights and call.weights:
            cost += weight_term[i]
        row_cost.append(cost)
    # A target's own rows are diagonal: together, about one forward. Through
    # per-channel layers below it they stay in one channel (`Channelwise`),
    # down to the first convolution or Dense: there, all rows together cost
    # about one row.
    with float32_compute(replay.layers()):
        rules = [table.rule_for_call(call) for call in calls]
    consumes = [isinstance(rule, (ConvRule, DenseRule)) for rule in rules]
    keeps = [
        type(rule).channel_backward is not Rule.channel_backward and not consumed
        for rule, consumed in zip(rules, consumes)
    ]
    targets = []
    for t, tensor in zip(replay.targets, replay.target_tensors):
        rows = int(values[tensor].shape[-1])
        seed = work[t] * (2.0 if want_weights else 1.0)
        stack = [t] if keeps[t] else []
        seen = set()
        while stack:
            for tensor in calls[stack.pop()].inputs:
                j = producer.get(tensor)
                if j is None or j in seen:
                    continue
                seen.add(j)
                seed += row_cost[j] * (1 - rows)
                if keeps[j]:
                    stack.append(j)
        targets.append((t, rows, seed))
    # Rows stop at the narrow tensors where the sweep keeps Gram matrices of
    # everything below (gram.py): the same dynamic programme, on these costs.
    batch = int(inputs[0].shape[0])
    live = has_weights_below if want_weights else reads_input
    live = {
        t: live[i] or (want_weights and bool(call.weights))
        for i, call in enumerate(calls)
        for t in call.outputs
    }
    candidates = gram.candidates(calls, graph, (wrt,), values, live, batch, _GRAM_BYTES)
    input_size = sum(_size(values[t]) for t in graph.inputs if t in graph.sensitivity_inputs)

    def basis_cost(low, cut):
        lo = -1 if low is None else low.call
        d = cut.size
        params = sum(
            sum(int(np.prod(v.shape)) for v in calls[i].weights)
            for i in range(lo + 1, cut.call + 1)
        )
        cost = d * d * params if want_weights else 0.0
        if low is not None:
            cost += d * low.size * (low.size + d)
        elif not want_weights:
            cost += d * d * input_size
        return cost

    exact, _ = gram.plan(
        candidates,
        targets,
        row_cost,
        basis_cost,
        lambda cut: cut.size * (cut.size + 1),
        0.0 if want_weights else input_size,
    )
    # The estimator: each probe is about three forwards (primal, tangent and
    # the weight tangent's terms). To weights one compiled call per probe; to
    # inputs the probes run side by side in one call.
    estimate = num_probes * 3.0 * sum(work)
    launches = num_probes if want_weights else 1
    return {
        "exact": batch * exact + _OPERATION_COST * _OPS_PER_CALL * len(calls),
        "estimate": batch * estimate
        + _OPERATION_COST * 3 * launches * len(work)
        + _LAUNCH_COST * launches,
    }


def choose(costs):
    """`"exact"` when its cost is at most `EXACT_PREFERENCE` times the other."""
    return "exact" if costs["exact"] <= EXACT_PREFERENCE * costs["estimate"] else "estimate"


def _size(x):
    return int(np.prod(x.shape[1:])) if hasattr(x, "shape") and len(x.shape) else 1


def _is_float(x):
    return hasattr(x, "dtype") and backend.is_float(x)
