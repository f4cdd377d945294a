"""The exact engine: one forward pass, then a multi-cotangent reverse sweep.

For every selected layer `l`, the `C_l` neurons' cotangents travel back
together, as a `(k, n, ...)` block, through the per-layer rules (the table
is in `registry.py`). At every
trainable layer on the way the squared norm of its per-sample weight gradient
is added; at the model's inputs the squared norm of the input cotangent is
read. Gradients with respect to weights are never formed for layers with a
closed-form rule, and never the `(n, k, P)` Jacobian.

Memory is bounded by chunking: `k` neurons and a block of samples at a time
(both chosen from the memory budget). When everything fits in one chunk (the
common case) forward and reverse are one compiled call; otherwise a compiled
forward per sample chunk feeds a compiled reverse per round of neurons. Each
is traced once per probe shape.
"""

import math

import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine import base, registry
from keras_neuron_sensitivity.engine.replay import float32_compute, primary_variables
from keras_neuron_sensitivity.engine.site import Site

WRT_CHOICES = ("weights", "inputs")

# Bytes per row (one neuron of one sample) are estimated from the activations
# of one sample: cotangent, its tiled copy for replayed layers, temporaries.
_ROW_OVERHEAD = 4


class Sweep:
    """Per-sample neuron sensitivities of selected layers of one model.

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the layer calls to evaluate.
        wrt: a tuple of `"weights"` and/or `"inputs"`.
        memory_budget: bytes of working memory one chunk may take.
    """

    def __init__(self, graph, keys, wrt, memory_budget):
        self.graph = graph
        self.keys = list(keys)
        self.wrt = tuple(wrt)
        self.memory_budget = int(memory_budget)
        index = {call.key: i for i, call in enumerate(graph.calls)}
        self._targets = [index[key] for key in self.keys]
        self._calls = graph.calls[: max(self._targets) + 1]
        with float32_compute([call.layer for call in self._calls]):
            self._rules = [registry.rule_for(call.layer) for call in self._calls]
        # Where the sensitivity to inputs is read: the float inputs and the
        # embedded inputs (outputs of calls such as Embedding), see probe.py.
        self._sensitivity_inputs = set(graph.sensitivity_inputs)
        self._live = self._liveness()
        self._shared = self._shared_layers()
        self._plan = None  # (samples per chunk, neurons per chunk per target)
        self._widths = None  # neurons per target
        self._forward_fn = self._reverse_fn = self._whole_fn = None

    # --- public -----------------------------------------------------------

    def __call__(self, inputs):
        """Returns `{wrt: {key: np.ndarray (B, C)}}`: per-sample norms.

        Args:
            inputs: list of tensors, one per model input, batch first.
        """
        with float32_compute([call.layer for call in self._calls]), primary_variables():
            return self._compute(inputs)

    def _compute(self, inputs):
        if self._plan is None:
            self._plan = self._make_plan(inputs)
            self._forward_fn = tf.function(self._forward_tensors, autograph=False)
            self._reverse_fn = tf.function(self._reverse_all, autograph=False)
            self._whole_fn = tf.function(self._whole, autograph=False)
        samples, neurons = self._plan
        rounds = max(
            math.ceil(c / k) for c, k in zip(self._widths, neurons, strict=True)
        )
        if rounds == 1 and samples >= int(inputs[0].shape[0]):
            # Everything fits at once: one compiled call, no caches passed
            # between functions.
            out = self._whole_fn(inputs)
            squares = {w: [v.numpy().T for v in out[w]] for w in self.wrt}
        else:
            squares = self._chunked(inputs, samples, neurons, rounds)
        return {
            w: {
                key: np.sqrt(np.maximum(squares[w][j], 0.0))
                for j, key in enumerate(self.keys)
            }
            for w in self.wrt
        }

    def _chunked(self, inputs, samples, neurons, rounds):
        """Squared norms `(B, C)` per wrt and target, chunk by chunk."""
        batch = int(inputs[0].shape[0])
        widths = self._widths
        blocks = {w: [[] for _ in self.keys] for w in self.wrt}
        for begin in range(0, batch, samples):
            chunk = [_take_rows(x, begin, samples) for x in inputs]
            # One forward pass per sample chunk, shared by every round.
            outputs, caches = self._forward_fn(chunk)
            per_round = {w: [[] for _ in self.keys] for w in self.wrt}
            for r in range(rounds):
                starts = tf.constant([r * k for k in neurons], tf.int32)
                out = self._reverse_fn(chunk, outputs, caches, starts)
                for w in self.wrt:
                    for j, value in enumerate(out[w]):
                        if r * neurons[j] < widths[j]:
                            per_round[w][j].append(value.numpy())
            for w in self.wrt:
                for j, c in enumerate(widths):
                    # (k, n) blocks -> (n, C); drop padded neurons and samples.
                    full = np.concatenate(per_round[w][j], axis=0)[:c].T
                    blocks[w][j].append(full[: min(samples, batch - begin)])
        return {w: [np.concatenate(b) for b in blocks[w]] for w in self.wrt}

    # --- planning -----------------------------------------------------------

    def _liveness(self):
        """Tensor id -> whether a cotangent there is worth computing."""
        want_weights = "weights" in self.wrt
        read = self._sensitivity_inputs if "inputs" in self.wrt else set()
        live = {t: t in read for t in self.graph.inputs}
        for call in self._calls:
            owns = want_weights and bool(call.weights)
            flows = any(live.get(t, False) for t in call.inputs)
            for t in call.outputs:
                live[t] = owns or flows or t in read
        return live

    def _shared_layers(self):
        counts = {}
        for call in self._calls:
            if call.weights:
                counts[id(call.layer)] = counts.get(id(call.layer), 0) + 1
        return {layer for layer, n in counts.items() if n > 1}

    def _make_plan(self, inputs):
        # One eager forward on one sample gives every tensor's size.
        values, _ = self._forward([x[:1] for x in inputs])
        self._widths = []
        for i in self._targets:
            y = values[self._calls[i].outputs[0]]
            if y.shape.rank < 2 or not y.dtype.is_floating:
                raise ValueError(
                    f"Layer {self._calls[i].key!r} has an output of shape "
                    f"{tuple(y.shape)} and dtype {y.dtype.name}. Expected a "
                    "floating-point output with a channel axis (rank >= 2). "
                    "Leave this layer out of `layers`."
                )
            self._widths.append(int(y.shape[-1]))
        per_sample = sum(
            int(np.prod(v.shape[1:])) * v.dtype.size for v in values.values()
        )
        per_row = _ROW_OVERHEAD * per_sample
        for call, rule in zip(self._calls, self._rules):
            if rule is base.GENERIC_RULE or id(call.layer) in self._shared:
                params = sum(
                    int(np.prod(v.shape)) for v in call.weights
                )
                per_row = max(per_row, 2 * 4 * params + per_sample)
        rows = max(1, self.memory_budget // per_row)
        batch = int(inputs[0].shape[0])
        samples = min(batch, rows)
        neurons = [max(1, min(c, rows // samples)) for c in self._widths]
        return samples, neurons

    # --- the compiled computation ------------------------------------------

    def _site(self, call, values):
        return Site(
            call,
            [values[t] for t in call.inputs],
            need_weights="weights" in self.wrt and bool(call.weights),
        )

    def _forward(self, inputs):
        values = dict(zip(self.graph.inputs, inputs))
        sites = []
        for call, rule in zip(self._calls, self._rules):
            site = self._site(call, values)
            outputs, cache = rule.forward(site)
            site.outputs = outputs
            values.update(zip(call.outputs, outputs))
            sites.append((site, cache))
        return values, sites

    def _forward_tensors(self, inputs):
        """The forward pass as tensors only: outputs and caches per call."""
        _, sites = self._forward(inputs)
        return [site.outputs for site, _ in sites], [cache for _, cache in sites]

    def _whole(self, inputs):
        outputs, caches = self._forward_tensors(inputs)
        starts = tf.zeros([len(self._targets)], tf.int32)
        return self._reverse_all(inputs, outputs, caches, starts, single_round=True)

    def _reverse_all(self, inputs, outputs, caches, starts, single_round=False):
        """Squared norms `(k, n)` per target, neurons from `starts[j]` on."""
        values = dict(zip(self.graph.inputs, inputs))
        sites = []
        for call, call_outputs, cache in zip(self._calls, outputs, caches):
            site = self._site(call, values)
            site.outputs = call_outputs
            values.update(zip(call.outputs, call_outputs))
            sites.append((site, cache))
        out = {w: [] for w in self.wrt}
        n = base.shape_of(inputs[0])[0]
        for j, target in enumerate(self._targets):
            k = self._plan[1][j]
            dtype = _result_dtype(values[self._calls[target].outputs[0]])
            if single_round:
                result = self._reverse(values, sites, target, 0, k)
            else:
                # A target with fewer neurons than others is done in fewer
                # rounds: skip it in the later ones.
                result = tf.cond(
                    starts[j] < self._widths[j],
                    lambda: self._reverse(values, sites, target, starts[j], k),
                    lambda: {w: tf.zeros([k, n], dtype) for w in self.wrt},
                )
            for w in self.wrt:
                out[w].append(result[w])
        return out

    def _reverse(self, values, sites, target, start, k):
        """Squared norms `(k, n)` for neurons `start .. start + k - 1`."""
        y = values[self._calls[target].outputs[0]]
        dtype = _result_dtype(y)
        cotangents = {}
        n = base.shape_of(y)[0]
        weights_sq = tf.zeros([k, n], dtype)
        inputs_sq = tf.zeros([k, n], dtype)
        shared = {}
        for i in range(target, -1, -1):
            call = self._calls[i]
            is_seed = i == target
            outs = [cotangents.pop(t, None) for t in call.outputs]
            if "inputs" in self.wrt and self._sensitivity_inputs.intersection(
                call.outputs
            ):  # an embedded input: read its cotangent before it is used up
                read = [base.seed_cotangent(y, start, k)] if is_seed else outs
                for t, g in zip(call.outputs, read):
                    if g is not None and t in self._sensitivity_inputs:
                        inputs_sq += base.sum_squares_per_row(tf.cast(g, dtype))
            if not is_seed and all(g is None for g in outs):
                continue
            need_inputs = any(self._live.get(t, False) for t in call.inputs)
            need_weights = "weights" in self.wrt and bool(
                call.weights
            )
            is_shared = id(call.layer) in self._shared
            if not (need_inputs or need_weights):
                continue
            site, cache = sites[i]
            if is_seed and is_shared:
                outs = [base.seed_cotangent(y, start, k)]
                outs += [None] * (len(call.outputs) - 1)
            if is_seed and not is_shared:
                input_cots, sq = self._rules[i].seed_backward(
                    site, cache, start, k, need_inputs, need_weights
                )
            else:
                input_cots, sq = self._rules[i].backward(
                    site, cache, outs, need_inputs, need_weights and not is_shared
                )
            if sq is not None:
                weights_sq += tf.cast(sq, weights_sq.dtype)
            if need_weights and is_shared:
                flat = base.GenericRule.flat_grads(site, outs)
                prev = shared.get(id(call.layer))
                shared[id(call.layer)] = flat if prev is None else prev + flat
            for t, g in zip(call.inputs, input_cots or ()):
                if g is None or not self._live.get(t, False):
                    continue
                cotangents[t] = g if t not in cotangents else cotangents[t] + g
        for flat in shared.values():
            weights_sq += tf.reshape(tf.reduce_sum(tf.square(flat), -1), [k, -1])
        result = {}
        if "weights" in self.wrt:
            result["weights"] = weights_sq
        if "inputs" in self.wrt:
            terms = [
                base.sum_squares_per_row(tf.cast(cotangents[t], dtype))
                for t in self.graph.inputs
                if t in cotangents and t in self._sensitivity_inputs
            ]
            result["inputs"] = tf.add_n([inputs_sq, *terms])
        return result


def _result_dtype(y):
    """Norms are float32 (float64 for a float64 model), even under float16."""
    return tf.float64 if y.dtype == tf.float64 else tf.float32


def _take_rows(x, begin, size):
    """Rows `begin .. begin + size - 1`, padded by repeating the first row."""
    rows = x[begin : begin + size]
    missing = size - int(rows.shape[0])
    if missing:
        rows = tf.concat([rows, tf.repeat(rows[:1], missing, axis=0)], 0)
    return rows

