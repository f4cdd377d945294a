"""What `keras.ops` lacks, per Keras backend: VJPs, JVPs, vmap and compilation.

The engine on JAX and PyTorch (`engine/native.py`) is written on `keras.ops`
and these functions; each has the same signature on both backends:

- `vjp(f, primal)` -> `(f(primal), pullback)`, `pullback(cotangent)` the
  gradient with the structure of `primal`;
- `jvp(f, primal, tangent)` -> `(f(primal), J tangent)`;
- `vmap(f)`: `f` mapped over the leading axis of every argument;
- `compile(f)`: `jax.jit` on JAX; eager on PyTorch. Measured on the digits
  MLP (exact, to inputs, B=128): `torch.compile` took 6.2 s to compile and
  then 86 ms a call, against 182 ms eager: it pays back after about 65
  logged epochs, more than most runs log;
- `exact_kernels()`: a context for kernels whose derivatives are exact: on
  PyTorch, the math kernel of `scaled_dot_product_attention` (the CPU
  flash-attention kernel's backward disagrees with finite differences of
  its own forward under a padding mask: 3x on a masked MultiHeadAttention,
  `tests/backends/test_native.py` keeps the evidence);
- `to_host(value)`: a NumPy array of a variable's local value (on JAX, the
  replica this process holds when the array spans several processes).
"""

import contextlib

import keras
import numpy as np


def name():
    return keras.backend.backend()


def is_native():
    """Whether the engine runs on `native.py` (JAX, PyTorch) rather than on
    TensorFlow ops (`sweep.py`, `estimate.py`)."""
    return name() in ("jax", "torch")


def vjp(f, primal):
    if name() == "jax":
        import jax

        out, pullback = jax.vjp(f, primal)
    else:
        from torch import func

        out, pullback = func.vjp(f, primal)
    return out, lambda cotangent: pullback(cotangent)[0]


def jvp(f, primal, tangent):
    if name() == "jax":
        import jax

        return jax.jvp(f, (primal,), (tangent,))
    from torch import func

    return func.jvp(f, (primal,), (tangent,))


def vmap(f):
    if name() == "jax":
        import jax

        return jax.vmap(f)
    from torch import func

    return func.vmap(f)


def compile(f):  # noqa: A001 - the backend's word for it
    if name() == "jax":
        import jax

        return jax.jit(f)
    return f


def exact_kernels():
    if name() == "torch":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def to_host(value):
    if hasattr(value, "is_fully_addressable") and not value.is_fully_addressable:
        value = value.addressable_data(0)  # replicated: every process holds it
    return keras.ops.convert_to_numpy(value)


def process_index():
    """This process's index among the processes of a distributed run."""
    if name() == "jax":
        import jax

        return jax.process_index()
    return 0


def as_tensor(array):
    return keras.ops.convert_to_tensor(np.asarray(array))
