"""The engine's backend functions on TensorFlow."""

import contextlib

import keras
import tensorflow as tf

__all__ = [
    "compile", "evaluate_shapes", "exact_kernels", "extract_patches", "jvp", "map_rows",
    "lay_out", "max_pool_argmax", "max_pool_argmax_hop", "on_mesh", "name_scope", "process_index",
    "snapshot", "spans_processes", "to_host", "vjp",
]


def vjp(f, primals):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(tf.nest.flatten(primals))
        out = f(primals)

    def pullback(cotangents):
        grads = tape.gradient(
            out, primals, output_gradients=cotangents,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return tf.nest.map_structure(tf.convert_to_tensor, grads)

    return out, pullback


def jvp(f, primals, tangents, has_aux=False):
    try:
        with tf.autodiff.ForwardAccumulator(
            tf.nest.flatten(primals), tf.nest.flatten(tangents)
        ) as acc:
            out = f(primals)
            out, aux = out if has_aux else (out, None)
        tangent = tf.nest.map_structure(
            lambda y: acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO), out
        )
    except (TypeError, ValueError):
        # TensorFlow's forward mode fails through some while loops (an LSTM's:
        # "`dtype` variant is not compatible with ... int64"); reverse mode
        # twice gives the same product.
        return _jvp_by_double_vjp(f, primals, tangents, has_aux)
    return (out, tangent, aux) if has_aux else (out, tangent)


def _jvp_by_double_vjp(f, primals, tangents, has_aux=False):
    """`J v` as the VJP of the VJP: `u -> J^T u` is linear, and its own
    transpose applied to `v` is `J v`."""
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(tf.nest.flatten(primals))
            out = f(primals)
            out, aux = out if has_aux else (out, None)
        u = tf.nest.map_structure(tf.zeros_like, out)
        outer.watch(tf.nest.flatten(u))
        back = inner.gradient(
            out, primals, output_gradients=u,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        # An embedding table's gradient is sparse (`IndexedSlices`).
        back = [tf.convert_to_tensor(b) for b in tf.nest.flatten(back)]
    tangent = outer.gradient(
        back, u, output_gradients=tf.nest.flatten(tangents),
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    return (out, tangent, aux) if has_aux else (out, tangent)


def map_rows(f, xs, parallel=16, dtype=None):
    # A loop, not `vectorized_map`: pfor crashes the process on some layers
    # (MultiHeadAttention's per-row gradient corrupts the heap in TF 2.21)
    # and falls back to a slower loop for recurrent layers and convolution
    # filters anyway, after a long conversion.
    return tf.map_fn(f, xs, fn_output_signature=dtype, parallel_iterations=parallel)


def compile(f):  # noqa: A001 - the backend's word for it
    return tf.function(f, autograph=False)



def evaluate_shapes(f, *args):
    return f(*args)  # eager: each operation runs once, at once


def name_scope(name):
    return tf.name_scope(name)


def exact_kernels():
    return contextlib.nullcontext()


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
    """`(n, *out_positions, prod(size) * c)`, ordered `(*size, c)` (1-D and
    2-D: TensorFlow's own patch extraction, a copy; 3-D: the generic
    one-hot convolution)."""
    if len(size) == 2:
        return tf.image.extract_patches(
            x, [1, *size, 1], [1, *strides, 1], [1, *rates, 1], padding.upper()
        )
    if len(size) == 1:
        patches = tf.image.extract_patches(
            x[:, None], [1, 1, *size, 1], [1, 1, *strides, 1], [1, 1, *rates, 1],
            padding.upper(),
        )
        return patches[:, 0]
    return None


def _as_2d(pool_size, strides, x):
    """1-D pooling as 2-D over a unit first axis: `(n, 1, L, c)`, window, strides."""
    if len(pool_size) == 2:
        return x, [1, *pool_size, 1], [1, *strides, 1]
    return x[:, None], [1, 1, *pool_size, 1], [1, 1, *strides, 1]


def max_pool_argmax(layer, x):
    """The flat input position of each window's maximum, per sample (1-D,
    2-D), or None for 3-D. TensorFlow's own kernel, so ties go where its
    gradient sends them, and the hop is TensorFlow's scatter along these
    positions, about a quarter of an unsorted segment sum's time here."""
    if len(layer.pool_size) > 2:
        return None
    x2, window, strides = _as_2d(layer.pool_size, layer.strides, x)
    _, argmax = tf.nn.max_pool_with_argmax(
        x2, window, strides, layer.padding.upper(), include_batch_in_index=False
    )
    return argmax


def max_pool_argmax_hop(layer, g, argmax, x):
    """Cotangents `(k, n, *out, c)` sent to the maxima `max_pool_argmax`
    found, `(k, n, *x)`."""
    k = g.shape[0]
    x2, window, strides = _as_2d(layer.pool_size, layer.strides, x)
    rows = [k * int(x.shape[0]), *x2.shape[1:]]
    flat = tf.reshape(g, [-1, *argmax.shape[1:]])
    hop = tf.raw_ops.MaxPoolGradWithArgmax(
        input=tf.zeros(rows, x.dtype),
        grad=flat,
        argmax=tf.tile(argmax, [k, 1, 1, 1]),
        ksize=window,
        strides=strides,
        padding=layer.padding.upper(),
        include_batch_in_index=False,
    )
    return tf.reshape(hop, [k, *x.shape])


def snapshot(variable):
    """The variable's value now, as a tensor that later updates leave alone."""
    return tf.identity(variable.value)
