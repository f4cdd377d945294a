"""What `keras.ops` lacks, per Keras backend, behind one set of names.

The engine is written once, on `keras.ops` and these functions, as Keras
itself is (`keras/src/backend/{tensorflow,jax,torch}`): the module for the
running backend (`tensorflow.py`, `jax.py`, `torch.py`) is picked when this
package is imported, and each defines the same names:

- `vjp(f, primals)` -> `(f(primals), pullback)`: `pullback(cotangents)` is
  the gradient with the structure of `primals` (zeros where unconnected);
- `jvp(f, primals, tangents, has_aux=False)` -> `(f(primals), J tangents)`;
  with `has_aux`, `f` returns `(out, aux)` and the result is `(out,
  J tangents, aux)`: `aux` (computed on the primals, no tangent) rides
  along, as `jax.jvp`'s;
- `map_rows(f, xs)`: `f` on each row of the arrays `xs` (their leading
  axis), results stacked: a loop in the graph, not a vectorization (per-row
  weight gradients, which vectorize badly);
- `compile(f)`: `tf.function`, `jax.jit`, or `f` itself on PyTorch (eager:
  `torch.compile` took 6.2 s to compile the digits MLP's exact computation,
  then 86 ms a call against 182 ms eager: it pays back only after about 65
  logged epochs);
- `evaluate_shapes(f, *args)`: `f(*args)`, or only the shapes and dtypes
  of its result (`jax.eval_shape`, where running it eagerly compiles each
  operation on its own): for planning, which needs no values;
- `name_scope(name)`: a name scope in TensorFlow's graphs, for profiles;
  nothing elsewhere;
- `exact_kernels()`: a context for kernels whose derivatives are exact (on
  PyTorch, the math kernel of `scaled_dot_product_attention`: the CPU
  flash-attention kernel's backward disagrees with its own forward under a
  padding mask, `tests/backends/test_torch_kernels.py`);
- `to_host(x)`: a NumPy array of a value (on JAX, the replica this process
  holds when the array is replicated over several processes, gathered
  from all of them when it is split across them);
- `process_index()`: this process's index among a distributed run's;
- `spans_processes(values)`: whether some value is split across processes
  (JAX's multi-process sharding), so that every process must take part in
  computing on it;
- `on_mesh(variables)`: a context (yielding whether it applies) in which `lay_out(array)` (a NumPy
  array to a tensor, as `as_tensor` does) puts arrays on the mesh of the
  variables split across processes, over its batch axis where they divide
  (JAX); elsewhere `lay_out` is `convert_to_tensor`.

`name()` says which backend runs (read through this function, so that a test
can pretend another).
"""

import keras
import numpy as np

_NAME = keras.backend.backend()

if _NAME == "jax":
    from keras_neuron_sensitivity.engine.backend.jax import *  # noqa: F403
elif _NAME == "torch":
    from keras_neuron_sensitivity.engine.backend.torch import *  # noqa: F403
else:
    from keras_neuron_sensitivity.engine.backend.tensorflow import *  # noqa: F403


def name():
    return keras.backend.backend()


def as_tensor(array):
    return lay_out(np.asarray(array))  # noqa: F405 - from the backend module


def is_float(x):
    """Whether `x` (a tensor, or None) holds floating-point values."""
    return x is not None and keras.backend.standardize_dtype(x.dtype).startswith(
        ("float", "bfloat")
    )


def shape(x):
    """`x`'s shape as a tuple of ints (the engine's shapes are all known: the
    probe's shape is fixed)."""
    return tuple(int(d) for d in x.shape)
