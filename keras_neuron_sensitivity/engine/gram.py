"""Gram matrices at narrow tensors: what everything below them contributes.

Take a tensor `h` that every path from the model's inputs to the later
layers crosses (a separator: in a chain, every layer's output). The part of
a row's squared norm that comes from below `h` is a quadratic form in the
row's cotangent `g` at `h`, per sample:

    weights below h:  ||d(g . h) / d theta||^2 = g^T (J_w J_w^T) g,  J_w = dh / d theta
    inputs:           ||d(g . h) / d x||^2     = g^T (J_x J_x^T) g,  J_x = dh / dx

The Gram matrices `M = J J^T` are `D x D` for the `D` entries of `h`, and
shared by every row that reaches `h`: rows stop there instead of crossing
everything below. The matrices come from `D` rows of their own (one per
entry of `h`) that cross only the layers down to the next such tensor:

    M_w(h) = sum over layers between of V V^T  +  G M_w(h_below) G^T
    M_x(h) = G M_x(h_below) G^T

with `V` the rows' per-sample weight gradients (`Rule.weight_rows`) and `G`
their cotangents at `h_below`. Where `D` is small next to the number of rows
crossing `h` (MobileNet's bottlenecks, every late layer of a CNN) this
removes most of the sweep. `choose_cuts` picks the tensors with a cost model.
Exact zeros stay exact: a zero row gives a zero quadratic form.
"""

import dataclasses
import math

from keras import ops

from keras_neuron_sensitivity.engine import backend

from keras_neuron_sensitivity.engine.rules import base



@dataclasses.dataclass
class Cut:
    """A separator tensor whose Gram matrices stand for everything below it."""

    call: int  # index of the call that produces it
    tensor: int  # its tensor id
    size: int  # `D`: entries per sample
    shape: tuple  # its shape without the batch axis


def separators(calls, inputs):
    """`[(call index, tensor id)]`: outputs that are the only tensor crossing
    from the calls up to them to the calls after them."""
    produced = {t: -1 for t in inputs}
    last_use = {}
    for i, call in enumerate(calls):
        for t in call.inputs:
            last_use[t] = i
        for t in call.outputs:
            produced[t] = i
    spans = [(produced[t], end, t) for t, end in last_use.items() if t in produced]
    out = []
    for i in range(len(calls)):
        alive = [t for start, end, t in spans if start <= i < end]
        if len(alive) == 1 and produced[alive[0]] == i:
            out.append((i, alive[0]))
    return out


def candidates(calls, graph, wrt, values, live, batch, max_bytes):
    """`[Cut]`: the separators that may be cuts, in call order.

    Args:
        calls: the calls up to the last target.
        graph: their `probe.Graph`.
        wrt: the sensitivities computed (`"weights"`, `"inputs"`).
        values: tensor id -> a value of one sample (shapes and dtypes).
        live: tensor id -> whether rows reaching it go on below.
        batch: samples per chunk.
        max_bytes: the most all Gram matrices of one cut may take.
    """
    want_weights = "weights" in wrt
    owners = [id(call.layer) for call in calls if call.weights]
    if want_weights and len(owners) > len(set(owners)):
        # A weight used below and above a cut would need the cross terms
        # between the two parts of its gradient.
        return []
    if "inputs" in wrt and not set(graph.sensitivity_inputs) <= set(graph.inputs):
        # Rows read at an embedded input on their way down: they cannot
        # stop above it (the Gram passes read only the model's inputs).
        return []
    out = []
    for i, t in separators(calls, graph.inputs):
        y = values.get(t)
        if y is None or not backend.is_float(y) or not live.get(t, False):
            continue
        size = int(math.prod(y.shape[1:]))
        if size == 0 or batch * len(wrt) * 4 * size * size > max_bytes:
            continue
        out.append(Cut(i, t, size, tuple(y.shape[1:])))
    return out


def choose_cuts(candidates, targets, call_cost, basis_cost, quad_cost, input_quad):
    """The separators to summarize by Gram matrices (see `plan`)."""
    return plan(candidates, targets, call_cost, basis_cost, quad_cost, input_quad)[1]


