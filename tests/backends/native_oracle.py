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
    for n in range(len(x)):
        sample = ops.convert_to_tensor(x[n : n + 1])

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
    names = [l.name for l in model.layers]
    start = names.index(embedded) + 1 if embedded else 0
    stop = names.index(layer) + 1
    rows = []
    for n in range(len(x)):
        sample = ops.convert_to_tensor(x[n : n + 1])
        if embedded:
            sample = model.layers[start - 1](sample)

        def f(h):
            for l in model.layers[start:stop]:
                h = l(h, training=False)
            return _values(h)

        jac = ops.convert_to_numpy(jacrev(f, sample))
        rows.append(np.sqrt(np.sum(np.square(jac.reshape(len(jac), -1)), axis=1)))
    return np.stack(rows)
