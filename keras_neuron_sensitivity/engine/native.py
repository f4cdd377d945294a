"""The engine on JAX and PyTorch: exact norms and the estimator by autodiff.

On the TensorFlow backend the exact values come from the rule table's
multi-cotangent sweep (`sweep.py`). On JAX and PyTorch they come from the
backend's own reverse mode, vectorized: per sample, one forward of the
replayed graph, then one VJP per neuron, all neurons of every selected layer
mapped side by side (`backend.vmap`) and only their squared norms kept. The
values are the same; the cost is one backward pass per neuron and sample, so
on large convolutional networks the estimator (one JVP per probe for every
neuron at once, `backend.jvp`) is the cheap method there, and `auto` says so.

Both methods differentiate a pure function of the trainable values: the graph
replayed (`replay.Replay`) under a `keras.StatelessScope` that maps each
trainable variable to its value, as Keras's own `stateless_call` does. To
inputs, the primals are the float inputs and the embedded inputs.

Index letters: `n` sample, `k` neuron (all selected layers' neurons side by
side), `r` cotangent row, `m` probe.
"""

import collections
import contextlib
import functools
import warnings

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.masking import get_keras_mask, set_keras_mask

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.methods import Result
from keras_neuron_sensitivity.engine.replay import Replay, float32_compute

_WRT_STREAM = {"weights": 1, "inputs": 2}
# Bytes a cotangent row takes beyond its gradient: the activations' cotangents
# and their temporaries, per activation entry of one sample.
_ROW_OVERHEAD = 3
# Bytes one compiled JAX call's rows take at most (below the memory budget):
# larger calls only move more memory for the same work (on the digits MLP,
# 1 GiB calls took 4x as long as 16 MiB ones; on MobileNetV2, 4 MiB calls
# took 0.7x the time of 32 MiB ones), and XLA on the CPU dies of a floating
# point exception (SIGFPE, the whole process) on MobileNetV2's late blocks
# with hundreds of rows in one call. Eager PyTorch pays per operation
# instead, so there one call takes the whole budget (on the digits MLP,
# 16 MiB calls took 4x as long as 1 GiB ones).
_CALL_BYTES = 2**24