def plan(candidates, targets, call_cost, basis_cost, quad_cost, input_quad):
    """The cheapest choice of cuts, by dynamic programming, and its cost.

    Args:
        candidates: `[Cut]` in call order, the tensors allowed as cuts.
        targets: `[(call index, rows)]` of every target, or `[(call index,
            rows, seed)]` where the target's own call costs `seed` for all
            its rows together instead of `rows * call_cost[call]` (and may
            count savings below it, see `methods.predict_costs`).
        call_cost: per call, the cost of one row crossing it.
        basis_cost: `f(below, cut)`: the cost of `cut`'s Gram matrices from
            those of `below` (a `Cut`, or None for the model's inputs),
            beyond the rows crossing the calls between (added here).
        quad_cost: `f(cut)`: one row's quadratic form at `cut`.
        input_quad: one row's cost at the model's inputs.

    Returns:
        `(cost, cuts)`: the cost of the sweep with the chosen cuts, and the
        chosen `[Cut]` in call order (maybe empty).
    """
    prefix = [0.0]
    for c in call_cost:
        prefix.append(prefix[-1] + c)

    def crossing(low, high):  # calls low+1 .. high
        return prefix[high + 1] - prefix[low + 1]

    points = [None] + list(candidates)  # None: the inputs, below every call

    def index(point):
        return -1 if point is None else point.call

    def segment(low, high_index):
        """Targets in (low, high]: their rows cross down to `low`."""
        lo = index(low)
        quad = input_quad if low is None else quad_cost(low)
        total = 0.0
        for call, rows, *seed in targets:
            if lo < call <= high_index:
                charge = rows * (crossing(lo, call) + quad)
                if seed:
                    # Never below the quadratic forms: the seed's savings
                    # may lie under `low`, where the rows do not go.
                    charge = max(charge + seed[0] - rows * call_cost[call], rows * quad)
                total += charge
        return total

    best = {0: (0.0, None)}
    for b in range(1, len(points)):
        cut = points[b]
        options = []
        for a in range(b):
            if a not in best:
                continue
            low = points[a]
            cost = (
                best[a][0]
                + segment(low, cut.call)
                + cut.size * crossing(index(low), cut.call)
                + basis_cost(low, cut)
            )
            options.append((cost, a))
        if options:
            best[b] = min(options)
    final = min(
        (best[a][0] + segment(points[a], math.inf), a) for a in best
    )
    chosen, a = [], final[1]
    while a:
        chosen.append(points[a])
        a = best[a][1]
    return final[0], chosen[::-1]


def quadratic(g, m):
    """`g^T M g` per row: `g` `(r, n, ...)`, `m` `(n, D, D)` -> `(r, n)`."""
    r = g.shape[0]
    flat = ops.reshape(g, base.concat_shapes([r], base.shape_of(m)[:1], [-1]))
    return ops.sum(ops.einsum("rnd,nde->rne", flat, m) * flat, -1)


def sandwich(g, m):
    """`G M G^T` per sample: `g` `(D, n, ...)`, `m` `(n, E, E)` -> `(n, D, D)`."""
    d = g.shape[0]
    flat = ops.reshape(g, base.concat_shapes([d], base.shape_of(m)[:1], [-1]))
    left = ops.einsum("dne,nef->ndf", flat, m)
    return ops.einsum("ndf,enf->nde", left, flat)


def outer(rows):
    """`V V^T` per sample: `(D, n, P)` -> `(n, D, D)`."""
    return ops.einsum("dnp,enp->nde", rows, rows)


def identity_rows(y):
    """`(D, n, ...)`: one row per entry of `y` `(n, ...)`, a one-hot there."""
    shape = base.shape_of(y)
    size = int(math.prod(shape[1:]))
    eye = ops.reshape(ops.eye(size, dtype=y.dtype), [size, 1] + list(shape[1:]))
    return ops.broadcast_to(eye, [size] + list(shape))
