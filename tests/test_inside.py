"""Neurons inside layers: keras_hub's decoder and encoder blocks, LoRA, and a
frozen base with a trainable layer inside it, each against brute force.

Every layer called inside another layer's `call` is a site keyed
`outer/inner`; each block has its feed-forward hidden units (`.../ffn`, the
input of the feed-forward output projection) and its attention heads
(`.../heads`, the input of the attention output projection) as sites. The
oracle (`oracle.site_fn`) reads those tensors by patching the inner layer's
`call` in Keras's own forward pass, and differentiates with respect to
`model.trainable_weights` (the LoRA factors, once LoRA is on): it knows
nothing of the package.

Models: tiny `LlamaCausalLM`, `Gemma3CausalLM` (`preprocessor=None`) and a
`ViTBackbone` classifier with random weights (2 blocks, nothing downloaded).
"""

import warnings

import numpy as np
import pytest

import oracle
from inside_models import RNG, frozen_base, gemma3, llama, vit
from keras_neuron_sensitivity import (
    NeuronSensitivityCallback,
    load_sensitivity,
    neuron_sensitivity,
)

keras_hub = pytest.importorskip("keras_hub")

RTOL, ATOL = 2e-3, 1e-6


# Per model: the keys of one block's sites checked against brute force (the
# feed-forward units, the heads, and a sub-layer: Llama's query projection,
# heads x head_dim, and Gemma's RMS norm). Each key's oracle is one gradient
# through the whole model per neuron and sample: three keys, not every kind.
MODELS = {
    "llama": (llama, "transformer_layer_1", ["ffn", "self_attention/heads", "self_attention/query"]),
    "gemma3": (gemma3, "decoder_block_1", ["ffn", "attention/heads", "pre_ffw_norm"]),
    "vit": (vit, "vit_encoder/transformer_block_2", [
        "mlp/ffn", "mha/heads", "mha/value", "ln_2",
    ]),
}


def _as_list(model, x):
    return [x[t.name] for t in model.inputs] if isinstance(x, dict) else [x]


def _embedded(model):
    """The layers whose outputs are the embedded inputs (token ids)."""
    if isinstance(model, keras_hub.models.CausalLM):
        return [model.backbone.get_layer("token_embedding")]
    return []


def _expected(model, x, key, wrt):
    fn = oracle.site_fn(model, key)
    return oracle.brute_force(model, _as_list(model, x), fn, wrt, _embedded(model))


def _fit(model, x, callback):
    if isinstance(model, keras_hub.models.CausalLM):
        targets = np.roll(x["token_ids"], -1, axis=1)
        model.compile(run_eagerly=True)
    else:
        targets = np.zeros((len(x), 3), "float32")
        model.compile("adam", "mse", run_eagerly=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, targets, epochs=1, verbose=0, callbacks=[callback])


def _key(keys, block, suffix):
    """The full key of `block/suffix` (the backbone's instance name first)."""
    (key,) = [k for k in keys if k.endswith(f"{block}/{suffix}")]
    return key


@pytest.mark.parametrize("name", list(MODELS))
def test_callback_defaults_log_sites_inside_every_block(name, tmp_path):
    factory, block, checked = MODELS[name]
    model, x = factory()
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path, on_error="raise")
    _fit(model, x, callback)
    logged = callback.sensitivities[0]
    keys = list(logged["weights"])
    assert list(logged["inputs"]) == keys
    # Both blocks: their feed-forward units and their heads.
    assert len([k for k in keys if k.endswith("/ffn")]) == 2, keys
    assert len([k for k in keys if k.endswith("/heads")]) == 2, keys
    for suffix in checked:
        key = _key(keys, block, suffix)
        expected = _expected(model, x, key, ("weights", "inputs"))
        for wrt in ("weights", "inputs"):
            np.testing.assert_allclose(logged[wrt][key], expected[wrt].mean(axis=0), rtol=RTOL, atol=ATOL, err_msg=f"{key} {wrt}")


# --- LoRA: the weights are what the optimizer trains ------------------------------


