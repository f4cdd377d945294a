"""Brute-force oracles for neuron sensitivities, independent of the package.

Nothing here imports `keras_neuron_sensitivity`: the layer outputs come from
Keras's own graph (`keras.Model(model.inputs, tensor)`), never from the
package's graph replay, and the derivatives from the running backend's own
autodiff, one sample at a time (TensorFlow: one `tf.GradientTape` gradient per
neuron and sample; JAX and PyTorch: `jax.jacrev` and `torch.func.jacrev` of a
function of the weights and inputs, the weights mapped by
`keras.StatelessScope`), or from central finite differences.

Definitions (docs/definitions.md): the neuron value `a_k(x)` is channel `k` of
the layer output averaged over every axis that is neither batch nor channel;
its sensitivity is the 2-norm of `d a_k(x_n) / d theta` over all trainable
weights, or of `d a_k(x_n) / d x_n` over all floating-point inputs. For
integer or string inputs the derivative is taken at the embedded input: the
output of the layer (an `Embedding`) that the test names as turning them into
floats; `embedded=` lists those layers.
"""

import contextlib

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf


def as_list(x):
    """The probe as a list of NumPy arrays, one per model input."""
    if isinstance(x, (list, tuple)):
        return [np.asarray(a) for a in x]
    return [np.asarray(x)]


def output_fn(model, tensor, axes=1):
    """`f(inputs) -> tensor's value` in inference mode, by Keras's own graph,
    its trailing `axes` axes flattened into one (an `EinsumDense` output of
    heads x head_dim: `kernel_output_axes`)."""
    sub = keras.Model(model.inputs, tensor)

    def fn(xs):
        y = sub(xs if len(xs) > 1 else xs[0], training=False)
        return _flatten(y, axes)

    return fn


def _flatten(y, axes):
    if axes == 1:
        return y
    shape = list(y.shape)
    return ops.reshape(y, (-1, *shape[1:-axes], int(np.prod(shape[-axes:]))))


def inner_fn(model, layer, which="output", axes=1, occurrence=0):
    """`f(inputs) -> a tensor computed inside the model's call`, in inference
    mode: the output (or first argument, `which="input"`) of `layer`'s call
    number `occurrence` in a forward pass of the whole model, its trailing
    `axes` axes flattened into one (heads x head_dim). Read by patching that
    layer object's `call` for the pass, so by Keras's own forward, never by
    the package's replay."""

    def fn(xs):
        captured = []
        original = layer.call

        def call(*args, **kwargs):
            if which == "input":
                captured.append(args[0])
            y = original(*args, **kwargs)
            if which == "output":
                captured.append(y)
            return y

        layer.call = call
        try:
            model(_as_model_inputs(model, xs), training=False)
        finally:
            layer.call = original
        return _flatten(captured[occurrence], axes)

    return fn


# The feed-forward output projections and attention output projections of
# the families the tests build: the sites `.../ffn` and `.../heads` are their
# inputs (the package finds them by shape; the tests name them).
FFN_OUTPUTS = ("feedforward_output_dense", "ffw_linear", "dense_2", "down")
ATTENTION_OUTPUTS = ("attention_output",)


def site_fn(model, key):
    """`f(inputs)` for a site key, resolved by layer names alone.

    Keys name layers of the functional graph (`outer/inner` inside nested
    models, `name@1` for a second call), then layers called inside a
    layer's `call` (`block/attention/query`), whose output is read by
    `inner_fn`; `.../ffn` and `.../heads` are the inputs of the feed-forward
    and attention output projections (`FFN_OUTPUTS`, `ATTENTION_OUTPUTS`).
    Returns None for a call of the functional graph (use `output_fn`).
    """
    parts = key.split("/")
    owner, i = model, 0
    while i < len(parts) and isinstance(owner, keras.Model):
        name = parts[i].partition("@")[0]
        owner = owner.get_layer(name)
        i += 1
    if i == len(parts):
        return None  # a call of the functional graph: see `output_fn`
    layer, which, axes = owner, "output", 1
    for part in parts[i:]:
        name, _, count = part.partition("@")
        if name in ("ffn", "heads"):
            wanted = FFN_OUTPUTS if name == "ffn" else ATTENTION_OUTPUTS
            layer = next(sub for sub in _sublayers(layer) if sub.name in wanted)
            which, axes = "input", 1 if name == "ffn" else 2
        else:
            layer = next(sub for sub in _sublayers(layer) if sub.name == name)
            axes = kernel_output_axes(layer)
    return inner_fn(model, layer, which, axes, occurrence=int(count or 0) if parts else 0)


def _sublayers(layer):
    return layer._flatten_layers(include_self=False, recursive=False)


def kernel_output_axes(layer):
    """The trailing axes an `EinsumDense` kernel adds to its output (heads x
    head_dim for an attention's query projection), else 1."""
    if not isinstance(layer, keras.layers.EinsumDense):
        return 1
    ins, out = layer.equation.split("->")
    kernel = ins.split(",")[1]
    added = "".join(c for c in out if c in kernel)
    return len(added) if len(added) > 1 and out.endswith(added) else 1


