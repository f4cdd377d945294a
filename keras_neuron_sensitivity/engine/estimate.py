"""The estimator: every neuron's squared sensitivity from forward-mode JVPs.

One Jacobian-vector product of the replayed graph, with a random tangent `v`
over all trainable weights (or over the float inputs), gives `J_k v` for
*every* neuron `k` of every selected layer at once. With `E[v v^T] = I`,
`E[(J_k v)^2] = ||J_k||^2`, so the mean of `(J_k v_i)^2` over `m` tangents is
an unbiased estimate of the squared norm, whatever the number of neurons.

- Tangents are standard Gaussian, drawn with NumPy from `(seed, wrt, probe
  index)`: the same numbers on every backend, no global random state read or
  advanced, and consecutive seeds give independent streams (NumPy's
  `SeedSequence`; a `tf.random.Generator.from_seed(s + 1)` would replay
  `s`'s numbers shifted, docs/estimator.md). A probe's weight tangent is one
  flat vector, drawn at once and split inside the compiled function: drawn
  variable by variable, eagerly, they cost more than the JVP itself.
- To inputs, every sample gets its own tangent (they are free: the input
  tangent has a batch axis anyway), and the probes run side by side, the
  batch tiled. To weights, one tangent is shared by the whole batch:
  per-sample weight tangents would need one JVP per sample
  (`benchmarks/studies/estimator_tangents.py` measured both at equal cost:
  the shared tangent wins, docs/benchmarks.md).
- An exact zero stays exact: `J_k = 0` gives `J_k v = 0` for every `v`, so a
  dead neuron is exactly 0 here too, and a Gaussian `v` makes a non-zero
  `J_k v` almost surely non-zero.

- The neuron health: given the sites' activity plans, the first probe's
  JVP also returns the selected sites' primal values (the forward it runs
  anyway), whose activity sums (`activity.SiteSums`) are read beside it.

Index letters: `m` probe (tangent), `n` sample, `k` neuron.
"""

import functools
import math

import numpy as np
from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.activity import SiteSums
from keras_neuron_sensitivity.engine.rules.base import primal_weights, weights_as
from keras_neuron_sensitivity.engine.replay import (
    Replay,
    Variables,
    float32_compute,
    neuron_values,
    primary_variables,
)
from keras.src.backend import get_keras_mask, set_keras_mask

_WRT_STREAM = {"weights": 1, "inputs": 2}

# Bytes a sample takes in one probe: its activations, their tangents and
# the temporaries of both, over the replayed calls.
_ROW_OVERHEAD = 4