class Program:
    """The selected neurons' values as a pure function of weights or inputs.

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the selected layer calls.
    """

    def __init__(self, graph, keys):
        self.replay = Replay(graph, keys)
        self.keys = list(keys)
        self.layers = self.replay.layers()
        self.variables = self.replay.weights()
        # The other variables the calls read (moving statistics): arguments
        # of the compiled functions too, or JAX would keep their values from
        # the first trace.
        trainable = {id(v) for v in self.variables}
        self.state_variables = list(
            {
                id(v): v
                for layer in self.layers
                for v in getattr(layer, "variables", ())
                if id(v) not in trainable
            }.values()
        )
        self.sensitivity = list(graph.sensitivity_inputs)
        self.dense = _closed_form_dense(self.replay.calls, self.variables)
        self._shapes = None

    def weight_values(self):
        """`(trainable, state)`: the values now, as backend tensors on this
        process."""
        return tuple(
            [backend.as_tensor(backend.to_host(v.value)) for v in variables]
            for variables in (self.variables, self.state_variables)
        )

    def scope(self, weights, state):
        mapping = list(zip(self.variables, weights)) + list(zip(self.state_variables, state))
        return keras.StatelessScope(state_mapping=mapping)

    def neurons(self, weights, state, inputs, sensitivity=None, taps=None):
        """`(n, K)`: every selected neuron, layers side by side.

        Args:
            weights: one value per `self.variables` entry.
            state: one value per `self.state_variables` entry.
            inputs: one tensor per graph input, batch first.
            sensitivity: `{tensor id: value}` replacing those tensors (the
                float and embedded inputs, as primals), or None.
            taps: one tensor per `self.dense` call, added to its
                pre-activation (zeros: the cotangent there is the gradient
                with respect to them), or None.
        """
        replace = None
        if taps is not None:
            replace = {
                id(call): functools.partial(
                    _dense, call, weights[k], None if b is None else weights[b], tap
                )
                for (call, k, b), tap in zip(self.dense, taps)
            }
        with self.scope(weights, state):
            values = self.replay.run(inputs, values=sensitivity, replace=replace)
        return ops.concatenate(
            [_neuron_values(y) for y in self.replay.target_outputs(values)], axis=-1
        )

    def dense_inputs(self, weights, state, inputs):
        """The input and the pre-activation shape of each `self.dense` call."""
        with self.scope(weights, state):
            values = self.replay.run(inputs)
        return [
            (values[call.inputs[0]], tuple(values[call.outputs[0]].shape))
            for call, _, _ in self.dense
        ]

    def function_of(self, wrt, weights, state, inputs):
        """`(f, primal)`: the neurons `(n, K)` as a function of the trainable
        values (`wrt="weights"`) or of the sensitivity inputs, and its primal."""
        if wrt == "weights":
            return (lambda primal: self.neurons(primal, state, inputs)), weights
        at = self.inputs_at(weights, state, inputs)
        ids = list(at)

        def f(primal):
            return self.neurons(weights, state, inputs, dict(zip(ids, primal)))

        return f, [at[t] for t in ids]

    def inputs_at(self, weights, state, inputs):
        """`{tensor id: value}` of the sensitivity inputs the targets read:
        the float inputs and the embedded inputs (computed here)."""
        with self.scope(weights, state):
            values = self.replay.run(inputs, calls=self.replay.embedding_calls())
        return {t: values[t] for t in self.sensitivity if t in values}

    def shapes(self, inputs):
        """`(channels per key, entries per sample of every tensor)`, from one
        sample replayed once."""
        if self._shapes is None:
            with self.scope(*self.weight_values()):
                values = self.replay.run([x[:1] for x in inputs])
            channels = [int(y.shape[-1]) for y in self.replay.target_outputs(values)]
            entries = sum(
                int(np.prod(v.shape[1:])) for v in values.values() if hasattr(v, "shape")
            )
            # What exact differentiates to weights, per sample: the weights
            # outside closed-form `Dense` calls, and those calls' taps.
            closed = {id(call.layer) for call, _, _ in self.dense}
            self.weight_primal = sum(
                int(np.prod(v.shape))
                for call in self.replay.calls
                if id(call.layer) not in closed
                for v in call.weights
            ) + sum(int(np.prod(values[call.outputs[0]].shape[1:])) for call, _, _ in self.dense)
            self._shapes = channels, entries
        return self._shapes

    def split(self, per_neuron):
        """`(..., K)` NumPy -> `{key: (..., C)}`."""
        channels, _ = self._shapes
        bounds = np.cumsum(channels)[:-1]
        return dict(zip(self.keys, np.split(per_neuron, bounds, axis=-1)))


@contextlib.contextmanager
def _computing(program):
    """Where every native computation runs: float32 compute for mixed
    precision, the backend's exact kernels, and without PyTorch's warning,
    at every call, that its vmap falls back to a loop for some operations
    (attention): a cost already in `auto`'s price, and nothing a user of
    this package can act on."""
    with float32_compute(program.layers), backend.exact_kernels(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="There is a performance drop because we have not yet implemented"
        )
        yield


