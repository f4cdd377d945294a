"""PyTorch only: the evidence behind `backend.exact_kernels` (seen on
torch 2.13.0, CPU)."""

import keras
import numpy as np

import oracle
import zoo


def test_pytorch_flash_attention_backward_disagrees_with_its_forward():
    """Why the engine computes PyTorch attention with the math kernel
    (`backend.exact_kernels`): under a padding mask, the derivative of the
    CPU flash-attention kernel is not the derivative of its own forward, while
    the math kernel's is. If this starts failing, PyTorch fixed it upstream
    and the workaround can go."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    keras.utils.set_random_seed(3)
    model = zoo.masked_sequence()
    x = zoo.probe("masked_sequence")[:1]
    sub = keras.Model(model.inputs, model.get_layer("attention").output)
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    direction = [rng.normal(size=tuple(v.shape)).astype("float32") for v in variables]
    start = [keras.ops.convert_to_numpy(v.value) for v in variables]

    def value(eps):
        for v, w, d in zip(variables, start, direction):
            v.assign(w + eps * d)
        y = keras.ops.convert_to_numpy(sub(x))
        return y.reshape(-1, y.shape[-1]).mean(axis=0)

    finite_difference = (value(1e-2) - value(-1e-2)) / 2e-2
    value(0.0)
    derivative = {}
    for kernel in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(kernel):
            (jacobian,) = oracle.jacobians(model, x, oracle.output_fn(model, model.get_layer("attention").output), "weights")
        derivative[kernel] = sum(
            np.tensordot(j, d, axes=d.ndim) for j, d in zip(jacobian, direction)
        )
    np.testing.assert_allclose(derivative[SDPBackend.MATH], finite_difference, rtol=1e-2, atol=1e-3)
    assert not np.allclose(derivative[SDPBackend.FLASH_ATTENTION], finite_difference, rtol=0.1)
