"""The engine's backend functions on JAX."""

import contextlib
import threading

import jax
import keras
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

__all__ = [
    "compile", "evaluate_shapes", "exact_kernels", "extract_patches", "jvp", "map_rows", "name_scope",
    "lay_out", "max_pool_argmax", "max_pool_argmax_hop", "on_mesh", "process_index",
    "snapshot", "spans_processes", "to_host", "vjp", "vmap",
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


def evaluate_shapes(f, *args):
    # Traced, never run: run eagerly, each operation would be compiled on
    # its own (159 compilations, 10 s, for a small masked GRU model).
    return jax.eval_shape(f, *args)


def name_scope(name):
    return contextlib.nullcontext()


def exact_kernels():
    return contextlib.nullcontext()


def to_host(value):
    if hasattr(value, "is_fully_addressable") and not value.is_fully_addressable:
        if value.is_fully_replicated:
            value = value.addressable_data(0)  # every process holds it
        else:
            # Sharded across processes: gathered, a collective that every
            # process calls in the same order (the computation runs SPMD).
            value = multihost_utils.process_allgather(value, tiled=True)
    return keras.ops.convert_to_numpy(value)


def spans_processes(values):
    """Whether some value is split across processes (not replicated): no
    process holds it whole, so computations on it run in every process."""
    return any(
        hasattr(v, "is_fully_addressable")
        and not v.is_fully_addressable
        and not v.is_fully_replicated
        for v in values
    )


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
    over several processes gives this process's replica when replicated
    (`DataParallel`), and stays split where it lies when split across them
    (copied in every process, which all take part)."""
    value = variable.value
    if not spans_processes([value]) and not getattr(value, "is_fully_addressable", True):
        value = value.addressable_data(0)
    return jax.numpy.array(value, copy=True)


_MESH = threading.local()  # .layout: (mesh, batch axis name or None)


@contextlib.contextmanager
def on_mesh(variables):
    """Inside, in this thread, `lay_out` puts new arrays on the mesh of the
    variables that are split across processes (none: nothing changes), so
    that the probe and the estimator's tangents enter the compiled
    functions laid out as the weights are: split over the model's
    distribution's batch axis where their leading axis divides evenly
    (the estimator's probes side by side then spread over its devices),
    replicated otherwise. Yields whether it does."""
    split = [v.value for v in variables if spans_processes([v.value])]
    sharding = split[0].sharding if split else None
    if not isinstance(sharding, NamedSharding):
        yield False
        return
    mesh = sharding.mesh
    distribution = keras.distribution.distribution()
    batch = getattr(distribution, "batch_dim_name", None)
    previous = getattr(_MESH, "layout", None)
    _MESH.layout = (mesh, batch if batch in mesh.axis_names else None)
    try:
        yield True
    finally:
        _MESH.layout = previous


def lay_out(array):
    """A NumPy array as a tensor, on the mesh `on_mesh` set, if any."""
    layout = getattr(_MESH, "layout", None)
    if layout is None:
        return keras.ops.convert_to_tensor(array)
    mesh, batch = layout
    spread = batch and array.ndim >= 2 and array.shape[0] % mesh.shape[batch] == 0
    sharding = NamedSharding(mesh, PartitionSpec(batch) if spread else PartitionSpec())
    # Every process holds the same array (drawn from the same seed).
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
