"""The engine's backend functions on JAX."""

import contextlib

import jax
import keras

__all__ = [
    "compile", "exact_kernels", "extract_patches", "jvp", "map_rows", "name_scope",
    "max_pool_argmax", "max_pool_argmax_hop", "process_index", "snapshot", "to_host",
    "vjp", "vmap",
]


def vjp(f, primals):
    out, pullback = jax.vjp(f, primals)
    return out, lambda cotangents: pullback(cotangents)[0]


def jvp(f, primals, tangents, has_aux=False):
    return jax.jvp(f, (primals,), (tangents,), has_aux=has_aux)


def vmap(f):
    return jax.vmap(f)


def map_rows(f, xs, parallel=16, dtype=None):
    return jax.lax.map(f, xs, batch_size=parallel)


def compile(f):  # noqa: A001 - the backend's word for it
    return jax.jit(f)


def name_scope(name):
    return contextlib.nullcontext()


def exact_kernels():
    return contextlib.nullcontext()


def to_host(value):
    if hasattr(value, "is_fully_addressable") and not value.is_fully_addressable:
        value = value.addressable_data(0)  # replicated: every process holds it
    return keras.ops.convert_to_numpy(value)


def process_index():
    return jax.process_index()


def extract_patches(x, size, strides, rates, padding):
    """`(n, *out_positions, prod(size) * c)`, ordered `(*size, c)`: XLA's
    patch extraction (which orders features `(c, *size)`), reordered."""
    rank = len(size)
    spatial = "HWD"[:rank]
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    patches = jax.lax.conv_general_dilated_patches(
        x, tuple(size), tuple(strides), padding.upper(),
        rhs_dilation=tuple(rates), dimension_numbers=numbers,
    )
    lead = patches.shape[:-1]
    patches = patches.reshape(*lead, x.shape[-1], -1)
    return jax.numpy.swapaxes(patches, -1, -2).reshape(*lead, -1)


def max_pool_argmax(layer, x):
    """None: no faster kernel for max-pooling routes than the generic one
    (pooling.py)."""
    return None


def max_pool_argmax_hop(layer, g, argmax, x):
    raise NotImplementedError


def snapshot(variable):
    """The variable's value now, copied: Keras's JAX trainer donates the
    state's buffers to its next step, which deletes them. An array spread
    over several processes (replicated under `DataParallel`) gives this
    process's replica."""
    value = variable.value
    if hasattr(value, "is_fully_addressable") and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return jax.numpy.array(value, copy=True)
