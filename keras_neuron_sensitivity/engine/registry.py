"""The table that maps layer classes to rules, with a generic fallback."""

import keras
from keras import layers

from keras_neuron_sensitivity.engine.base import GENERIC_RULE, Rule
from keras_neuron_sensitivity.engine.conv import ConvRule
from keras_neuron_sensitivity.engine.dense import DenseRule
from keras_neuron_sensitivity.engine.depthwise import (
    DepthwiseConvRule,
    SeparableConvRule,
)
from keras_neuron_sensitivity.engine.elementwise import (
    ActivationRule,
    AddRule,
    AffineRule,
    BroadcastRule,
    ConcatenateRule,
    ElementwiseRule,
    IdentityRule,
    LayerScaleRule,
    ReshapeRule,
    SoftmaxRule,
)
from keras_neuron_sensitivity.engine.einsum_dense import EinsumDenseRule
from keras_neuron_sensitivity.engine.embedding import EmbeddingRule
from keras_neuron_sensitivity.engine.linear import LinearRule
from keras_neuron_sensitivity.engine.normalization import (
    BatchNormalizationRule,
    LayerNormalizationRule,
)
from keras_neuron_sensitivity.engine.pooling import (
    GlobalAveragePoolingRule,
    GlobalMaxPoolingRule,
    MaxPoolingRule,
)
from keras_neuron_sensitivity.engine.spatial import CroppingRule, ZeroPaddingRule
from keras_neuron_sensitivity.engine.transpose import ConvTransposeRule

_RULES = {
    layers.Dense: DenseRule(),
    layers.EinsumDense: EinsumDenseRule(),
    layers.Conv1D: ConvRule(),
    layers.Conv2D: ConvRule(),
    layers.Conv3D: ConvRule(),
    layers.BatchNormalization: BatchNormalizationRule(),
    layers.LayerNormalization: LayerNormalizationRule(),
    layers.Embedding: EmbeddingRule(),
    layers.DepthwiseConv1D: DepthwiseConvRule(),
    layers.DepthwiseConv2D: DepthwiseConvRule(),
    layers.SeparableConv1D: SeparableConvRule(),
    layers.SeparableConv2D: SeparableConvRule(),
    layers.Conv1DTranspose: ConvTransposeRule(),
    layers.Conv2DTranspose: ConvTransposeRule(),
    layers.Conv3DTranspose: ConvTransposeRule(),
    layers.ReLU: ElementwiseRule(),
    layers.LeakyReLU: ElementwiseRule(),
    layers.ELU: ElementwiseRule(),
    layers.Activation: ActivationRule(),
    layers.Softmax: SoftmaxRule(),
    layers.Rescaling: AffineRule(),
    layers.Normalization: AffineRule(),
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
    layers.Multiply: BroadcastRule(),
    layers.Subtract: BroadcastRule(),
    layers.Average: BroadcastRule(),
    layers.Maximum: BroadcastRule(),
    layers.Minimum: BroadcastRule(),
    layers.MaxPooling1D: MaxPoolingRule(),
    layers.MaxPooling2D: MaxPoolingRule(),
    layers.MaxPooling3D: MaxPoolingRule(),
    layers.AveragePooling1D: LinearRule(),
    layers.AveragePooling2D: LinearRule(),
    layers.AveragePooling3D: LinearRule(),
    layers.GlobalAveragePooling1D: GlobalAveragePoolingRule(),
    layers.GlobalAveragePooling2D: GlobalAveragePoolingRule(),
    layers.GlobalAveragePooling3D: GlobalAveragePoolingRule(),
    layers.GlobalMaxPooling1D: GlobalMaxPoolingRule(),
    layers.GlobalMaxPooling2D: GlobalMaxPoolingRule(),
    layers.GlobalMaxPooling3D: GlobalMaxPoolingRule(),
    layers.ZeroPadding1D: ZeroPaddingRule(),
    layers.ZeroPadding2D: ZeroPaddingRule(),
    layers.ZeroPadding3D: ZeroPaddingRule(),
    layers.Cropping1D: CroppingRule(),
    layers.Cropping2D: CroppingRule(),
    layers.Cropping3D: CroppingRule(),
    layers.UpSampling1D: LinearRule(),
    layers.UpSampling2D: LinearRule(),
    layers.UpSampling3D: LinearRule(),
    # Area interpolation has no gradient in TensorFlow: the generic rule
    # reports that with the layer's name.
    layers.Resizing: LinearRule(exclude=lambda layer: layer.interpolation == "area"),
}

# Keras operations recorded in a functional graph (`x + 3.0`, `x * gate`,
# `keras.ops.relu6(x)`): elementwise ones with broadcasting, and linear ones.
# The classes live in `keras.src.ops`; the names that a Keras version lacks
# are skipped.
_ELEMENTWISE_OPS = {
    "numpy": (
        "Abs Absolute Add Arctan Cos Cosh Divide Exp Expm1 Log Log1p Maximum "
        "Minimum Multiply Negative Power Reciprocal Sin Sinh Sqrt Square "
        "Subtract Tanh TrueDivide"
    ),
    "nn": (
        "Celu Elu Gelu HardSigmoid HardSilu HardTanh LeakyRelu LogSigmoid Relu "
        "Relu6 Selu Sigmoid Silu Softplus Softsign Squareplus TanhShrink"
    ),
}
_LINEAR_OPS = {
    "numpy": (
        "BroadcastTo Concatenate ExpandDims Flip Mean Moveaxis Ravel Repeat "
        "Reshape Squeeze Stack Sum Swapaxes Tile Transpose"
    ),
}


def _register_ops():
    from keras.src.ops import nn, numpy

    modules = {"numpy": numpy, "nn": nn}
    for table, rule in ((_ELEMENTWISE_OPS, BroadcastRule()), (_LINEAR_OPS, LinearRule())):
        for module, names in table.items():
            for name in names.split():
                op = getattr(modules[module], name, None)
                if op is not None:
                    _RULES[op] = rule


def _register_layer_scale():
    try:
        from keras.src.applications.convnext import LayerScale
    except ImportError:  # a Keras without ConvNeXt
        return
    _RULES[LayerScale] = LayerScaleRule()


_register_ops()
_register_layer_scale()


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


def rule_for_call(call):
    """The rule for one call: a `BlockRule` of its own for a call that
    exposes sites inside it (`Call.inside`), else its layer's rule."""
    if call.inside:
        from keras_neuron_sensitivity.engine.block import BlockRule

        return BlockRule(rule_for)
    return rule_for(call.layer)


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
