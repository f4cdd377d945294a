"""The estimator: every neuron's squared sensitivity from forward-mode JVPs.

One Jacobian-vector product of the replayed graph, with a random tangent `v`
over all trainable weights (or over the float inputs), gives `J_k v` for
*every* neuron `k` of every selected layer at once. With `E[v v^T] = I`,
`E[(J_k v)^2] = ||J_k||^2`, so the mean of `(J_k v_i)^2` over `m` tangents is
an unbiased estimate of the squared norm, whatever the number of neurons.

- Tangents are standard Gaussian, drawn inside the compiled function from
  stateless random ops keyed by `(seed, wrt, probe index)`: no global random
  state is read or advanced, and consecutive seeds give independent streams
  (a `tf.random.Generator.from_seed(s + 1)` would replay `s`'s numbers
  shifted, DESIGN.md §6b).
- To inputs, every sample gets its own tangent (they are free: the input
  tangent has a batch axis anyway). To weights, one tangent is shared by the
  whole batch: per-sample weight tangents would need one JVP per sample
  (`benchmarks/estimator_tangents.py` measures both at equal cost).
- An exact zero stays exact: `J_k = 0` gives `J_k v = 0` for every `v`, so a
  dead neuron is exactly 0 here too, and a Gaussian `v` makes a non-zero
  `J_k v` almost surely non-zero.

Index letters: `m` probe (tangent), `n` sample, `k` neuron.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity.engine.replay import (
    Replay,
    float32_compute,
    neuron_values,
    primary_variables,
)

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
    """

    def __init__(self, graph, keys, wrt, num_probes, memory_budget):
        self.replay = Replay(graph, keys)
        self.keys = list(keys)
        self.wrt = tuple(wrt)
        self.num_probes = int(num_probes)
        self.memory_budget = int(memory_budget)
        self._variables = self.replay.weights()
        # Keras 3 variables are replaced by explicit values (a pure function
        # of them); tf_keras's are tf.Variables, which the accumulator watches.
        self._stateless = all(isinstance(v, keras.Variable) for v in self._variables)
        # To inputs: tangents at the float inputs and the embedded inputs
        # (the outputs of the calls that turn token ids into floats).
        self._sensitivity_inputs = list(graph.sensitivity_inputs)
        self._plan = None  # (samples per chunk, probes per call for inputs)
        self._fns = {}

    def __call__(self, inputs, seed):
        """Returns `{wrt: {key: np.ndarray (m, B, C)}}`: `(J_k v_i)^2`.

        Args:
            inputs: list of tensors, one per model input, batch first.
            seed: a non-negative int; the same seed gives the same tangents.
        """
        with float32_compute(self.replay.layers()), primary_variables():
            if self._plan is None:
                self._plan = self._make_plan(inputs)
                for w in self.wrt:
                    fn = self._weights_probe if w == "weights" else self._inputs_probe
                    self._fns[w] = tf.function(fn, autograph=False)
            values = self._variables
            if self._stateless:
                values = [tf.convert_to_tensor(v) for v in values]
            return {w: self._run(w, inputs, values, seed) for w in self.wrt}

    # --- planning -----------------------------------------------------------

    def _make_plan(self, inputs):
        """Sample chunks and (to inputs) probes per call under the budget."""
        values = self.replay.run([x[:1] for x in inputs])
        per_sample = sum(
            int(np.prod(v.shape[1:])) * v.dtype.size
            for v in values.values()
            if hasattr(v, "shape")
        )
        rows = max(1, self.memory_budget // (_ROW_OVERHEAD * max(per_sample, 1)))
        batch = int(inputs[0].shape[0])
        samples = min(batch, rows)
        # To inputs, probes side by side in one call: the batch tiled.
        probes = max(1, min(self.num_probes, rows // samples)) if samples == batch else 1
        return samples, probes

    def _run(self, wrt, inputs, values, seed):
        batch = int(inputs[0].shape[0])
        samples, probes = self._plan
        if wrt == "weights":
            probes = 1
        fn = self._fns[wrt]
        seed = tf.constant([seed >> 31, seed & 0x7FFFFFFF], tf.int64)
        stream = tf.constant(_WRT_STREAM[wrt], tf.int64)
        per_probe = []
        for first in range(0, self.num_probes, probes):
            count = min(probes, self.num_probes - first)
            chunks = []
            for begin in range(0, batch, samples):
                rows = [x[begin : begin + samples] for x in inputs]
                out = fn(
                    rows, values, seed, stream,
                    tf.constant(first, tf.int64), count, tf.constant(begin),
                )
                chunks.append([o.numpy() for o in out])  # (count, n, C) each
            per_probe.append([np.concatenate(c, axis=1) for c in zip(*chunks)])
        per_key = [np.concatenate(p, axis=0) for p in zip(*per_probe)]
        return {key: np.square(j) for key, j in zip(self.keys, per_key)}

    # --- the compiled probes --------------------------------------------------

    def _weights_probe(self, inputs, values, seed, stream, first, count, begin):
        """`[(1, n, C)]` per target: `J v` for the weight tangent `first`."""
        key = _key(seed, stream, first)
        tangents = [
            tf.random.stateless_normal(tf.shape(v), _fold(key, j), dtype=v.dtype)
            for j, v in enumerate(values)
        ]
        scope = contextlib.nullcontext()
        if self._stateless:
            scope = keras.StatelessScope(state_mapping=list(zip(self._variables, values)))
        with tf.autodiff.ForwardAccumulator(values, tangents) as acc, scope:
            targets = self.replay.target_outputs(self.replay.run(inputs))
        return [_jvp(acc, y)[None] for y in targets]

    def _inputs_probe(self, inputs, values, seed, stream, first, count, begin):
        """`[(count, n, C)]` per target: `J v` for input tangents `first ...`.

        `count` probes run side by side: the `n` samples tiled `count` times.
        Each sample's tangent is drawn for the whole probe batch and sliced,
        so it does not depend on how the batch was chunked.
        """
        n = int(inputs[0].shape[0])
        tiled = [tf.tile(x, [count] + [1] * (x.shape.rank - 1)) for x in inputs]
        # Embedded inputs first, outside the accumulator: they become primals.
        computed = self.replay.run(tiled, calls=self.replay.embedding_calls())
        primals, tangents = [], []
        for j, t in enumerate(self._sensitivity_inputs):
            if t not in computed:
                continue  # an embedded input after the last target
            x = computed[t]
            per_probe = []
            for i in range(count):
                key = _fold(_key(seed, stream, first + i), j)
                full = tf.random.stateless_normal(
                    tf.concat([[begin + n], tf.shape(x)[1:]], 0), key, dtype=x.dtype
                )
                per_probe.append(full[begin:])
            primals.append(x)
            tangents.append(tf.concat(per_probe, 0))
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            targets = self.replay.target_outputs(self.replay.run(tiled, values=computed))
        return [tf.reshape(_jvp(acc, y), [count, n, -1]) for y in targets]


def _key(seed, stream, probe):
    """The stateless seed of one probe of one `wrt`: independent streams."""
    return _fold(_fold(seed, stream), probe)


def _fold(key, data):
    return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _jvp(acc, y):
    """`(n, C)`: the JVP of the neuron values; zero where `y` ignores `v`."""
    values = neuron_values(y)
    tangent = acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return neuron_values(tf.cast(tangent, values.dtype))