def _as_model_inputs(model, xs):
    """The list of inputs in the structure the model's `call` takes (a dict
    for keras_hub's models)."""
    structure = getattr(model, "_inputs_struct", None)
    if structure is not None:
        return keras.tree.pack_sequence_as(structure, list(xs))
    return xs if len(xs) > 1 else xs[0]


def neuron_values(fn, xs):
    """`(B, C)`: the layer output averaged over all non-batch, non-channel axes."""
    y = ops.convert_to_tensor(fn(xs))
    channels = y.shape[-1]
    return ops.mean(ops.reshape(y, (ops.shape(y)[0], -1, channels)), axis=1)


def _cast(model, x):
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in model.inputs]
    return [a if d == "string" else a.astype(d) for a, d in zip(as_list(x), dtypes, strict=True)]


class InputOf:
    """In `embedded=`: the first input of the layer's first call, cast to the
    layer's float dtype, for an embedded input that no layer outputs as a
    float (a multi-hot `TextVectorization` declares float32 but returns
    integers, which the next layer casts)."""

    def __init__(self, layer):
        self.layer = layer


@contextlib.contextmanager
def _first_call(entries, touch):
    """While active, the first call of each layer `entries[j]` passes its
    output (its first input, for an `InputOf`) through `touch(j, tensor)`,
    and goes on with what `touch` returns. An `InputOf`'s input is cast to
    the layer's float dtype first: the layer casts integers itself, inside
    `call`, so the derivative exists only from the cast on (the values are
    the same)."""
    seen = [False] * len(entries)
    originals = []
    layers = [e.layer if isinstance(e, InputOf) else e for e in entries]
    for j, (layer, entry) in enumerate(zip(layers, entries)):
        original = layer.call

        def call(*args, _j=j, _original=original, _layer=layer, _input=isinstance(entry, InputOf), **kwargs):
            first, seen[_j] = not seen[_j], True
            if _input and first:
                args = (touch(_j, ops.cast(args[0], _layer.compute_dtype)), *args[1:])
            y = _original(*args, **kwargs)
            return touch(_j, y) if first and not _input else y

        originals.append(original)
        layer.call = call
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.call = original


def jacobians(model, x, fn, wrt, embedded=()):
    """Per sample, the list of Jacobians `(C, *shape)` of the neuron values.

    `wrt="weights"`: one per trainable weight of the model (zero if the neuron
    does not depend on it); `wrt="inputs"`: one per floating-point input, then
    one per layer of `embedded` (at the output of its first call). A tuple
    `wrt` gives `{wrt: per_sample}`, from the same derivatives.
    """
    wrts = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    xs = _cast(model, x)
    compute = _tape_jacobians if BACKEND == "tensorflow" else _jacrev_jacobians
    per_sample = compute(model, xs, fn, wrts, list(embedded))
    return per_sample[wrt] if isinstance(wrt, str) else per_sample


