"""Six keras.applications architectures: a closed-form rule for every layer,
and values equal to brute force on a few layers each.

Each model is built once (`weights=None`, 10 classes, 32x32, the smallest
input every one of them accepts, with its default preprocessing layers and
top), and checked twice: (1) no layer call of the engine's graph falls back
to the generic rule; (2) on one sample, an early, a middle and (for the
three mobile networks) the last layer match one `tape.gradient` per neuron
and sample, to weights and to inputs, on their first channels (brute force
over every channel would take minutes: each gradient crosses the whole
network). ResNet50, DenseNet121 and ConvNeXtTiny stop at a middle layer past
their first residual sum, concatenation or layer scale: the stages after it
repeat the same rules, and tracing them would double the test's time; their
heads are MobileNetV2's (pooling, Dense).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import models

from keras_neuron_sensitivity.engine.rules import base, table
from keras_neuron_sensitivity.engine.sweep import Sweep
from keras_neuron_sensitivity.probe import build_graph

RTOL, ATOL = 2e-3, 1e-6
CHANNELS = 2  # channels per layer compared with brute force
A = keras.applications
SHAPE = (32, 32, 3)

# name -> (builder, pixel range of its probe, layers: early, middle[, last])
ARCHITECTURES = {
    "MobileNetV2": (
        models.mobilenet_v2,  # the benchmarks' MobileNetV2
        (-1.0, 1.0),
        ["expanded_conv_depthwise", "block_6_depthwise", "predictions"],
    ),
    "MobileNetV3Small": (  # include_preprocessing: a Rescaling layer first
        lambda: A.MobileNetV3Small(input_shape=SHAPE, weights=None, classes=10),
        (0.0, 255.0),
        ["expanded_conv_squeeze_excite_mul", "expanded_conv_3_depthwise", "predictions"],
    ),
    "EfficientNetB0": (  # Rescaling and Normalization first
        lambda: A.EfficientNetB0(input_shape=SHAPE, weights=None, classes=10),
        (0.0, 255.0),
        ["block1a_se_excite", "block4a_dwconv", "predictions"],
    ),
    "ResNet50": (
        lambda: A.ResNet50(input_shape=SHAPE, weights=None, classes=10),
        (-1.0, 1.0),
        ["pool1_pool", "conv3_block1_out"],
    ),
    "DenseNet121": (
        lambda: A.DenseNet121(input_shape=SHAPE, weights=None, classes=10),
        (-1.0, 1.0),
        ["pool1", "pool2_pool"],
    ),
    "ConvNeXtTiny": (  # include_preprocessing: a Normalization layer first
        lambda: A.ConvNeXtTiny(input_shape=SHAPE, weights=None, classes=10),
        (0.0, 255.0),
        [
            "convnext_tiny_stage_0_block_0_depthwise_conv",
            "convnext_tiny_stage_1_block_0_layer_scale",
        ],
    ),
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def architecture(request):
    builder, (low, high), layers = ARCHITECTURES[request.param]
    keras.utils.set_random_seed(0)
    model = builder()
    x = np.random.default_rng(0).uniform(low, high, (1, *SHAPE)).astype("float32")
    return request.param, model, x, layers


def _generic_calls(model):
    """The layer calls of the engine's graph that the generic rule serves."""
    return [
        call
        for call in build_graph(model).calls
        if table.rule_for(call.layer) is base.GENERIC_RULE
    ]


def test_every_layer_has_a_closed_form_rule(architecture):
    name, model, _, _ = architecture
    generic = _generic_calls(model)
    assert not generic, (
        f"{name}: {len(generic)} layer calls fall back to GenericRule: "
        + ", ".join(f"{call.key} ({type(call.layer).__name__})" for call in generic)
    )


def _brute_force(model, x, layers):
    """`{wrt: {layer: (B, CHANNELS)}}`, one `tape.gradient` per neuron and sample.

    Independent of the package: the layer outputs come from Keras's own graph
    (as in `oracle.py`, whose per-weight Jacobians would not fit in memory
    here), and each gradient from a tape over all trainable weights and the
    input.
    """
    sub = keras.Model(model.inputs, [model.get_layer(name).output for name in layers])
    weights = [v.value for v in model.trainable_weights]
    result = {"weights": {n: [] for n in layers}, "inputs": {n: [] for n in layers}}
    for sample in x:
        xs = tf.constant(sample[None])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xs)
            outputs = sub(xs, training=False)
            # Channel values averaged over positions (docs/definitions.md, section "Probe batch and neurons").
            means = [tf.reduce_mean(tf.reshape(y, [-1, y.shape[-1]]), 0) for y in outputs]
            values = [[m[k] for k in range(CHANNELS)] for m in means]
        for name, value in zip(layers, values):
            norms = {"weights": [], "inputs": []}
            for k in range(CHANNELS):
                grads = tape.gradient(value[k], weights + [xs])
                if grads[-1] is None:
                    raise ValueError(f"{name}: neuron {k} does not depend on the input")
                squares = [tf.reduce_sum(tf.square(g)) for g in grads[:-1] if g is not None]
                norms["weights"].append(np.sqrt(float(tf.add_n(squares))))
                norms["inputs"].append(np.sqrt(float(tf.reduce_sum(tf.square(grads[-1])))))
            for wrt in norms:
                result[wrt][name].append(norms[wrt])
        del tape
    return {w: {n: np.array(v) for n, v in per.items()} for w, per in result.items()}


def test_values_match_brute_force(architecture):
    name, model, x, layers = architecture
    graph = build_graph(model)
    got = Sweep(graph, layers, ("weights", "inputs"), 2**30)([tf.constant(x)])
    expected = _brute_force(model, x, layers)
    for wrt in ("weights", "inputs"):
        for layer in layers:
            np.testing.assert_allclose(
                got[wrt][layer][:, :CHANNELS],
                expected[wrt][layer],
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{name} {layer} {wrt}",
            )
