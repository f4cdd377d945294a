"""The exact engine: one forward pass, then a multi-cotangent reverse sweep.

Every neuron of every selected layer (target) is one cotangent per sample, a
row, pushed back through the per-layer rules (the table is in
`table.py`). At every trainable layer on the way the squared norm of the
row's per-sample weight gradient is added; at the model's inputs the squared
norm of the row's input cotangent is read. Gradients with respect to weights
are never formed for layers with a closed-form rule, and never the `(n, k, P)`
Jacobian.

All targets travel together. The rows arriving at a tensor form a few blocks
`(R, n, ...)`, each holding whole targets in one canonical order (deepest
first): each layer call is crossed once per block (at most `_MAX_STREAMS`),
so the traced graph grows with the number of layer calls, not with calls
times targets. Blocks holding the same target (where a tensor fans out) are
summed target by target.

Shortcuts, each exact:
- a target's own rows start as `Channelwise` cotangents (neuron `k` lives in
  channel `k`); rules that act channel by channel keep them so, and a
  convolution's hop of such rows is a per-channel transposed convolution;
- rows stop at the cut tensors that `gram.py` chooses, where Gram matrices of
  everything below give the rest of their norms as a quadratic form;
- in chunked rounds, rows that a ReLU zeroes (`Rule.live_neurons`) are
  packed out: each sample's live neurons side by side.

Memory is bounded by chunking: the samples into chunks (the Gram passes take
all their rows at once), and every target's neurons into the same number of
rounds, both chosen from the memory budget. When everything fits in one
round (the common case) forward, Gram matrices and reverse are one compiled
call; otherwise a compiled forward per sample chunk feeds a compiled reverse
per round. Each is traced once per probe shape.

Given the selected sites' activity plans, the same compiled forward also
returns their activity sums (`activity.SiteSums`), read off the tensors it
computes anyway: no second forward for the neuron health.
"""

import math

import keras
import numpy as np
from keras import ops
from keras.src.backend import get_keras_mask

from keras_neuron_sensitivity.engine import backend, gram
from keras_neuron_sensitivity.engine.activity import SiteSums
from keras_neuron_sensitivity.engine.cost import MAC_COST, PER_ROW_LOOP_COST

from keras_neuron_sensitivity.engine.rules import base, table
from keras_neuron_sensitivity.engine.rules.base import Channelwise
from keras_neuron_sensitivity.engine.plan import Plan
from keras_neuron_sensitivity.engine.replay import Variables, float32_compute, primary_variables
from keras_neuron_sensitivity.engine.site import Site

WRT_CHOICES = ("weights", "inputs")

# Bytes per row and sample at a layer are estimated from the layer's input and
# output sizes (cotangents in and out, the rule's temporaries) times this.
_ROW_OVERHEAD = 3

# At most this many blocks of rows cross a layer separately (see _streams).
_MAX_STREAMS = 4


