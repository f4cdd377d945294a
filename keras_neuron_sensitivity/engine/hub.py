"""keras_hub's layers in the rule table, added when a model uses them.

keras_hub takes seconds to import, so this package never imports it. When a
model built from keras_hub is first seen (`probe.build_graph`), its classes
are at hand: the rules for those named here are registered then, keyed by
the class's module path. A rule the user registered for the class stays.
"""

import functools

from keras_neuron_sensitivity.engine import registry
from keras_neuron_sensitivity.engine.attention import (
    CachedMultiHeadAttentionRule,
    TransformerDecoderRule,
    TransformerEncoderRule,
)
from keras_neuron_sensitivity.engine.normalization import RMSScaleRule
from keras_neuron_sensitivity.engine.token_embedding import (
    PositionEmbeddingRule,
    TokenAndPositionEmbeddingRule,
)

_MODELING = "keras_hub.src.layers.modeling"
_MODELS = "keras_hub.src.models"
# Decoder norms that compute `x / rms(x) * scale` (offset 0) or
# `x / rms(x) * (1 + scale)` (offset 1) over the last axis, in float32.
_RMS_NORMS = {
    f"{_MODELS}.llama.llama_layernorm.LlamaLayerNorm": 0.0,
    f"{_MODELS}.mistral.mistral_layer_norm.MistralLayerNormalization": 0.0,
    f"{_MODELS}.mixtral.mixtral_layer_norm.MixtralLayerNormalization": 0.0,
    f"{_MODELS}.qwen.qwen_layernorm.QwenLayerNorm": 0.0,
    f"{_MODELS}.phi3.phi3_layernorm.Phi3LayerNorm": 0.0,
    f"{_MODELS}.gemma.rms_normalization.RMSNormalization": 1.0,
    f"{_MODELS}.gemma3.gemma3_layers.RMSNormalization": 1.0,
}
RULES = {
    f"{_MODELING}.cached_multi_head_attention.CachedMultiHeadAttention": CachedMultiHeadAttentionRule,
    f"{_MODELING}.transformer_encoder.TransformerEncoder": TransformerEncoderRule,
    f"{_MODELING}.transformer_decoder.TransformerDecoder": TransformerDecoderRule,
    f"{_MODELING}.position_embedding.PositionEmbedding": PositionEmbeddingRule,
    f"{_MODELING}.token_and_position_embedding.TokenAndPositionEmbedding": TokenAndPositionEmbeddingRule,
    **{path: functools.partial(RMSScaleRule, offset) for path, offset in _RMS_NORMS.items()},
}


def register_rules(layers):
    """Registers the rules of keras_hub's classes found among `layers`."""
    for layer in layers:
        if not type(layer).__module__.startswith("keras_hub"):
            continue
        for cls in type(layer).__mro__:
            rule = RULES.get(f"{cls.__module__}.{cls.__qualname__}")
            if rule is not None and not registry.has_rule(cls):
                registry.register_rule(cls, rule())
