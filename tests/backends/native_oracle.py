"""Brute force on the running backend (JAX or PyTorch), independent of the package.

The layer outputs come from Keras's own graph (`keras.Model(model.inputs,
layer.output).stateless_call`, or the layers called one after another), never
from the package's replay; the derivatives from the backend's full Jacobian
(`jax.jacrev`, `torch.func.jacrev`) of one sample at a time.
"""

import keras
import numpy as np
from keras import ops


def jacrev(f, primal):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jacrev(f)(primal)
    from torch import func

    return func.jacrev(f)(primal)


def _values(y):
    y = ops.convert_to_tensor(y)
    return ops.mean(ops.reshape(y, (y.shape[0], -1, y.shape[-1])), axis=1)[0]


def weight_jacobians(model, x, layer):
    """Per sample, `[(C, *shape)]` over the model's trainable variables."""
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    variables = model.trainable_variables
    position = {id(v): i for i, v in enumerate(variables)}
    frozen = [v.value for v in sub.non_trainable_variables]
    per_sample = []
    for n in range(_batch(x)):
        sample = _sample(x, n)

        def f(values):
            own = [values[position[id(v)]] for v in sub.trainable_variables]
            return _values(sub.stateless_call(own, frozen, sample, training=False)[0])

        jac = jacrev(f, [v.value for v in variables])
        per_sample.append([ops.convert_to_numpy(j) for j in jac])
    return per_sample


def sensitivity(model, x, layer, wrt, embedded=None):
    """`(B, C)` per-sample norms, brute force.

    `embedded`: for token-id models, the name of the layer whose output is the
    embedded input; to inputs, the layers after it are called one by one.
    """
    if wrt == "weights":
        jacobians = weight_jacobians(model, x, layer)
        return np.stack(
            [np.sqrt(sum(np.sum(np.square(j.reshape(len(j), -1)), axis=1) for j in js))
             for js in jacobians]
        )
    rows = []
    for n in range(_batch(x)):
        if embedded:
            names = [l.name for l in model.layers]
            start, stop = names.index(embedded) + 1, names.index(layer) + 1
            primal = [model.layers[start - 1](_sample(x, n))]

            def f(h):
                (h,) = h
                for l in model.layers[start:stop]:
                    h = l(h, training=False)
                return _values(h)
        else:
            sub = keras.Model(model.inputs, model.get_layer(layer).output)
            primal = _sample(x, n)
            primal = primal if isinstance(primal, list) else [primal]

            def f(xs):
                return _values(sub(xs if len(xs) > 1 else xs[0], training=False))

        jac = [ops.convert_to_numpy(j) for j in jacrev(f, primal)]
        rows.append(np.sqrt(sum(np.sum(np.square(j.reshape(len(j), -1)), axis=1) for j in jac)))
    return np.stack(rows)


def _batch(x):
    return len(x[0]) if isinstance(x, list) else len(x)


def _sample(x, n):
    """Sample `n` as a batch of one: a tensor, or a list for several inputs."""
    if isinstance(x, list):
        return [ops.convert_to_tensor(a[n : n + 1]) for a in x]
    return ops.convert_to_tensor(x[n : n + 1])


def inner_sensitivity(model, x, layer, which="output", axes=1):
    """`(B, C)` per-sample norms to weights, brute force, of a tensor read
    inside the model's call: the output (or first argument) of `layer`'s
    first call, its trailing `axes` axes flattened (heads x head_dim).

    The model runs whole (`stateless_call`, so every trainable variable is a
    differentiated argument) with `layer.call` patched to keep the tensor.
    """
    variables = model.trainable_variables
    frozen = [v.value for v in model.non_trainable_variables]
    rows = []
    for n in range(_batch(x)):
        sample = _structured(model, x, n)

        def f(values):
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
                model.stateless_call(values, frozen, sample, training=False)
            finally:
                layer.call = original
            y = captured[0]
            if axes > 1:
                y = ops.reshape(y, (y.shape[0], *y.shape[1:-axes], -1))
            return _values(y)

        jac = [ops.convert_to_numpy(j) for j in jacrev(f, [v.value for v in variables])]
        rows.append(np.sqrt(sum(np.sum(np.square(j.reshape(len(j), -1)), axis=1) for j in jac)))
    return np.stack(rows)


def _structured(model, x, n):
    """Sample `n` as a batch of one, in the structure the model takes."""
    if isinstance(x, dict):
        return {k: ops.convert_to_tensor(v[n : n + 1]) for k, v in x.items()}
    return _sample(x, n)