class ExactMethod:
    """Exact norms: one VJP per neuron and sample, vectorized over neurons."""

    name = "exact"
    num_probes = None

    def __init__(self, graph, keys, wrt, memory_budget):
        self.program = Program(graph, keys)
        self.wrt = tuple(wrt)
        self.memory_budget = int(memory_budget)
        self._fns = {}
        # Samples side by side (`vmap` over them too) until a layer refuses:
        # PyTorch's vmap cannot run its convolutions ("NYI: querying
        # is_contiguous inside of vmap"); those models go one sample a call.
        self._over_samples = True

    def __call__(self, inputs, seed=None):
        program = self.program
        with _computing(program):
            channels, entries = program.shapes(inputs)
            values = program.weight_values()
            results = {}
            for w in self.wrt:
                squares = self._squares(w, values, inputs, sum(channels), entries)
                results[w] = Result(self, program.split(np.sqrt(squares)), exact=True)
        return results

    def _squares(self, wrt, values, inputs, num_neurons, entries):
        """`(B, K)` squared norms, in chunks of samples and rows under the
        budget."""
        rows, samples = _exact_chunks(
            wrt, self.program.weight_primal, entries, num_neurons, int(inputs[0].shape[0]), self.memory_budget
        )
        if self._over_samples and samples > 1:
            try:
                return self._run(wrt, values, inputs, num_neurons, rows, samples)
            except RuntimeError as error:
                if "vmap" not in str(error):
                    raise
                self._over_samples = False
                self._fns.clear()
        return self._run(wrt, values, inputs, num_neurons, rows, 1)

    def _run(self, wrt, values, inputs, num_neurons, rows, samples):
        key = (wrt, samples)
        if key not in self._fns:
            self._fns[key] = backend.compile(self._chunk_fn(wrt, rows, num_neurons, samples))
        fn = self._fns[key]
        batch = int(inputs[0].shape[0])
        out = []
        for begin in range(0, batch, samples):
            # The last chunk padded with the batch's first samples: one shape,
            # one compilation.
            index = np.arange(begin, begin + samples) % batch
            chunk = [ops.take(x, backend.as_tensor(index), axis=0) for x in inputs]
            squares = [
                backend.to_host(fn(*values, chunk, backend.as_tensor(np.int32(first))))
                for first in range(0, num_neurons, rows)
            ]
            out.append(np.concatenate(squares, axis=1)[: batch - begin, :num_neurons])
        return np.concatenate(out)

    def _chunk_fn(self, wrt, rows, num_neurons, samples):
        program = self.program

        def one_sample(weights, state, sample, first):
            """`(rows,)`: squared norms of neurons `first ... first + rows`
            of one sample (`sample`: one `(1, ...)` tensor per input)."""
            if wrt == "weights" and program.dense:
                return _weights_with_dense(program, weights, state, sample, first, rows, num_neurons)
            f, primal = program.function_of(wrt, weights, state, sample)
            _, pullback = backend.vjp(lambda p: f(p)[0], primal)

            def squared_norm(cotangent):
                grads = pullback(cotangent)
                return sum(ops.sum(ops.square(g)) for g in grads)

            return backend.vmap(squared_norm)(_one_hot(first, rows, num_neurons))

        def chunk(weights, state, inputs, first):
            """`(samples, rows)`."""
            if samples == 1:
                return one_sample(weights, state, inputs, first)[None]
            per_sample = lambda x: one_sample(  # noqa: E731
                weights, state, [t[None] for t in x], first
            )
            return backend.vmap(per_sample)(inputs)

        return chunk


class EstimateMethod:
    """Unbiased estimates of the squares from `num_probes` random JVPs.

    As on TensorFlow (`estimate.py`): Gaussian tangents; to weights one
    tangent per probe shared by the batch, to inputs one per probe and
    sample. Tangents are drawn with NumPy from `(seed, wrt, probe)`, never
    from a global random state.
    """

    name = "estimate"

    def __init__(self, graph, keys, wrt, memory_budget, num_probes):
        self.program = Program(graph, keys)
        self.wrt = tuple(wrt)
        self.num_probes = int(num_probes)
        self.memory_budget = int(memory_budget)
        self._fns = {}

    def __call__(self, inputs, seed):
        program = self.program
        with _computing(program):
            _, entries = program.shapes(inputs)
            values = program.weight_values()
            batch = int(inputs[0].shape[0])
            samples = _estimate_samples(batch, entries, self.memory_budget)
            results = {}
            for w in self.wrt:
                if w not in self._fns:
                    self._fns[w] = backend.compile(self._probe_fn(w))
                squares = np.stack(
                    [
                        self._probe(w, values, inputs, seed, i, samples)
                        for i in range(self.num_probes)
                    ]
                )
                results[w] = Result(self, program.split(squares), exact=False)
        return results

    def _probe(self, wrt, values, inputs, seed, probe, samples):
        """`(B, K)`: `(J_k v)^2` for the probe's tangent."""
        weights = values[0]
        rng = np.random.default_rng([seed, _WRT_STREAM[wrt], probe])
        batch = int(inputs[0].shape[0])
        if wrt == "weights":
            tangent = [
                backend.as_tensor(rng.standard_normal(tuple(v.shape), dtype="float32"))
                for v in weights
            ]
        else:
            at = self.program.inputs_at(*values, inputs)
            tangent = [
                rng.standard_normal(tuple(at[t].shape), dtype="float32") for t in at
            ]
        out = []
        for begin in range(0, batch, samples):
            rows = [x[begin : begin + samples] for x in inputs]
            if wrt == "inputs":
                tangent_rows = [backend.as_tensor(t[begin : begin + samples]) for t in tangent]
                out.append(backend.to_host(self._fns[wrt](*values, rows, tangent_rows)))
            else:
                out.append(backend.to_host(self._fns[wrt](*values, rows, tangent)))
        return np.square(np.concatenate(out))

    def _probe_fn(self, wrt):
        program = self.program

        def probe(weights, state, inputs, tangent):
            f, primal = program.function_of(wrt, weights, state, inputs)
            return backend.jvp(f, primal, tangent)[1]

        return probe