class Sweep:
    """Per-sample neuron sensitivities of selected layers of one model.

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the layer calls to evaluate.
        wrt: a tuple of `"weights"` and/or `"inputs"`.
        memory_budget: bytes of working memory one chunk may take.
        activity: `[activity.SitePlan]`, one per key, to read the sites'
            activity in the same forward (`compute`), or None.

    Attributes:
        activity_error: the exception that reading the activity in the
            forward raised, or None. From then on the forward reads none
            (the sensitivities never depend on it).
    """

    def __init__(self, graph, keys, wrt, memory_budget, activity=None):
        self.graph = graph
        self.keys = list(keys)
        self.wrt = tuple(wrt)
        self.memory_budget = int(memory_budget)
        # Calls holding a selected site inside them expose it as an extra
        # output (`probe.Graph.expose`); a target is a call's output.
        calls, tensors = graph.expose(self.keys)
        producer = {
            t: (i, o) for i, call in enumerate(calls) for o, t in enumerate(call.outputs)
        }
        targets = [producer[t][0] for t in tensors]
        with float32_compute([call.layer for call in calls]):
            rules = [table.rule_for_call(call) for call in calls]
        # Where the sensitivity to inputs is read: the float inputs, and the
        # embedded inputs (outputs of calls such as Embedding), see probe.py.
        sensitivity_inputs = set(graph.sensitivity_inputs)
        # Targets (indices into self.keys) in canonical order: deepest first.
        order = sorted(range(len(targets)), key=lambda j: -targets[j])
        seeds = {}
        for j, i in enumerate(targets):
            seeds.setdefault(i, []).append(j)
        self.plan = Plan(
            wrt=self.wrt,
            inputs=list(graph.inputs),
            calls=calls,
            rules=rules,
            targets=targets,
            target_outputs=[producer[t][1] for t in tensors],
            seeds=seeds,
            rank={j: r for r, j in enumerate(order)},
            live={},
            shared=_shared_layers(calls),
            float_inputs=[t for t in graph.inputs if t in sensitivity_inputs],
            embedded=sensitivity_inputs.difference(graph.inputs),
        )
        self.plan.live = _liveness(self.plan)
        self._forward_fn = self._reverse_fn = self._whole_fn = None
        self.sums = None if activity is None else SiteSums(activity)
        self.activity_error = None
        # The masses of the activity's utility read the consumers' kernels,
        # which may lie past the last selected call.
        self.variables = Variables(calls, read=() if self.sums is None else self.sums.calls)

    # --- public -----------------------------------------------------------

    def __call__(self, inputs, snapshot=None):
        """Returns `{wrt: {key: np.ndarray (B, C)}}`: per-sample norms.

        Args:
            inputs: list of tensors, one per model input, batch first.
            snapshot: `{id(variable): value}` to compute on
                (`replay.snapshot_values`), or None for the variables' values
                now.
        """
        return self.compute(inputs, snapshot)[0]

    def compute(self, inputs, snapshot=None):
        """`(norms, activity)`: the norms as `__call__` gives them, and
        `{key: {statistic: (C,) np.ndarray}}` (`activity.summarize`'s) read
        in the same forward, or None (no activity plans, or reading it
        failed: `activity_error`)."""
        with float32_compute([call.layer for call in self.plan.calls]), primary_variables():
            values = self.variables.values(snapshot)
            if self.sums is None:
                return self._compute(values, inputs)
            try:
                return self._compute(values, inputs)
            except Exception as caught:  # noqa: BLE001 - kept for the caller
                # The sensitivities must not depend on the activity: trace
                # again without it (if they fail too, that error is raised).
                self.activity_error, self.sums = caught, None
                self._forward_fn = self._reverse_fn = self._whole_fn = None
                return self._compute(values, inputs)

    def _compute(self, values, inputs):
        if not self.plan.ready:
            with self.variables.scope(values):
                self._make_plan(inputs)
        if self._whole_fn is None:
            self._forward_fn = backend.compile(self._forward_tensors)
            self._reverse_fn = backend.compile(self._reverse_round)
            self._whole_fn = backend.compile(self._whole)
        samples, neurons = self.plan.samples, self.plan.rows
        rounds = max(
            math.ceil(c / k) for c, k in zip(self.plan.widths, neurons, strict=True)
        )
        if rounds == 1 and samples >= int(inputs[0].shape[0]):
            # Everything fits at once: one compiled call, no caches passed
            # between functions.
            out, flat = self._whole_fn(values, inputs)
            squares = {w: [backend.to_host(v).T for v in out[w]] for w in self.wrt}
            flats = [] if flat is None else [backend.to_host(flat)]
        else:
            squares, flats = self._chunked(values, inputs, samples)
        norms = {
            w: {
                key: np.sqrt(np.maximum(squares[w][j], 0.0))
                for j, key in enumerate(self.keys)
            }
            for w in self.wrt
        }
        return norms, self.sums.statistics(flats) if self.sums is not None else None

    def _chunked(self, values, inputs, samples):
        """Squared norms `(B, C)` per wrt and target, chunk by chunk, and
        the activity sums of each chunk (host vectors, `SiteSums.flat`)."""
        batch = int(inputs[0].shape[0])
        blocks = {w: [[] for _ in self.keys] for w in self.wrt}
        flats = []
        for begin in range(0, batch, samples):
            chunk = [_take_rows(x, begin, samples) for x in inputs]
            keep = None
            if self.sums is not None:
                # The last chunk is padded with copies of its first sample.
                keep = backend.as_tensor((np.arange(samples) < batch - begin).astype(np.float32))
            # One forward pass per sample chunk, shared by every round.
            outputs, caches, grams, live, flat = self._forward_fn(values, chunk, keep)
            if flat is not None:
                flats.append(backend.to_host(flat))
            live = [None if v is None else backend.to_host(v).T for v in live]  # (C, n)
            if self.plan.packed is None:
                self._pack(live, samples)
            rows = self._rows(live, samples)
            sums = {w: [np.zeros((c, samples)) for c in self.plan.widths] for w in self.wrt}
            for r in range(max(len(ids) for ids in rows)):
                ids = [
                    per_round[r] if r < len(per_round) else self._idle(j, samples)
                    for j, per_round in enumerate(rows)
                ]
                args = (values, chunk, outputs, caches, grams, [backend.as_tensor(i) for i in ids])
                out = self._reverse_fn(*args)
                for w in self.wrt:
                    for j, value in enumerate(out[w]):
                        _scatter(sums[w][j], ids[j], backend.to_host(value))
            for w in self.wrt:
                for j in range(len(self.keys)):
                    blocks[w][j].append(sums[w][j].T[: min(samples, batch - begin)])
        return {w: [np.concatenate(b) for b in blocks[w]] for w in self.wrt}, flats

    def _pack(self, live, samples):
        """Decides, on the first chunk, which targets' rows are packed.

        A target whose rule says which rows are exactly zero (`Rule.
        live_neurons`: inactive ReLU units) and that has at most 90 % of its
        neurons live on every sample gets its rows packed: each sample's live
        neurons side by side, `(k, n)` neuron ids per round, and no row for a
        dead one. Rows per round are planned again for the live counts.
        """
        widths = list(self.plan.widths)
        self.plan.packed = [False] * len(widths)
        for j, mask in enumerate(live):
            if mask is None or not _channel_path(self.plan.rules[self.plan.targets[j]]):
                continue
            most = int(mask.sum(0).max())
            if most <= 0.9 * widths[j]:
                self.plan.packed[j] = True
                widths[j] = max(1, most)
        if any(self.plan.packed):
            parts = self._parts(widths, samples)
            self.plan.rows = [math.ceil(c / parts) for c in widths]

    def _rows(self, live, samples):
        """Per target, the neuron ids of each round: `(k,)`, or `(k, n)` (-1:
        no row) for packed targets."""
        out = []
        for j, (c, k) in enumerate(zip(self.plan.widths, self.plan.rows)):
            if not self.plan.packed[j]:
                out.append(
                    [np.arange(r * k, r * k + k, dtype=np.int32) for r in range(math.ceil(c / k))]
                )
                continue
            mask = live[j]
            order = np.argsort(~mask, axis=0, kind="stable")  # live neurons first
            ids = np.where(np.take_along_axis(mask, order, 0), order, -1)
            rounds = math.ceil(int(mask.sum(0).max()) / k)
            ids = np.concatenate([ids, -np.ones((rounds * k, samples), int)])
            out.append([ids[r * k : r * k + k].astype(np.int32) for r in range(rounds)])
        return out

    def _idle(self, j, samples):
        """Neuron ids of a round in which target `j` has no rows left."""
        k = self.plan.rows[j]
        if self.plan.packed[j]:
            return -np.ones((k, samples), np.int32)
        return np.full((k,), self.plan.widths[j], np.int32)

    # --- planning -----------------------------------------------------------

    def _reaching(self, cuts=()):
        """Per call: the targets whose rows cross it (it is upstream of them,
        and no cut tensor stops them on the way)."""
        producer = {t: i for i, call in enumerate(self.plan.calls) for t in call.outputs}
        stops = {cut.tensor for cut in cuts}
        reach = [set() for _ in self.plan.calls]
        for j, target in enumerate(self.plan.targets):
            stack = [target]
            while stack:
                i = stack.pop()
                if j in reach[i]:
                    continue
                reach[i].add(j)
                stack.extend(
                    producer[t]
                    for t in self.plan.calls[i].inputs
                    if t in producer and t not in stops
                )
        return reach

    def _make_plan(self, inputs):
        # One forward on one sample gives every tensor's size (only traced,
        # where the backend can: `backend.evaluate_shapes`).
        values = backend.evaluate_shapes(lambda xs: self._forward(xs)[0], [x[:1] for x in inputs])
        self.plan.widths = []
        for j, i in enumerate(self.plan.targets):
            y = values[self.plan.calls[i].outputs[self.plan.target_outputs[j]]]
            if len(y.shape) < 2 or not backend.is_float(y):
                raise ValueError(
                    f"Layer {self.plan.calls[i].key!r} has an output of shape "
                    f"{tuple(y.shape)} and dtype {y.dtype.name}. Expected a "
                    "floating-point output with a channel axis (rank >= 2). "
                    "Leave this layer out of `layers`."
                )
            self.plan.widths.append(int(y.shape[-1]))

        def size(t):
            v = values.get(t)
            return 0 if v is None else int(np.prod(v.shape[1:])) * 4

        # Bytes per row and sample while each call is crossed.
        per_row = []
        for call, rule in zip(self.plan.calls, self.plan.rules):
            io = sum(size(t) for t in call.inputs) + sum(size(t) for t in call.outputs)
            params = sum(int(np.prod(v.shape)) for v in call.weights) * 4
            extra = 0
            if rule is base.GENERIC_RULE or id(call.layer) in self.plan.shared:
                extra = 2 * params + sum(size(t) for t in call.inputs)
            elif call.weights:
                y = values[call.outputs[0]]
                channels = int(y.shape[-1]) if len(y.shape) else 1
                positions = size(call.outputs[0]) // 4 // max(1, channels)
                extra = min(params, positions * positions * 4)
            per_row.append(_ROW_OVERHEAD * io + extra)
        batch = int(inputs[0].shape[0])
        self.plan.cuts = self._plan_cuts(values, per_row, batch)
        self.plan.cut_of = {cut.tensor: b for b, cut in enumerate(self.plan.cuts)}
        self._memory = (per_row, self._reaching(self.plan.cuts), self._basis_bytes(per_row))
        # The Gram passes take all their rows at once: they bound the samples
        # per chunk; the targets' rows are then split in rounds.
        samples = min(batch, max(1, int(self.memory_budget // max(1, self._memory[2]))))
        parts = self._parts(self.plan.widths, samples)
        if self._peak(self.plan.widths, parts, samples) > self.memory_budget:
            samples = max(
                1, int(self.memory_budget // self._peak(self.plan.widths, parts, 1))
            )
            parts = self._parts(self.plan.widths, samples)
        self.plan.samples = min(samples, batch)
        self.plan.rows = [math.ceil(c / parts) for c in self.plan.widths]

    def _peak(self, widths, parts, samples):
        """Bytes of one round of target rows, or of a Gram pass."""
        per_row, reach, basis = self._memory
        rows = [sum(math.ceil(widths[j] / parts) for j in targets) for targets in reach]
        target_rows = max(r * b for r, b in zip(rows, per_row))
        return samples * max(target_rows, basis)

    def _parts(self, widths, samples):
        """Rounds of target rows needed to keep `samples` samples under the budget."""
        per_row, reach, _ = self._memory
        widest = max(widths)

        def peak(parts):
            rows = [sum(math.ceil(widths[j] / parts) for j in targets) for targets in reach]
            return samples * max(r * b for r, b in zip(rows, per_row))

        parts = 1
        while parts < widest and peak(parts) > self.memory_budget:
            parts = min(widest, max(parts + 1, int(parts * 1.25)))
        return parts

    def _basis_bytes(self, per_row):
        """Bytes per sample of the Gram passes: each cut's rows, crossing the
        calls down to the cut below, and the matrices kept."""
        peak, below = 0, -1
        kinds = ("weights" in self.wrt) + ("inputs" in self.wrt)
        matrices = 0
        for cut in self.plan.cuts:
            crossed = max(per_row[below + 1 : cut.call + 1], default=0)
            peak = max(peak, cut.size * crossed)
            matrices += kinds * 4 * cut.size * cut.size
            below = cut.call
        return peak + matrices

    def _plan_cuts(self, values, per_row, batch):
        """The separator tensors whose Gram matrices rows stop at (`gram.py`)."""
        want_weights = "weights" in self.wrt
        kinds = want_weights + ("inputs" in self.wrt)

        def floats(t):
            v = values.get(t)
            return 0 if v is None else int(np.prod(v.shape[1:]))

        call_cost, gram_cost, row_loop = [], [], []
        for call, rule in zip(self.plan.calls, self.plan.rules):
            io = sum(floats(t) for t in call.inputs + call.outputs)
            params = sum(int(np.prod(v.shape)) for v in call.weights) if want_weights else 0
            y = values.get(call.outputs[0])
            positions = floats(call.outputs[0]) // max(
                1, int(y.shape[-1]) if y is not None and len(y.shape) else 1
            )
            macs = positions * params * 2
            if params and (rule is base.GENERIC_RULE or not _overrides(rule, "weight_rows")):
                row_loop.append(params * PER_ROW_LOOP_COST)
            else:
                row_loop.append(0.0)
            call_cost.append(io + macs * MAC_COST + (row_loop[-1] if rule is base.GENERIC_RULE else 0))
            gram_cost.append(params * MAC_COST)
        call_cost = [float(c) for c in call_cost]
        input_size = sum(floats(t) for t in self.plan.float_inputs)
        candidates = gram.candidates(
            self.plan.calls, self.graph, self.wrt, values, self.plan.live, batch, self.memory_budget / 4
        )
        if not candidates:
            return []

        def basis_cost(low, cut):
            lo = -1 if low is None else low.call
            between = range(lo + 1, cut.call + 1)
            if cut.size * max((per_row[i] for i in between), default=0) > self.memory_budget:
                return math.inf
            d = cut.size
            cost = sum(d * d * gram_cost[i] + d * row_loop[i] for i in between)
            if low is not None:
                e = low.size
                cost += kinds * (d * e * e + d * d * e) * MAC_COST
            elif "inputs" in self.wrt:
                cost += d * d * input_size * MAC_COST
            return cost

        def quad_cost(cut):
            return kinds * cut.size * cut.size * MAC_COST + cut.size

        targets = [(i, c) for i, c in zip(self.plan.targets, self.plan.widths)]
        input_quad = input_size if "inputs" in self.wrt else 0.0
        return gram.choose_cuts(
            candidates, targets, call_cost, basis_cost, quad_cost, input_quad
        )

    # --- the compiled computation ------------------------------------------

    def _site(self, call, values):
        return Site(
            call,
            [values[t] for t in call.inputs],
            need_weights="weights" in self.wrt and bool(call.weights),
        )

    def _forward(self, inputs):
        values = dict(zip(self.plan.inputs, inputs))
        sites = []
        for call, rule in zip(self.plan.calls, self.plan.rules):
            site = self._site(call, values)
            with backend.name_scope(_scope("kns_forward", call)):
                outputs, cache = rule.forward(site)
            _carry_masks(site, outputs)
            site.outputs = outputs
            values.update(zip(call.outputs, outputs))
            sites.append((site, cache))
        return values, sites

    def _forward_tensors(self, variables, inputs, keep=None):
        """The forward pass as tensors only: outputs and caches per call, the
        Gram matrices at the cuts, the targets' live neurons and the
        activity sums (`keep`: the samples they count)."""
        with self.variables.scope(variables):
            return self._forward_parts(inputs, keep)

    def _forward_parts(self, inputs, keep=None):
        values, sites = self._forward(inputs)
        flat = None
        if self.sums is not None:
            with backend.name_scope("kns_forward/activity/"):
                flat = self.sums.flat(
                    [sites[i][0].outputs[o] for i, o in zip(self.plan.targets, self.plan.target_outputs)],
                    keep,
                )
        grams = _Grams(self.plan, values, sites).run()
        live = []
        for i, output in zip(self.plan.targets, self.plan.target_outputs):
            site, cache = sites[i]
            rule = self.plan.rules[i]
            # A rule's `live_neurons` speaks of the layer's first output.
            known = output == 0 and _overrides(rule, "live_neurons")
            live.append(rule.live_neurons(site, cache) if known else None)
        return (
            [site.outputs for site, _ in sites],
            [cache for _, cache in sites],
            grams,
            live,
            flat,
        )

    def _whole(self, variables, inputs):
        with self.variables.scope(variables):
            outputs, caches, grams, _, flat = self._forward_parts(inputs)
            return self._reverse_parts(inputs, outputs, caches, grams, None), flat

    def _reverse_round(self, variables, inputs, outputs, caches, grams, ids):
        with self.variables.scope(variables):
            return self._reverse_parts(inputs, outputs, caches, grams, ids)

    def _reverse_parts(self, inputs, outputs, caches, grams, ids):
        """Squared norms `(k_j, n)` per wrt and target for one round.

        `ids[j]` are target `j`'s neurons in this round: `(k_j,)`, or `(k_j,
        n)` for packed targets; ids outside `0 .. C_j - 1` are zero rows.
        None: every neuron of every target (a single round).
        """
        values, sites = self._sites(inputs, outputs, caches)
        return _Reverse(self.plan, values, sites, ids, grams).run()

    def _sites(self, inputs, outputs, caches):
        values = dict(zip(self.plan.inputs, inputs))
        sites = []
        for call, call_outputs, cache in zip(self.plan.calls, outputs, caches):
            site = self._site(call, values)
            site.outputs = call_outputs
            values.update(zip(call.outputs, call_outputs))
            sites.append((site, cache))
        return values, sites


class _Grams:
    """The Gram matrices of every cut, bottom up (see `gram.py`)."""

    def __init__(self, plan, values, sites):
        self.plan = plan
        self.values = values
        self.sites = sites

    def run(self):
        out = []
        below = None
        for cut in self.plan.cuts:
            out.append(self._cut(cut, below, out[-1] if out else None))
            below = cut
        return out

    def _cut(self, cut, below, below_grams):
        plan = self.plan
        want_weights = "weights" in plan.wrt
        y = self.values[cut.tensor]
        n = base.shape_of(y)[0]
        pending = {cut.tensor: gram.identity_rows(y)}
        stop = -1 if below is None else below.call
        weight_gram = None
        for i in range(cut.call, stop, -1):
            call = plan.calls[i]
            outs = [pending.pop(t, None) for t in call.outputs]
            if all(g is None for g in outs):
                continue
            site, cache = self.sites[i]
            outs = [
                g if g is not None else ops.zeros(
                    base.concat_shapes([cut.size], base.shape_of(v)), v.dtype
                )
                for g, v in zip(outs, site.outputs)
            ] if len(outs) > 1 else outs
            rule = plan.rules[i]
            need_inputs = any(plan.live.get(t, False) for t in call.inputs)
            need_weights = want_weights and bool(call.weights)
            with backend.name_scope(_scope("kns_gram", call)):
                if need_weights:
                    rows = rule.weight_rows(site, cache, outs)
                    weight_gram = _add(weight_gram, gram.outer(_cast(rows)))
                if not need_inputs:
                    continue
                input_cots, _ = rule.backward(site, cache, outs, True, False)
            for t, g in zip(call.inputs, input_cots or ()):
                if g is None or not plan.live.get(t, False):
                    continue
                if isinstance(g, Channelwise):
                    g = g.dense(self.values[t].shape[-1])
                pending[t] = g if t not in pending else pending[t] + g
        with backend.name_scope("kns_gram/products/"):
            zeros = ops.zeros([n, cut.size, cut.size], _float_dtype(self.values))
            grams = {}
            if below is None:
                if "inputs" in plan.wrt:
                    terms = [
                        gram.outer(ops.reshape(_cast(pending[t]), [cut.size, n, -1]))
                        for t in plan.float_inputs
                        if t in pending
                    ]
                    grams["inputs"] = sum(terms) if terms else zeros
            else:
                g = pending.get(below.tensor)
                for w in plan.wrt:
                    grams[w] = zeros if g is None else gram.sandwich(_cast(g), below_grams[w])
            if want_weights:
                grams["weights"] = _add(grams.get("weights"), weight_gram)
                if grams["weights"] is None:
                    grams["weights"] = zeros
            return grams


class _Block:
    """The rows of some targets at one tensor.

    `value` is `(R, n, ...)`, or a `Channelwise` of `R` rows; its rows are
    the `k_j` rows of each target in `segments`, in canonical order. `sq` is
    the `(R, n)` weight term gathered on the way here, or None. When rows
    split (a layer with several inputs), `sq` goes with one of them only, so
    that each layer's term is counted once when they meet again.
    """

    __slots__ = ("value", "segments", "sq")

    def __init__(self, value, segments, sq):
        self.value = value
        self.segments = tuple(segments)
        self.sq = sq

    @property
    def channelwise(self):
        return isinstance(self.value, Channelwise)


class _Reverse:
    """One round of the reverse sweep, traced into the caller's graph."""

    def __init__(self, plan, values, sites, ids, grams):
        self.plan = plan
        self.values = values
        self.sites = sites
        self.ids = ids
        self.grams = grams
        self.rows = plan.rows  # k_j per target
        self.n = base.shape_of(values[plan.inputs[0]])[0]
        self.want_weights = "weights" in plan.wrt
        self.harvest = {w: [] for w in plan.wrt}
        self.shared = {}

    # --- rows -------------------------------------------------------------

    def _offsets(self, segments):
        offsets, at = {}, 0
        for j in segments:
            offsets[j] = at
            at += self.rows[j]
        return offsets

    def _runs(self, a, b):
        """Maximal runs of the union of two segment lists, with where each
        run sits in `a` and in `b` (row offset, or None when absent)."""
        rank = self.plan.rank
        union = sorted(set(a) | set(b), key=rank.__getitem__)
        off_a, off_b = self._offsets(a), self._offsets(b)
        runs = []
        for j in union:
            state = (j in off_a, j in off_b)
            if runs and runs[-1][0] == state:
                runs[-1][1].append(j)
            else:
                runs.append((state, [j]))
        out = []
        for (in_a, in_b), segs in runs:
            size = sum(self.rows[j] for j in segs)
            out.append(
                (
                    segs,
                    size,
                    off_a[segs[0]] if in_a else None,
                    off_b[segs[0]] if in_b else None,
                )
            )
        return union, out

    def _combine(self, a, b, runs, n_rows_fill):
        """Rows of two tensors laid out by `runs`; absent rows are zeros
        (`n_rows_fill(size)` makes them) when `a` or `b` is None."""
        pieces = []
        for _, size, at_a, at_b in runs:
            part_a = None if a is None or at_a is None else a[at_a : at_a + size]
            part_b = None if b is None or at_b is None else b[at_b : at_b + size]
            if part_a is not None and part_b is not None:
                pieces.append(part_a + part_b)
            elif part_a is not None or part_b is not None:
                pieces.append(part_a if part_a is not None else part_b)
            else:
                pieces.append(n_rows_fill(size))
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, 0)

    def _merge(self, a, b, width):
        """One block for the rows of two blocks at the same tensor."""
        if a.channelwise != b.channelwise:
            a, b = self._dense(a, width), self._dense(b, width)
        if a.segments == b.segments:
            if a.channelwise:
                a, b = self._dense(a, width), self._dense(b, width)
            return _Block(a.value + b.value, a.segments, _add(a.sq, b.sq))
        union, runs = self._runs(a.segments, b.segments)
        if a.channelwise and any(x is not None and y is not None for _, _, x, y in runs):
            a, b = self._dense(a, width), self._dense(b, width)
        sq = None
        if a.sq is not None or b.sq is not None:
            dtype = (a.sq if a.sq is not None else b.sq).dtype
            sq = self._combine(
                a.sq, b.sq, runs, lambda size: ops.zeros([size, self.n], dtype)
            )
        if a.channelwise:
            if a.value.per_sample != b.value.per_sample:
                a, b = self._per_sample(a), self._per_sample(b)
            values = self._combine(a.value.values, b.value.values, runs, None)
            channels = self._combine(a.value.channels, b.value.channels, runs, None)
            return _Block(Channelwise(values, channels), union, sq)
        return _Block(self._combine(a.value, b.value, runs, None), union, sq)

    def _per_sample(self, block):
        """A channelwise block with `(k, n)` channels (packed rows have them)."""
        value = block.value
        if value.per_sample:
            return block
        k = value.channels.shape[0]
        channels = ops.broadcast_to(value.channels[:, None], [k, self.n])
        return _Block(Channelwise(value.values, channels), block.segments, block.sq)

    def _merge_all(self, blocks, width):
        out = None
        for block in blocks:
            out = block if out is None else self._merge(out, block, width)
        return out

    def _dense(self, block, width):
        if not block.channelwise:
            return block
        return _Block(block.value.dense(width), block.segments, block.sq)

    def _expand(self, block, segments, like):
        """`block`'s rows laid out as `segments` (a superset), zeros elsewhere."""
        if block is None:
            return None
        if block.segments == tuple(segments):
            return block.value
        _, runs = self._runs(segments, block.segments)
        shape = base.shape_of(like)

        def zeros(size):
            return ops.zeros(base.concat_shapes([size], shape), like.dtype)

        return self._combine(None, block.value, runs, zeros)

    def _seed(self, j, y):
        """Target `j`'s rows at its own output: a `Channelwise` block."""
        k = self.rows[j]
        channels = y.shape[-1]
        positions = int(np.prod(y.shape[1:-1]))
        shape = base.concat_shapes([k], base.shape_of(y)[:-1])
        values = ops.full(shape, 1.0 / positions, dtype=y.dtype)
        if self.ids is None:
            index = ops.arange(channels)
        else:
            raw = self.ids[j]
            keep = ops.cast((raw >= 0) & (raw < channels), y.dtype)
            lead = len(raw.shape)
            values *= ops.reshape(keep, list(raw.shape) + [1] * (len(y.shape) - lead))
            index = ops.clip(raw, 0, channels - 1)
        return _Block(Channelwise(values, index), [j], None)

    def _seed_start(self, j):
        return 0 if self.ids is None else self.ids[j][0]

    # --- the sweep ----------------------------------------------------------

    def run(self):
        plan = self.plan
        pending = {}
        for i in range(len(plan.calls) - 1, -1, -1):
            call = plan.calls[i]
            arriving = [pending.pop(t, []) for t in call.outputs]
            for t, blocks in zip(call.outputs, arriving):
                if t in plan.cut_of and blocks:
                    with backend.name_scope(f"kns_reverse/cut_{plan.cut_of[t]}/"):
                        self._stop_at_cut(t, blocks)
                    blocks.clear()
            seeds = plan.seeds.get(i, [])
            if "inputs" in plan.wrt and plan.embedded.intersection(call.outputs):
                with backend.name_scope("kns_reverse/embedded/"):
                    self._read_embedded(call, arriving, seeds)
            if not seeds and not any(arriving):
                continue
            need_inputs = any(plan.live.get(t, False) for t in call.inputs)
            need_weights = self.want_weights and bool(call.weights)
            if not (need_inputs or need_weights):
                for blocks in arriving:
                    for block in blocks:
                        self._harvest_sq(block.segments, block.sq)
                continue
            with backend.name_scope(_scope("kns_reverse", call)):
                results = self._cross(i, arriving, seeds, need_inputs, need_weights)
            for input_cots, sq, segments in results:
                attached = False
                for t, g in zip(call.inputs, input_cots or ()):
                    if g is None or not plan.live.get(t, False):
                        continue
                    pending.setdefault(t, []).append(
                        _Block(g, segments, None if attached else sq)
                    )
                    attached = True
                if not attached:
                    self._harvest_sq(segments, sq)
        with backend.name_scope("kns_reverse/inputs/"):
            for t in plan.float_inputs:
                blocks = pending.pop(t, [])
                if not blocks:
                    continue
                width = self.values[t].shape[-1]
                block = self._merge_all(blocks, width)
                self._harvest_sq(block.segments, block.sq)
                if "inputs" in plan.wrt:
                    self.harvest["inputs"].append((block.segments, _row_sqnorm(block.value)))
            for blocks in pending.values():
                for block in blocks:
                    self._harvest_sq(block.segments, block.sq)
            for segments, flat in self.shared.values():
                self._harvest_sq(segments, ops.sum(ops.square(flat), -1))
        return self._assemble()

    def _read_embedded(self, call, arriving, seeds):
        """The sensitivity to an embedded input (an output of `call`): the
        rows arriving there, and the seeds of a target that is `call`."""
        for t, blocks in zip(call.outputs, arriving):
            if t not in self.plan.embedded:
                continue
            if blocks:
                block = self._merge_all(blocks, self.values[t].shape[-1])
                blocks[:] = [block]
                self.harvest["inputs"].append((block.segments, _row_sqnorm(block.value)))
            for j in seeds:
                if t == call.outputs[self.plan.target_outputs[j]]:
                    seed = self._seed(j, self.values[t])
                    self.harvest["inputs"].append((seed.segments, _row_sqnorm(seed.value)))

    def _stop_at_cut(self, t, blocks):
        """Rows that reach a cut: everything below is their quadratic form."""
        grams = self.grams[self.plan.cut_of[t]]
        width = self.values[t].shape[-1]
        for block in self._streams(blocks, width):
            g = _cast(block.value)
            for w in self.plan.wrt:
                q = gram.quadratic(g, grams[w])
                if w == "weights":
                    self._harvest_sq(block.segments, _add(block.sq, q))
                else:
                    self.harvest["inputs"].append((block.segments, q))

    def _harvest_sq(self, segments, sq):
        if sq is not None and self.want_weights:
            self.harvest["weights"].append((segments, sq))

    def _cross(self, i, arriving, seeds, need_inputs, need_weights):
        """Rows through call `i`: a list of `(input_cots, sq, segments)`."""
        plan = self.plan
        call = plan.calls[i]
        rule = plan.rules[i]
        site, cache = self.sites[i]
        outputs = site.outputs
        is_shared = id(call.layer) in plan.shared
        widths = [y.shape[-1] if len(y.shape) else None for y in outputs]
        if len(outputs) > 1 or is_shared:
            return self._cross_merged(
                i, arriving, seeds, need_inputs, need_weights, widths
            )
        width = widths[0]
        results = []
        dense = [b for b in arriving[0] if not b.channelwise]
        channel = [b for b in arriving[0] if b.channelwise]
        if _channel_path(rule):
            channel += [self._seed(j, outputs[0]) for j in seeds]
        else:
            for j in seeds:  # a rule with its own `seed_backward`
                input_cots, sq = rule.seed_backward(
                    site, cache, self._seed_start(j), self.rows[j],
                    need_inputs, need_weights,
                )
                results.append((input_cots, _cast(sq), (j,)))
        if channel:
            block = self._merge_all(channel, width)
            if block.channelwise:
                input_cots, sq = rule.channel_backward(
                    site, cache, block.value, need_inputs, need_weights
                )
                results.append((input_cots, _add(block.sq, _cast(sq)), block.segments))
            else:
                dense.append(block)
        for block in self._streams(dense, width):
            input_cots, sq = rule.backward(
                site, cache, [block.value], need_inputs, need_weights
            )
            results.append((input_cots, _add(block.sq, _cast(sq)), block.segments))
        return results

    def _streams(self, blocks, width):
        """The dense blocks at one tensor, each crossing the layer on its own.

        Rows of one target arriving by two paths are added. Other blocks stay
        apart: joining them would copy the larger one (every layer has new
        targets' rows joining), while crossing apart costs only more ops in
        the graph; past `_MAX_STREAMS` blocks the two smallest are joined.
        """
        groups = []
        for block in blocks:
            rest = []
            for other in groups:
                if set(other.segments) & set(block.segments):
                    block = self._merge(other, block, width)
                else:
                    rest.append(other)
            groups = rest + [block]
        while len(groups) > _MAX_STREAMS:
            groups.sort(key=self._num_rows)
            groups = groups[2:] + [self._merge(groups[0], groups[1], width)]
        return [self._dense(b, width) for b in groups]

    def _num_rows(self, block):
        return sum(self.rows[j] for j in block.segments)

    def _cross_merged(self, i, arriving, seeds, need_inputs, need_weights, widths):
        """Layers with several outputs, and layers called more than once:
        every row in one block, with full cotangents."""
        plan = self.plan
        call = plan.calls[i]
        rule = plan.rules[i]
        site, cache = self.sites[i]
        outputs = site.outputs
        is_shared = id(call.layer) in plan.shared
        results = []
        parts = [[self._dense(b, w) for b in blocks] for blocks, w in zip(arriving, widths)]
        position = plan.target_outputs
        for j in seeds:
            if not is_shared and position[j] == 0 and _overrides(rule, "seed_backward"):
                input_cots, sq = rule.seed_backward(
                    site, cache, self._seed_start(j), self.rows[j],
                    need_inputs, need_weights,
                )
                results.append((input_cots, _cast(sq), (j,)))
            else:
                o = position[j]
                parts[o].append(self._dense(self._seed(j, outputs[o]), widths[o]))
        merged = [
            self._merge_all(blocks, w) if blocks else None
            for blocks, w in zip(parts, widths)
        ]
        present = [b for b in merged if b is not None]
        if not present:
            return results
        union = present[0].segments
        for b in present[1:]:
            union = tuple(self._runs(union, b.segments)[0])
        sq = None
        for b in present:
            if b.sq is not None:
                _, runs = self._runs(union, b.segments)
                piece = self._combine(
                    None, b.sq, runs,
                    lambda size, d=b.sq.dtype: ops.zeros([size, self.n], d),
                )
                sq = _add(sq, piece)
        cotangents = [self._expand(b, union, y) for b, y in zip(merged, outputs)]
        input_cots, rule_sq = rule.backward(
            site, cache, cotangents, need_inputs, need_weights and not is_shared
        )
        if need_weights and is_shared:
            self._share(call, site, cotangents, union)
        results.append((input_cots, _add(sq, _cast(rule_sq)), union))
        return results

    def _share(self, call, site, cotangents, segments):
        """A layer called more than once: its per-sample gradient is the sum
        over calls, so per-call norms cannot be added; the vectors can."""
        flat = base.GenericRule.flat_grads(site, cotangents)
        flat = ops.reshape(flat, [-1, self.n, flat.shape[-1]])
        previous = self.shared.get(id(call.layer))
        if previous is None:
            self.shared[id(call.layer)] = (tuple(segments), flat)
            return
        union, runs = self._runs(previous[0], segments)
        self.shared[id(call.layer)] = (
            tuple(union),
            self._combine(previous[1], flat, runs, None),
        )

    def _assemble(self):
        """`{wrt: [(k_j, n) per target, in the order of keys]}`."""
        out = {}
        for w in self.plan.wrt:
            per_target = {}
            for segments, sq in self.harvest[w]:
                sq = _cast(sq)
                offsets = self._offsets(segments)
                for j in segments:
                    piece = sq[offsets[j] : offsets[j] + self.rows[j]]
                    per_target[j] = _add(per_target.get(j), piece)
            out[w] = [
                per_target[j]
                if j in per_target
                else ops.zeros([self.rows[j], self.n], _float_dtype(self.values))
                for j in range(len(self.plan.targets))
            ]
        return out


def _liveness(plan):
    """Tensor id -> whether a cotangent there is worth computing."""
    want_weights = "weights" in plan.wrt
    read = set(plan.float_inputs) | plan.embedded if "inputs" in plan.wrt else set()
    live = {t: t in read for t in plan.inputs}
    for call in plan.calls:
        owns = want_weights and bool(call.weights)
        flows = any(live.get(t, False) for t in call.inputs)
        for t in call.outputs:
            live[t] = owns or flows or t in read
    return live


def _shared_layers(calls):
    """Ids of the layers with weights called more than once."""
    counts = {}
    for call in calls:
        if call.weights:
            counts[id(call.layer)] = counts.get(id(call.layer), 0) + 1
    return {layer for layer, n in counts.items() if n > 1}


def _row_sqnorm(value):
    """`(R, n)`: squared norm of each row of a block's value."""
    if isinstance(value, Channelwise):
        value = value.values
    return base.sum_squares_per_row(_cast(value))


def _channel_path(rule):
    """Whether seeds go to `channel_backward` (else to `seed_backward`)."""
    return _overrides(rule, "channel_backward") or not _overrides(rule, "seed_backward")


def _scatter(total, ids, value):
    """Adds a round's `(k, n)` results to `total` `(C, n)` at neuron `ids`."""
    channels, samples = total.shape
    if ids.ndim == 1:
        ids = np.broadcast_to(ids[:, None], value.shape)
    columns = np.broadcast_to(np.arange(samples)[None], value.shape)
    keep = (ids >= 0) & (ids < channels)
    total[ids[keep], columns[keep]] = value[keep]


def _overrides(rule, method):
    return getattr(type(rule), method) is not getattr(base.Rule, method)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _cast(sq):
    """Norms are float32 (float64 for a float64 model), even under float16."""
    if sq is None or keras.backend.standardize_dtype(sq.dtype) in ("float32", "float64"):
        return sq
    return ops.cast(sq, "float32")


def _float_dtype(values):
    for v in values.values():
        if keras.backend.standardize_dtype(v.dtype) == "float64":
            return "float64"
    return "float32"


def _carry_masks(site, outputs):
    """Sets the Keras masks the layer's own `__call__` would have set on
    `outputs`, which a rule computes without it (a `Dense` on a masked
    sequence passes the mask on to the attention after it): Keras's
    `_set_mask_metadata`, from the first input's mask."""
    layer = site.layer
    if not (
        site.inputs
        and isinstance(layer, keras.layers.Layer)
        and getattr(layer, "supports_masking", False)
    ):
        return
    previous = get_keras_mask(site.inputs[0])
    if previous is not None:
        layer._set_mask_metadata(site.inputs[0], outputs, previous)


def _scope(phase, call):
    """An absolute name scope per layer family, so that a profiler's trace
    groups the sweep's ops by phase and layer class."""
    return f"{phase}/{type(call.layer).__name__}/"


def _take_rows(x, begin, size):
    """Rows `begin .. begin + size - 1`, padded by repeating the first row."""
    rows = x[begin : begin + size]
    missing = size - int(rows.shape[0])
    if missing:
        rows = ops.concatenate([rows, ops.repeat(rows[:1], missing, axis=0)], 0)
    return rows
