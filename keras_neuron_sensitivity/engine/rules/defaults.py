"""The rule table's contents: Keras's layers and operations, and keras_hub's.

`table.py` holds the table and its lookup; this module fills it, once, when
the engine is imported. keras_hub takes seconds to import, so its classes
are named by their path (`module.Class`) and matched on lookup, against a
layer's class and its bases: nothing is imported or registered when a model
is built.
"""

from keras import layers

from keras_neuron_sensitivity.engine.rules import table
from keras_neuron_sensitivity.engine.rules.attention import (
    CachedMultiHeadAttentionRule,
    MultiHeadAttentionRule,
    TransformerDecoderRule,
    TransformerEncoderRule,
)
from keras_neuron_sensitivity.engine.rules.conv import ConvRule
from keras_neuron_sensitivity.engine.rules.dense import DenseRule
from keras_neuron_sensitivity.engine.rules.depthwise import (
    DepthwiseConvRule,
    SeparableConvRule,
)
from keras_neuron_sensitivity.engine.rules.einsum_dense import EinsumDenseRule
from keras_neuron_sensitivity.engine.rules.elementwise import (
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
from keras_neuron_sensitivity.engine.rules.embedding import EmbeddingRule
from keras_neuron_sensitivity.engine.rules.linear import LinearRule
from keras_neuron_sensitivity.engine.rules.normalization import (
    BatchNormalizationRule,
    LayerNormalizationRule,
    RMSScaleRule,
)
from keras_neuron_sensitivity.engine.rules.pooling import (
    GlobalAveragePoolingRule,
    GlobalMaxPoolingRule,
    MaxPoolingRule,
)
from keras_neuron_sensitivity.engine.rules.spatial import CroppingRule, ZeroPaddingRule
from keras_neuron_sensitivity.engine.rules.token_embedding import (
    PositionEmbeddingRule,
    ReversibleEmbeddingRule,
    TokenAndPositionEmbeddingRule,
)
from keras_neuron_sensitivity.engine.rules.transpose import ConvTransposeRule

LAYERS = {
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

LAYERS[layers.MultiHeadAttention] = MultiHeadAttentionRule()
LAYERS[layers.ReversibleEmbedding] = ReversibleEmbeddingRule()

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


def _operations():
    from keras.src.ops import nn, numpy

    modules = {"numpy": numpy, "nn": nn}
    found = {}
    for names_by_module, rule in ((_ELEMENTWISE_OPS, BroadcastRule()), (_LINEAR_OPS, LinearRule())):
        for module, names in names_by_module.items():
            for name in names.split():
                op = getattr(modules[module], name, None)
                if op is not None:
                    found[op] = rule
    return found


def _layer_scale():
    try:
        from keras.src.applications.convnext import LayerScale
    except ImportError:  # a Keras without ConvNeXt
        return {}
    return {LayerScale: LayerScaleRule()}


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
KERAS_HUB = {
    f"{_MODELING}.cached_multi_head_attention.CachedMultiHeadAttention": CachedMultiHeadAttentionRule(),
    f"{_MODELING}.transformer_encoder.TransformerEncoder": TransformerEncoderRule(),
    f"{_MODELING}.transformer_decoder.TransformerDecoder": TransformerDecoderRule(),
    f"{_MODELING}.position_embedding.PositionEmbedding": PositionEmbeddingRule(),
    f"{_MODELING}.token_and_position_embedding.TokenAndPositionEmbedding": TokenAndPositionEmbeddingRule(),
    **{path: RMSScaleRule(offset) for path, offset in _RMS_NORMS.items()},
}


def fill():
    """Puts the defaults in the table (the user's registrations stay)."""
    for layer_class, rule in {**LAYERS, **_operations(), **_layer_scale()}.items():
        table.set_default(layer_class, rule)
    for path, rule in KERAS_HUB.items():
        table.set_default(path, rule)
