"""The engine's backend functions on PyTorch."""

import contextlib

import keras
import torch
from torch import func

__all__ = [
    "compile", "evaluate_shapes", "exact_kernels", "extract_patches", "jvp", "map_rows", "name_scope",
    "lay_out", "max_pool_argmax", "max_pool_argmax_hop", "on_mesh", "process_index", "snapshot",
    "spans_processes", "to_host", "vjp", "vmap",
]


def vjp(f, primals):
    out, pullback = func.vjp(f, primals)
    return out, lambda cotangents: pullback(cotangents)[0]


def jvp(f, primals, tangents, has_aux=False):
    return func.jvp(f, (primals,), (tangents,), has_aux=has_aux)


def vmap(f):
    return func.vmap(f)


def map_rows(f, xs, parallel=16, dtype=None):
    rows = int(keras.tree.flatten(xs)[0].shape[0])
    out = [f(keras.tree.map_structure(lambda x: x[i], xs)) for i in range(rows)]
    return torch.stack(out)


def compile(f):  # noqa: A001 - the backend's word for it
    return f



def evaluate_shapes(f, *args):
    return f(*args)  # eager: each operation runs once, at once


def name_scope(name):
    return contextlib.nullcontext()


def exact_kernels():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def to_host(value):
    return keras.ops.convert_to_numpy(value)


def process_index():
    return 0


def spans_processes(values):
    return False


def on_mesh(variables):
    return contextlib.nullcontext()


def lay_out(array):
    return keras.ops.convert_to_tensor(array)


def extract_patches(x, size, strides, rates, padding):
    """None: the generic one-hot convolution (conv.py)."""
    return None


def max_pool_argmax(layer, x):
    """None: no faster kernel for max-pooling routes than the generic one
    (pooling.py)."""
    return None


def max_pool_argmax_hop(layer, g, argmax, x):
    raise NotImplementedError


def snapshot(variable):
    """The variable's value now, copied (the optimizer updates in place)."""
    return variable.value.detach().clone()
