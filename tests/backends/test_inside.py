"""Sites inside layers on JAX and PyTorch: a frozen base around a user
layer whose one trainable layer is inside a frozen one, and a keras_hub
Llama with LoRA, against brute force on the same backend (`oracle.py`, the
TensorFlow suite's: the whole model differentiated with respect to
`model.trainable_weights` by `jax.jacrev` or `torch.func.jacrev`, the inner
tensor read by patching the inner layer's `call`)."""

import numpy as np
import pytest

import oracle
from inside_models import RNG, frozen_base, llama
from keras_neuron_sensitivity import neuron_sensitivity

RTOL, ATOL = 2e-3, 1e-6


def test_frozen_base_with_a_trainable_inner_layer_matches_brute_force():
    model, x = frozen_base()
    block = model.get_layer("block")
    got = neuron_sensitivity(model, x, reduction=None)
    assert list(got) == ["stem", "block", "block/norm", "block/up", "block/gate", "block/down", "block/ffn", "head"]
    inner = {"block/up": (block.up, "output"), "block/gate": (block.gate, "output"), "block/ffn": (block.down, "input")}
    for key, (layer, which) in inner.items():
        expected = oracle.brute_force(model, x, oracle.inner_fn(model, layer, which), "weights")
        np.testing.assert_allclose(got[key], expected, rtol=RTOL, atol=ATOL, err_msg=key)
    head = oracle.output_fn(model, model.get_layer("head").output)
    expected = oracle.brute_force(model, x, head, "weights")
    np.testing.assert_allclose(got["head"], expected, rtol=RTOL, atol=ATOL)
    assert got.frozen["stem"].all() and not got.frozen["head"].any()


@pytest.mark.parametrize("method", ["exact", "estimate"])
def test_llama_with_lora_matches_brute_force_over_the_factors(method):
    model, x = llama()
    model.backbone.enable_lora(rank=4)
    for v in model.trainable_weights:
        v.assign(RNG.normal(size=v.shape).astype("float32") * 0.5)
    block = model.backbone.get_layer("transformer_layer_1")
    attention = block._self_attention_layer
    inner = {
        "transformer_layer_1/ffn": (block._feedforward_output_dense, "input", 1),
        "transformer_layer_1/self_attention/heads": (attention._output_dense, "input", 2),
        "transformer_layer_1/self_attention/query": (attention._query_dense, "output", 2),
    }
    got = neuron_sensitivity(model, x, layers=list(inner), reduction=None, method=method, seed=0)
    for key, (layer, which, axes) in inner.items():
        (full,) = [k for k in got if k.endswith(key)]
        inputs = [x[t.name] for t in model.inputs]  # the oracle takes a list
        expected = oracle.brute_force(model, inputs, oracle.inner_fn(model, layer, which, axes), "weights")
        if method == "exact":
            np.testing.assert_allclose(got[full], expected, rtol=RTOL, atol=ATOL, err_msg=key)
        else:  # 32 probes: within the estimator's spread, nowhere zero
            assert np.all(got[full] > 0)
            ratio = np.median(got[full] / expected)
            assert 0.6 < ratio < 1.4, (key, ratio)