def layer_jacobian(graph, inputs, key, wrt):
    """As `jacobian.layer_jacobian`, by the backend's reverse mode: one VJP
    per neuron of the layer, vectorized, one sample at a time."""
    program = Program(graph, [key])
    with _computing(program):
        (channels,), _ = program.shapes(inputs)
        weights, state = program.weight_values()
        eye = backend.as_tensor(np.eye(channels, dtype="float32"))
        per_sample = []
        for n in range(int(inputs[0].shape[0])):
            sample = [x[n : n + 1] for x in inputs]
            f, primal = program.function_of(wrt, weights, state, sample)
            _, pullback = backend.vjp(lambda p: f(p)[0], primal)  # noqa: B023
            grads = backend.vmap(pullback)(eye)
            per_sample.append([backend.to_host(g) for g in grads])
    if wrt == "inputs":
        # (C, 1, *shape) per sample -> (B, C, *shape)
        return [np.stack([s[j][:, 0] for s in per_sample]) for j in range(len(per_sample[0]))]
    return {
        getattr(v, "path", v.name): np.stack([s[j] for s in per_sample])
        for j, v in enumerate(program.variables)
    }


def predict_costs(graph, keys, wrt, inputs, num_probes, memory_budget=2**30):
    """`{"exact": cost, "estimate": cost}` in multiply-adds, for `auto`.

    With `F` a forward's work per sample (weights per output channel times
    output entries, from the one-sample shapes, as `methods.predict_costs`
    counts it) and `K` the selected neurons: exact does per sample a forward
    and one backward per neuron, about `F` to inputs, and to weights `F` plus
    the forward work of the calls whose weight gradient it forms (all but
    the closed-form `Dense` calls); the estimate per probe about `3 F`
    (primal and tangent). Each compiled (JAX) or eager (PyTorch) call adds a fixed
    cost, which dominates small models, PyTorch's most.
    """
    program = Program(graph, keys)
    with _computing(program):
        channels, entries = program.shapes(inputs)
        weights, state = program.weight_values()
        with program.scope(weights, state):
            values = program.replay.run([x[:1] for x in inputs])
    forward = differentiated = 0.0
    closed = {id(call.layer) for call, _, _ in program.dense}
    for call in program.replay.calls:
        outs = [values[t] for t in call.outputs]
        out_size = sum(int(np.prod(y.shape[1:])) for y in outs)
        params = sum(int(np.prod(v.shape)) for v in call.weights)
        out_channels = int(outs[0].shape[-1]) if outs and len(outs[0].shape) > 1 else 1
        work = out_size * max(1.0, params / out_channels)
        forward += work
        if params and id(call.layer) not in closed:
            differentiated += work  # its weight gradient, formed per row
    batch, neurons = int(inputs[0].shape[0]), sum(channels)
    rows, samples = _exact_chunks(
        wrt, program.weight_primal, entries, neurons, batch, memory_budget
    )
    exact_calls = -(-batch // samples) * -(-neurons // rows)
    estimate_calls = num_probes * -(-batch // _estimate_samples(batch, entries, memory_budget))
    per_row = forward + (differentiated if wrt == "weights" else 0.0)
    call = _CALL_COST[backend.name()]
    return {
        "exact": batch * (forward + per_row * neurons) + exact_calls * call,
        "estimate": batch * forward * 3 * num_probes + estimate_calls * call,
    }


# The fixed cost of one call, in multiply-adds (about 0.4 ms of JAX dispatch
# and 40 ms of PyTorch's eager calls through Keras layers, at about
# 5 GFLOP/s on this project's 2-core CPU).
_CALL_COST = {"jax": 2e6, "torch": 2e8}


def _exact_chunks(wrt, params, entries, num_neurons, batch, memory_budget):
    """`(rows, samples)` of one exact call under the budget."""
    primal = params if wrt == "weights" else entries
    per_row = 4 * (primal + _ROW_OVERHEAD * entries)
    call_bytes = memory_budget
    if backend.name() == "jax":
        call_bytes = min(call_bytes, _CALL_BYTES)
    rows = int(min(num_neurons, max(1, call_bytes // per_row)))
    samples = int(min(batch, max(1, call_bytes // (per_row * rows))))
    return rows, samples


def _estimate_samples(batch, entries, memory_budget):
    """Samples of one estimator call: activations, tangents and temporaries."""
    return int(min(batch, max(1, memory_budget // (12 * entries))))


def _one_hot(first, rows, num_neurons):
    """`(rows, K)`: the cotangents of neurons `first ... first + rows`
    (rows past the last neuron are zero)."""
    index = first + ops.arange(rows, dtype="int32")
    return ops.cast(
        ops.equal(index[:, None], ops.arange(num_neurons, dtype="int32")[None]), "float32"
    )


def _closed_form_dense(calls, variables):
    """`[(call, kernel index, bias index or None)]`: the `Dense` calls whose
    weight term is read in closed form, as the TensorFlow sweep's `DenseRule`
    does, instead of differentiating with respect to the kernel.

    Only Keras's own `Dense`, called once (a second call's kernel gradient
    adds to the first's), with trainable weights, without LoRA or
    quantization; any other layer is differentiated as it is.
    """
    position = {id(v): i for i, v in enumerate(variables)}
    calls_of = collections.Counter(id(call.layer) for call in calls)
    dense = []
    for call in calls:
        layer = call.layer
        if (
            type(layer) is not keras.layers.Dense
            or calls_of[id(layer)] > 1
            or len(call.inputs) != 1
            or getattr(layer, "lora_enabled", False)
            or getattr(layer, "quantization_mode", None) is not None
            or id(layer.kernel) not in position
        ):
            continue
        bias = None if layer.bias is None else position.get(id(layer.bias))
        if layer.bias is not None and bias is None:
            continue  # a trainable kernel with a frozen bias: differentiated as it is
        dense.append((call, position[id(layer.kernel)], bias))
    return dense


def _dense(call, kernel, bias, tap, inputs):
    """`Dense.call` with `tap` added to the pre-activation."""
    (h,) = inputs
    z = ops.matmul(ops.cast(h, kernel.dtype), kernel)
    if bias is not None:
        z = z + bias
    z = z + tap
    activation = call.layer.activation
    y = activation(z) if activation is not None else z
    mask = get_keras_mask(h)
    if mask is not None:
        set_keras_mask(y, mask)  # Dense passes its input's mask on
    return [y]


def _weights_with_dense(program, weights, state, sample, first, rows, num_neurons):
    """`(rows,)` squared norms to weights, with the `Dense` weight terms in
    closed form: for a row, the cotangent `G` at the pre-activation (`T`
    positions x units) and the layer input `H` (`T` x features) give
    `||dW||^2 = ||H^T G||^2` (directly, or as `<H H^T, G G^T>` when `T`
    is below the features) and `||db||^2 = ||sum_t G_t||^2`; the gradient
    with respect to the kernel is never formed."""
    dense_weights = {k for _, k, _ in program.dense} | {b for _, _, b in program.dense if b is not None}
    others = [i for i in range(len(weights)) if i not in dense_weights]
    inputs = program.dense_inputs(weights, state, sample)

    def f(primal):
        values, taps = primal
        full = list(weights)
        for i, v in zip(others, values):
            full[i] = v
        return program.neurons(full, state, sample, taps=taps)[0]

    taps = [ops.zeros(shape, "float32") for _, shape in inputs]
    _, pullback = backend.vjp(f, ([weights[i] for i in others], taps))
    flat = [ops.reshape(ops.cast(h, "float32"), (-1, h.shape[-1])) for h, _ in inputs]
    grams = [ops.matmul(h, ops.transpose(h)) if h.shape[0] < h.shape[1] else None for h in flat]

    def squared_norm(cotangent):
        grads, tap_grads = pullback(cotangent)
        total = sum((ops.sum(ops.square(g)) for g in grads), ops.zeros((), "float32"))
        for (_, _, bias), h, gram, g in zip(program.dense, flat, grams, tap_grads):
            g = ops.reshape(g, (-1, g.shape[-1]))
            if h.shape[0] == 1:
                total = total + ops.sum(ops.square(h)) * ops.sum(ops.square(g))
            elif gram is not None:
                total = total + ops.sum(gram * ops.matmul(g, ops.transpose(g)))
            else:
                total = total + ops.sum(ops.square(ops.matmul(ops.transpose(h), g)))
            if bias is not None:
                total = total + ops.sum(ops.square(ops.sum(g, axis=0)))
        return total

    return backend.vmap(squared_norm)(_one_hot(first, rows, num_neurons))


def _neuron_values(y):
    """`(n, ..., C)` -> `(n, C)`: each channel averaged over positions."""
    if len(y.shape) == 2:
        return y
    return ops.mean(ops.reshape(y, (y.shape[0], -1, y.shape[-1])), axis=1)
