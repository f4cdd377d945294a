"""Brute-force oracles for neuron sensitivities, independent of the package.

Nothing here imports `keras_neuron_sensitivity`: the layer outputs come from
Keras's own graph (`keras.Model(model.inputs, tensor)`), never from the
package's graph replay, and the derivatives from one `tf.GradientTape` gradient
per neuron and sample or from central finite differences.

Definitions (DESIGN.md section 2): the neuron value `a_k(x)` is channel `k` of
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
import tensorflow as tf


def as_list(x):
    """The probe as a list of NumPy arrays, one per model input."""
    if isinstance(x, (list, tuple)):
        return [np.asarray(a) for a in x]
    return [np.asarray(x)]


def output_fn(model, tensor):
    """`f(inputs) -> tensor's value` in inference mode, by Keras's own graph."""
    sub = keras.Model(model.inputs, tensor)
    return lambda xs: sub(xs if len(xs) > 1 else xs[0], training=False)


def neuron_values(fn, xs):
    """`(B, C)`: the layer output averaged over all non-batch, non-channel axes."""
    y = tf.convert_to_tensor(fn(xs))
    channels = y.shape[-1]
    return tf.reduce_mean(tf.reshape(y, [tf.shape(y)[0], -1, channels]), axis=1)


def _model_dtypes(model):
    return [tf.as_dtype(t.dtype) for t in model.inputs]


def _cast(model, x):
    return [
        a.astype(dtype.as_numpy_dtype)
        for a, dtype in zip(as_list(x), _model_dtypes(model), strict=True)
    ]


class InputOf:
    """In `embedded=`: the first input of the layer's first call, cast to the
    layer's float dtype, for an embedded input that no layer outputs as a
    float (a multi-hot `TextVectorization` declares float32 but returns
    integers, which the next layer casts)."""

    def __init__(self, layer):
        self.layer = layer


@contextlib.contextmanager
def _watching_first_call(entries, tape, captured):
    """While active, the first call of each layer in `entries` has its output
    (its first input, for an `InputOf`) watched by `tape` and appended to
    `captured` (in the entries' order)."""
    slots = [None] * len(entries)
    originals = []
    layers = [e.layer if isinstance(e, InputOf) else e for e in entries]
    for j, (layer, entry) in enumerate(zip(layers, entries)):
        original = layer.call

        def call(*args, _j=j, _original=original, _layer=layer, _input=isinstance(entry, InputOf), **kwargs):
            if _input and slots[_j] is None:
                # The layer casts integers itself, inside `call`: cast first,
                # so that the derivative exists (the values are the same).
                first = tf.cast(args[0], _layer.compute_dtype)
                tape.watch(first)
                slots[_j] = first
                args = (first, *args[1:])
            y = _original(*args, **kwargs)
            if not _input and slots[_j] is None:
                tape.watch(y)
                slots[_j] = y
            return y

        originals.append(original)
        layer.call = call
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.call = original
        captured.extend(slots)


def jacobians(model, x, fn, wrt, embedded=()):
    """Per sample, the list of Jacobians `(C, *shape)` of the neuron values.

    `wrt="weights"`: one per trainable weight of the model (zero if the neuron
    does not depend on it); `wrt="inputs"`: one per floating-point input, then
    one per layer of `embedded` (at the output of its first call).

    Row `k` of the Jacobian is one `tape.gradient` of neuron `k` on one sample:
    the plainest brute force there is. (`tape.jacobian` gives the same rows
    but traces a pfor graph on every call, ten times slower on these tiny
    models; the weights are passed as `v.value`, see DESIGN.md section 8.)
    """
    xs = _cast(model, x)
    # Keras 3 variables by `.value` (see above); tf_keras ones are tf.Variables.
    weights = [v.value if isinstance(v, keras.Variable) else v for v in model.trainable_weights]
    per_sample = []
    for n in range(len(xs[0])):
        sample = [tf.constant(a[n : n + 1]) for a in xs]
        floats = [s for s in sample if s.dtype.is_floating]
        captured = []
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(floats)
            with _watching_first_call(list(embedded), tape, captured):
                a = neuron_values(fn, sample)[0]
            neurons = [a[k] for k in range(a.shape[0])]
        # A layer not called on the way to the neurons adds nothing.
        captured = [y for y in captured if y is not None]
        targets = weights if wrt == "weights" else floats + captured
        rows = [
            tape.gradient(
                neuron, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            for neuron in neurons
        ]
        del tape
        jac = [np.stack([np.asarray(tf.convert_to_tensor(r[j])) for r in rows])
               for j in range(len(targets))]
        if wrt == "inputs":
            jac = [j[:, 0] for j in jac]  # drop the sample axis of size 1
        if not jac:  # nothing to differentiate with respect to: all zero
            jac = [np.zeros((len(neurons), 0))]
        per_sample.append(jac)
    return per_sample


def _norms(per_sample):
    rows = []
    for jac in per_sample:
        channels = jac[0].shape[0]
        sq = sum(np.sum(np.square(j.reshape(channels, -1)), axis=1) for j in jac)
        rows.append(np.sqrt(sq))
    return np.stack(rows)


def brute_force(model, x, fn, wrt, embedded=()):
    """`(B, C)` per-sample sensitivities by brute force, one sample at a time.

    `embedded`: layers whose first call's output counts as an input (the
    embedded input of integer or string inputs) for `wrt="inputs"`.
    """
    return _norms(jacobians(model, x, fn, wrt, embedded))


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
        return np.asarray(neuron_values(fn, [tf.constant(a) for a in inputs]))

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