class Estimator:
    """Squared `J_k v` for `m` random tangents, every selected neuron at once.

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the layer calls to evaluate.
        wrt: a tuple of `"weights"` and/or `"inputs"`.
        num_probes: the number of tangents `m`.
        memory_budget: bytes of working memory one chunk may take.
        activity: `[activity.SitePlan]`, one per key, to read the sites'
            activity in the first probe's forward (`compute`), or None.

    Attributes:
        activity_error: the exception that reading the activity in the
            forward raised, or None. From then on none is read (the
            estimates never depend on it).
    """

    def __init__(self, graph, keys, wrt, num_probes, memory_budget, activity=None):
        self.replay = Replay(graph, keys)
        self.keys = list(keys)
        self.wrt = tuple(wrt)
        self.num_probes = int(num_probes)
        self.memory_budget = int(memory_budget)
        self.sums = None if activity is None else SiteSums(activity)
        self.activity_error = None
        # Read only (the utility's outgoing masses): never given a tangent.
        self.variables = Variables(
            self.replay.calls, read=() if self.sums is None else self.sums.calls
        )
        # To inputs: tangents at the float inputs and the embedded inputs
        # (the outputs of the calls that turn token ids into floats).
        self._sensitivity_inputs = list(graph.sensitivity_inputs)
        self._plan = None  # (samples per chunk, probes per call for inputs)
        self._fns = {}

    def __call__(self, inputs, seed, snapshot=None):
        """Returns `{wrt: {key: np.ndarray (m, B, C)}}`: `(J_k v_i)^2`.

        Args:
            inputs: list of tensors, one per model input, batch first.
            seed: a non-negative int; the same seed gives the same tangents.
            snapshot: `{id(variable): value}` to compute on, or None for
                the variables' values now.
        """
        return self.compute(inputs, seed, snapshot)[0]

    def compute(self, inputs, seed, snapshot=None):
        """`(squares, activity)`: the squares as `__call__` gives them, and
        `{key: {statistic: (C,) np.ndarray}}` (`activity.summarize`'s) read
        in the first probe's forward, or None (no activity plans, or
        reading it failed: `activity_error`)."""
        with float32_compute(self.replay.layers()), primary_variables():
            values = self.variables.values(snapshot)
            if self._plan is None:
                with self.variables.scope(values):
                    self._plan = self._make_plan(inputs)
                for wrt, probe in (("weights", self._weights_probe), ("inputs", self._inputs_probe)):
                    self._fns[wrt] = backend.compile(probe)
                    self._fns[wrt, "activity"] = backend.compile(functools.partial(probe, activity=True))
            flats = [] if self.sums is not None else None
            if flats is not None:
                try:
                    first = self._run(self.wrt[0], inputs, values, seed, flats)
                except Exception as caught:  # noqa: BLE001 - kept for the caller
                    # The estimates must not depend on the activity.
                    self.activity_error, self.sums, flats = caught, None, None
            if flats is None:
                first = self._run(self.wrt[0], inputs, values, seed)
            squares = {self.wrt[0]: first}
            squares.update({w: self._run(w, inputs, values, seed) for w in self.wrt[1:]})
            return squares, None if flats is None else self.sums.statistics(flats)

    # --- planning -----------------------------------------------------------

    def _make_plan(self, inputs):
        """Sample chunks and (to inputs) probes per call under the budget."""
        values = backend.evaluate_shapes(self.replay.run, [x[:1] for x in inputs])
        per_sample = sum(
            math.prod(backend.shape(v)[1:]) * 4
            for v in values.values()
            if hasattr(v, "shape") and len(v.shape)
        )
        rows = max(1, self.memory_budget // (_ROW_OVERHEAD * max(per_sample, 1)))
        batch = int(inputs[0].shape[0])
        samples = min(batch, rows)
        # To inputs, probes side by side in one call: the batch tiled.
        probes = max(1, min(self.num_probes, rows // samples)) if samples == batch else 1
        return samples, probes

    def _run(self, wrt, inputs, values, seed, flats=None):
        """`{key: (m, B, C)}` squares for `wrt`; with a list `flats`, the
        first probe also appends each chunk's activity sums to it."""
        batch = int(inputs[0].shape[0])
        samples, probes = self._plan
        if wrt == "weights":
            probes = 1
        fn = self._fns[wrt]
        at = self._input_shapes(inputs) if wrt == "inputs" else None
        per_probe = []
        for first in range(0, self.num_probes, probes):
            count = min(probes, self.num_probes - first)
            if wrt == "weights":
                tangent = backend.as_tensor(self._weight_tangent(seed, first))
            else:
                full = [self._input_tangents(seed, first + i, at) for i in range(count)]
            chunks = []
            for begin in range(0, batch, samples):
                rows = [x[begin : begin + samples] for x in inputs]
                if wrt == "inputs":
                    n = int(rows[0].shape[0])
                    # Probe i's tangent for these samples: the batch's, sliced,
                    # so that it does not depend on how the batch is chunked.
                    tangent = [
                        backend.as_tensor(
                            np.concatenate([t[j][begin : begin + n] for t in full])
                        )
                        for j in range(len(at))
                    ]
                if flats is not None and first == 0:
                    out, flat = self._fns[wrt, "activity"](values, rows, tangent)
                    flats.append(backend.to_host(flat))
                else:
                    out = fn(values, rows, tangent)
                chunks.append([backend.to_host(o) for o in out])  # (count, n, C)
            per_probe.append([np.concatenate(c, axis=1) for c in zip(*chunks)])
        per_key = [np.concatenate(p, axis=0) for p in zip(*per_probe)]
        return {key: np.square(j) for key, j in zip(self.keys, per_key)}

    # --- tangents -----------------------------------------------------------

    def _weight_tangent(self, seed, probe):
        """One probe's tangent over every trainable weight, as one flat
        float32 vector (split inside the compiled function)."""
        size = sum(math.prod(v.shape) for v in self.variables.trainable)
        rng = np.random.default_rng([seed, _WRT_STREAM["weights"], probe])
        return rng.standard_normal(size, dtype=np.float32)

    def _input_tangents(self, seed, probe, shapes):
        """One probe's tangents at the sensitivity inputs, for the whole
        batch: one float32 array per entry of `shapes`."""
        rng = np.random.default_rng([seed, _WRT_STREAM["inputs"], probe])
        return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]

    def _input_shapes(self, inputs):
        """The shapes of the sensitivity inputs the targets read, for the
        whole batch."""
        with self.variables.scope(self.variables.values()):
            computed = self.replay.run(
                [x[:1] for x in inputs], calls=self.replay.embedding_calls()
            )
        batch = int(inputs[0].shape[0])
        return [
            (batch, *backend.shape(computed[t])[1:])
            for t in self._sensitivity_inputs
            if t in computed
        ]

    # --- the compiled probes --------------------------------------------------

    def _weights_probe(self, values, inputs, flat_tangent, activity=False):
        """`[(1, n, C)]` per target: `J v` for one weight tangent; with
        `activity`, also the sites' activity sums (`SiteSums.flat`)."""
        trainable = self.variables.trainable
        tangents, at = [], 0
        for v in trainable:
            size = math.prod(v.shape)
            tangents.append(
                ops.cast(ops.reshape(flat_tangent[at : at + size], tuple(v.shape)), v.dtype)
            )
            at += size
        with self.variables.scope(values):
            primals = primal_weights(trainable)

            def f(weights):
                with weights_as(trainable, weights):
                    targets = self.replay.target_outputs(self.replay.run(inputs))
                values = [neuron_values(y) for y in targets]
                return (values, _primal_sites(targets)) if activity else values

            if not activity:
                _, jvps = backend.jvp(f, primals, tangents)
                return [_as_float(j)[None] for j in jvps]
            _, jvps, sites = backend.jvp(f, primals, tangents, has_aux=True)
            return [_as_float(j)[None] for j in jvps], self.sums.flat(_with_masks(sites))

    def _inputs_probe(self, values, inputs, tangents, activity=False):
        """`[(count, n, C)]` per target: `J v` for `count` input tangents
        side by side (the `n` samples tiled `count` times); with
        `activity`, also the sites' activity sums on the first `n`."""
        n = int(inputs[0].shape[0])
        count = int(tangents[0].shape[0]) // n if tangents else 1
        tiled = [ops.tile(x, [count] + [1] * (len(x.shape) - 1)) for x in inputs]
        with self.variables.scope(values):
            # Embedded inputs first: they become primals.
            computed = self.replay.run(tiled, calls=self.replay.embedding_calls())
            ids = [t for t in self._sensitivity_inputs if t in computed]
            primals = [computed[t] for t in ids]

            def f(at):
                known = {**computed, **dict(zip(ids, at))}
                targets = self.replay.target_outputs(self.replay.run(tiled, values=known))
                values = [neuron_values(y) for y in targets]
                return (values, _primal_sites(targets)) if activity else values

            tangents = [ops.cast(t, x.dtype) for t, x in zip(tangents, primals)]
            if not activity:
                _, jvps = backend.jvp(f, primals, tangents)
                return [ops.reshape(_as_float(j), (count, n, -1)) for j in jvps]
            _, jvps, sites = backend.jvp(f, primals, tangents, has_aux=True)
            # An embedded input was a primal: its own tensor holds its mask.
            sites = [
                _primal_sites([computed[t]])[0] if t in computed else site
                for t, site in zip(self.replay.target_tensors, sites)
            ]
            first = [tuple(part[:n] for part in site) for site in sites]
            out = [ops.reshape(_as_float(j), (count, n, -1)) for j in jvps]
            return out, self.sums.flat(_with_masks(first))


def _primal_sites(targets):
    """The sites' tensors, each `(y,)` or `(y, mask)`, handed out of a JVP
    as its auxiliary output: the Keras mask is an attribute of the tensor
    object, which the JVP does not hand back (and `torch.func` takes no
    None there)."""
    out = []
    for y in targets:
        mask = get_keras_mask(y)
        y = ops.stop_gradient(y)
        out.append((y,) if mask is None else (y, mask))
    return out


def _with_masks(sites):
    """`[(y,) or (y, mask)]` -> the tensors, each carrying its mask again."""
    out = []
    for y, *mask in sites:
        if mask:
            set_keras_mask(y, mask[0])
        out.append(y)
    return out


def _as_float(x):
    """The JVP as float32 (float64 for a float64 model), even under float16."""
    import keras

    if keras.backend.standardize_dtype(x.dtype) in ("float32", "float64"):
        return x
    return ops.cast(x, "float32")