def test_lora_callback_defaults_equal_brute_force_over_the_lora_factors(tmp_path):
    model, x = llama()
    model.backbone.enable_lora(rank=4)
    # keras_hub starts B at zero (the product A B is zero); after some
    # training it is not: give both factors values.
    for v in model.trainable_weights:
        v.assign(RNG.normal(size=v.shape).astype("float32") * 0.5)
    assert {v.path.rsplit("/", 1)[-1] for v in model.trainable_weights} == {"lora_kernel_a", "lora_kernel_b"}
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path, wrt="weights", on_error="raise")
    _fit(model, x, callback)
    logged = callback.sensitivities[0]["weights"]
    keys = list(logged)
    assert len([k for k in keys if k.endswith("/ffn")]) == 2
    # Where the factors are (query, value) and after them: brute force over
    # `model.trainable_weights`; before them (the key projection of block 0
    # reads only frozen weights): exactly zero, and not dead.
    for block, suffix in [("transformer_layer_0", "self_attention/query"), ("transformer_layer_0", "ffn"),
                          ("transformer_layer_1", "self_attention/heads"), ("transformer_layer_0", "self_attention/key")]:
        key = _key(keys, block, suffix)
        # The weights before training (the callback logs the epoch's end).
        np.testing.assert_allclose(logged[key], _expected(model, x, key, "weights").mean(axis=0), rtol=RTOL, atol=ATOL, err_msg=key)
    key = _key(keys, "transformer_layer_0", "self_attention/key")
    frozen = logged.frozen[key]
    assert frozen.all() and np.all(logged[key] == 0)
    assert not logged.dead()[key].any()
    assert not logged.frozen[_key(keys, "transformer_layer_0", "ffn")].any()
    # What a user reads back says the same.
    run = load_sensitivity(tmp_path)
    assert run.frozen[key][0].all()
    assert np.all(run["weights"][key][0] == 0)


@pytest.mark.parametrize("method", ["exact", "estimate"])
def test_lora_sensitivities_are_not_all_zero(method):
    # The report: every neuron read exactly 0 with LoRA enabled.
    model, x = llama()
    model.backbone.enable_lora(rank=4)
    got = neuron_sensitivity(model, x, method=method, seed=0)
    last = _key(list(got), "transformer_layer_1", "ffn")
    assert np.all(got[last] > 0)


# --- a frozen base with a trainable layer inside it -----------------------------


def test_frozen_base_with_a_trainable_inner_layer_matches_brute_force():
    model, x = frozen_base()
    assert [v.path for v in model.trainable_weights] == ["block/gate/kernel", "block/gate/bias"]
    got = neuron_sensitivity(model, x, reduction=None)
    # The default selection does not depend on what is frozen.
    assert list(got) == ["stem", "block", "block/norm", "block/up", "block/gate", "block/down", "block/ffn", "head"]
    for key in got:
        fn = oracle.site_fn(model, key) or oracle.output_fn(model, model.get_layer(key).output)
        np.testing.assert_allclose(got[key], oracle.brute_force(model, x, fn, "weights"), rtol=RTOL, atol=ATOL, err_msg=key)
    # Before the gate nothing is trainable; after it, everything depends on it.
    assert got.frozen["stem"].all() and got.frozen["block/up"].all()
    assert not got.frozen["block/ffn"].any() and not got.frozen["head"].any()
    assert not any(d.any() for d in got.dead().values())


def test_inside_keys_and_short_names_in_layers():
    model, x = frozen_base()
    got = neuron_sensitivity(model, x, layers=["block/ffn", "gate"])
    assert list(got) == ["block/ffn", "block/gate"]
    model, x = llama()
    with pytest.raises(ValueError, match=r"'ffn'.*several.*transformer_layer_0/ffn.*transformer_layer_1/ffn"):
        neuron_sensitivity(model, x, layers=["ffn"])
    got = neuron_sensitivity(model, x, layers=["transformer_layer_1/ffn"])
    assert list(got) == ["llama_backbone/transformer_layer_1/ffn"] or list(got)[0].endswith("transformer_layer_1/ffn")
