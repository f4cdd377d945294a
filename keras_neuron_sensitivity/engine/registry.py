"""The table that maps layer classes to rules, with a generic fallback."""

import keras
from keras import layers

from keras_neuron_sensitivity.engine.base import GENERIC_RULE, Rule
from keras_neuron_sensitivity.engine.conv import ConvRule
from keras_neuron_sensitivity.engine.dense import DenseRule
from keras_neuron_sensitivity.engine.elementwise import (
    AddRule,
    ConcatenateRule,
    ElementwiseRule,
    IdentityRule,
    ReshapeRule,
)
from keras_neuron_sensitivity.engine.embedding import EmbeddingRule
from keras_neuron_sensitivity.engine.normalization import (
    BatchNormalizationRule,
    LayerNormalizationRule,
)

_RULES = {
    layers.Dense: DenseRule(),
    layers.Conv1D: ConvRule(),
    layers.Conv2D: ConvRule(),
    layers.Conv3D: ConvRule(),
    layers.BatchNormalization: BatchNormalizationRule(),
    layers.LayerNormalization: LayerNormalizationRule(),
    layers.Embedding: EmbeddingRule(),
    layers.ReLU: ElementwiseRule(),
    layers.LeakyReLU: ElementwiseRule(),
    layers.ELU: ElementwiseRule(),
    layers.Activation: ElementwiseRule(),
    layers.Dropout: IdentityRule(),
    layers.SpatialDropout1D: IdentityRule(),
    layers.SpatialDropout2D: IdentityRule(),
    layers.SpatialDropout3D: IdentityRule(),
    layers.GaussianNoise: IdentityRule(),
    layers.GaussianDropout: IdentityRule(),
    layers.AlphaDropout: IdentityRule(),
    layers.ActivityRegularization: IdentityRule(),
    layers.Flatten: ReshapeRule(),
    layers.Reshape: ReshapeRule(),
    layers.Add: AddRule(),
    layers.Concatenate: ConcatenateRule(),
}

# Attention and language-model embeddings (engine/attention.py,
# engine/token_embedding.py). keras_hub's layers get their rules when a model
# built from keras_hub is first seen (engine/hub.py): this package never
# imports keras_hub itself.
from keras_neuron_sensitivity.engine.attention import MultiHeadAttentionRule  # noqa: E402
from keras_neuron_sensitivity.engine.token_embedding import ReversibleEmbeddingRule  # noqa: E402

_RULES[layers.MultiHeadAttention] = MultiHeadAttentionRule()
_RULES[layers.ReversibleEmbedding] = ReversibleEmbeddingRule()


def has_rule(layer_class):
    """Whether `layer_class` itself has an entry in the table."""
    return layer_class in _RULES


def register_rule(layer_class, rule):
    """Makes `rule` handle `layer_class` (and subclasses that keep its `call`).

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        rule: a `Rule` instance.

    Raises:
        TypeError: if either argument is of the wrong kind.
    """
    if not (isinstance(layer_class, type) and issubclass(
        layer_class, keras.layers.Layer
    )):
        raise TypeError(
            f"Received layer_class={layer_class!r}. Expected a subclass of "
            "`keras.layers.Layer`, for example `keras.layers.Dense`."
        )
    if not isinstance(rule, Rule):
        raise TypeError(
            f"Received rule={rule!r} of type {type(rule).__name__}. Expected "
            "an instance of `keras_neuron_sensitivity.engine.Rule`."
        )
    _RULES[layer_class] = rule


def rule_for(layer):
    """The rule for this layer: its class's, else the generic rule.

    A subclass inherits its parent's rule only if it keeps the parent's
    `call`; a subclass that overrides `call` gets the generic rule.
    """
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            if type(layer).call is cls.call and rule.applies(layer):
                return rule
            return GENERIC_RULE
    return GENERIC_RULE