def _tape_jacobians(model, xs, fn, wrts, embedded):
    """TensorFlow: row `k` of a sample's Jacobian is one `tape.gradient` of
    neuron `k`, the plainest brute force there is. (`tape.jacobian` gives the
    same rows but traces a pfor graph on every call, ten times slower on these
    tiny models; the weights are passed as `v.value`, see
    docs/how-it-computes.md, section "Traps of the stack".)"""
    # Keras 3 variables by `.value` (see above); tf_keras ones are tf.Variables.
    weights = [v.value if isinstance(v, keras.Variable) else v for v in model.trainable_weights]
    per_sample = {w: [] for w in wrts}
    for n in range(len(xs[0])):
        sample = [tf.constant(a[n : n + 1]) for a in xs]
        floats = [s for s in sample if s.dtype.is_floating]
        captured = [None] * len(embedded)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(floats)

            def watch(j, t, tape=tape):
                tape.watch(t)
                captured[j] = t
                return t

            with _first_call(embedded, watch):
                a = neuron_values(fn, sample)[0]
            neurons = [a[k] for k in range(a.shape[0])]
        # A layer not called on the way to the neurons adds nothing.
        captured = [y for y in captured if y is not None]
        groups = {"weights": weights, "inputs": floats + captured}
        targets = [t for w in wrts for t in groups[w]]
        rows = [
            tape.gradient(
                neuron, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            for neuron in neurons
        ]
        del tape
        start = 0
        for w in wrts:
            count = len(groups[w])
            jac = [np.stack([np.asarray(tf.convert_to_tensor(r[j])) for r in rows])
                   for j in range(start, start + count)]
            start += count
            if w == "inputs":
                jac = [j[:, 0] for j in jac]  # drop the sample axis of size 1
            if not jac:  # nothing to differentiate with respect to: all zero
                jac = [np.zeros((len(neurons), 0))]
            per_sample[w].append(jac)
    return per_sample


def _jacrev(f, args):
    """The Jacobians of `f(*args) -> (C,)` with respect to every leaf of
    `args` (lists of tensors), by the running backend's reverse mode."""
    argnums = tuple(range(len(args)))
    if BACKEND == "jax":
        import jax

        return jax.jacrev(f, argnums=argnums)(*args)
    from torch import func

    return func.jacrev(f, argnums=argnums)(*args)


def _jacrev_jacobians(model, xs, fn, wrts, embedded):
    """JAX and PyTorch: `jacrev` of the neuron values of one sample as a
    function of the trainable weights (mapped onto the model's variables by
    `keras.StatelessScope`), the float inputs and a zero added to the first
    call's output (first input, for an `InputOf`) of each `embedded` layer."""
    variables = [v for v in model.trainable_weights]
    per_sample = {w: [] for w in wrts}
    for n in range(len(xs[0])):
        sample = [ops.convert_to_tensor(a[n : n + 1]) for a in xs]
        floats = [i for i, s in enumerate(sample) if "float" in str(s.dtype)]
        # The embedded tensors' shapes (None: not called), from one forward.
        shapes = [None] * len(embedded)

        def record(j, t):
            shapes[j] = (tuple(t.shape), keras.backend.standardize_dtype(t.dtype))
            return t

        with _first_call(embedded, record):
            channels = neuron_values(fn, sample).shape[-1]
        # A layer not called on the way to the neurons adds nothing.
        called = [j for j, shape in enumerate(shapes) if shape is not None]
        deltas = [ops.zeros(*shapes[j]) for j in called]

        def f(weights, inputs, added):
            xs_n = list(sample)
            for i, value in zip(floats, inputs):
                xs_n[i] = value
            mapping = list(zip(variables, weights))
            deltas = dict(zip(called, added))
            with keras.StatelessScope(state_mapping=mapping):
                with _first_call(embedded, lambda j, t: t + deltas[j]):
                    return neuron_values(fn, xs_n)[0]

        weights = [ops.convert_to_tensor(v.value) for v in variables]
        jac_w, jac_x, jac_e = _jacrev(f, (weights, [sample[i] for i in floats], deltas))
        groups = {
            "weights": jac_w,
            # drop the sample axis of size 1
            "inputs": [j[:, 0] for j in list(jac_x) + list(jac_e)],
        }
        for w in wrts:
            jac = [ops.convert_to_numpy(j) for j in groups[w]]
            # nothing to differentiate with respect to: all zero
            per_sample[w].append(jac or [np.zeros((channels, 0))])
    return per_sample


def _norms(per_sample):
    rows = []
    for jac in per_sample:
        channels = jac[0].shape[0]
        sq = sum(np.sum(np.square(j.reshape(channels, -1)), axis=1) for j in jac)
        rows.append(np.sqrt(sq))
    return np.stack(rows)


def brute_force(model, x, fn, wrt, embedded=()):
    """`(B, C)` per-sample sensitivities by brute force, one sample at a time;
    `{wrt: (B, C)}` for a tuple `wrt` (both from the same gradients).

    `embedded`: layers whose first call's output counts as an input (the
    embedded input of integer or string inputs) for `wrt="inputs"`.
    """
    per_sample = jacobians(model, x, fn, wrt, embedded)
    if isinstance(wrt, str):
        return _norms(per_sample)
    return {w: _norms(jac) for w, jac in per_sample.items()}


def finite_difference(model, x, fn, wrt, eps=1e-6):
    """`(B, C)` per-sample sensitivities by float64 central differences.

    Every weight entry (or input entry) is moved by `+-eps` in turn. Inputs are
    perturbed for all samples at once: in inference mode samples do not
    interact, so column `n` of the result only sees sample `n`.
    """
    xs = _cast(model, x)
    if any(a.dtype.kind == "f" and a.dtype != np.float64 for a in xs):
        raise ValueError("finite differences need a float64 model")

    def values(inputs):
        return ops.convert_to_numpy(neuron_values(fn, [ops.convert_to_tensor(a) for a in inputs]))

    base = values(xs)
    sq = np.zeros_like(base)
    if wrt == "weights":
        for v in model.trainable_weights:
            if v.dtype != "float64":
                raise ValueError(f"weight {v.path} is {v.dtype}, not float64")
            original = v.numpy()
            for index in np.ndindex(original.shape):
                moved = original.copy()
                moved[index] += eps
                v.assign(moved)
                plus = values(xs)
                moved[index] -= 2 * eps
                v.assign(moved)
                minus = values(xs)
                sq += np.square((plus - minus) / (2 * eps))
            v.assign(original)
    else:
        for j, a in enumerate(xs):
            if a.dtype.kind != "f":
                continue
            for index in np.ndindex(a.shape[1:]):
                plus = [b.copy() for b in xs]
                minus = [b.copy() for b in xs]
                plus[j][(slice(None), *index)] += eps
                minus[j][(slice(None), *index)] -= eps
                sq += np.square((values(plus) - values(minus)) / (2 * eps))
    return np.sqrt(sq)
