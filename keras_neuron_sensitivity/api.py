"""`neuron_sensitivity` and `neuron_jacobian`: argument checks, then one engine call."""

import math
import weakref

import numpy as np

from keras_neuron_sensitivity import _batch, probe
from keras_neuron_sensitivity.engine.jacobian import layer_jacobian
from keras_neuron_sensitivity.engine.summary import REDUCTIONS, reduce_samples
from keras_neuron_sensitivity.engine.sweep import WRT_CHOICES, Sweep
from keras_neuron_sensitivity.errors import UnsupportedModelError

DEFAULT_MEMORY_BUDGET_MB = 1024

# One compiled sweep per model and configuration, so repeated calls (one per
# epoch, say) reuse the traced function instead of tracing again.
_SWEEPS = weakref.WeakKeyDictionary()


def neuron_sensitivity(
    model,
    x,
    *,
    wrt="weights",
    layers=None,
    reduction="mean",
    memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB,
):
    """Exact per-neuron Jacobian norms of a Keras model on a batch.

    For neuron `k` of layer `l` and sample `x_n`, the sensitivity is
    `||d a_lk(x_n) / d theta||_2` over all trainable weights (`wrt="weights"`)
    or `||d a_lk(x_n) / d x_n||_2` over the floating-point inputs
    (`wrt="inputs"`), where `a_lk` is channel `k` of the layer's output averaged
    over positions (spatial, time). The model runs in inference mode; no
    labels are needed.

    Args:
        model: a built `keras.Sequential`, functional or subclassed
            `keras.Model` (see the README for what a subclassed model may do).
        x: the probe batch: an array, or a list/dict of arrays for a model with
            several inputs.
        wrt: `"weights"` or `"inputs"`. Defaults to `"weights"`.
        layers: layer names (or layer objects) to evaluate. Defaults to every
            layer with trainable weights plus standalone activation layers.
            Inside a nested model, names are `"outer/inner"`; a layer's second
            call is `"name@1"`.
        reduction: how to reduce over the probe batch: `"mean"`, `"rms"`,
            `"max"`, or None for the per-sample norms. Defaults to `"mean"`.
        memory_budget_mb: working memory in MiB the computation may use; it is
            chunked over neurons and samples to stay under it. Defaults to 1024.

    Returns:
        `{layer_key: np.ndarray}` of shape `(C_l,)`, or `(B, C_l)` when
        `reduction=None`.

    Raises:
        ValueError: on an argument or input that does not fit the model.
        UnsupportedModelError: for a model that is not built or is subclassed.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> s = neuron_sensitivity(model, np.ones((2, 4), "float32"))
    >>> s["dense"].shape
    (3,)
    """
    _check_wrt(wrt, allow_both=False)
    _check_reduction(reduction)
    _check_budget(memory_budget_mb)
    graph = model_graph(model, x)
    inputs = _batch.standardize(graph, x)
    keys = probe.resolve_layers(graph, layers)
    if wrt == "inputs":
        _batch.warn_integer_inputs(graph)
    sweep = cached_sweep(model, graph, keys, (wrt,), memory_budget_mb)
    per_sample = sweep(inputs)[wrt]
    return {key: reduce_samples(per_sample[key], reduction) for key in keys}


def neuron_jacobian(model, x, layer, *, wrt="weights"):
    """The derivatives of every neuron of one layer, per sample.

    Use it when you need the Jacobian itself (for one layer, on a few
    samples); for norms of every layer, `neuron_sensitivity` is exact and far
    cheaper. Neuron values are as in `neuron_sensitivity`.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`.
        x: the samples, as for `neuron_sensitivity`.
        layer: the layer's name (or the layer object).
        wrt: `"weights"` or `"inputs"`. Defaults to `"weights"`.

    Returns:
        For `wrt="inputs"`: an array `(B, C, *input_shape)`, or a list of them
        (one per floating-point input) for a model with several inputs.
        For `wrt="weights"`: `{weight.path: array (B, C, *weight.shape)}` over
        the trainable weights upstream of the layer.

    Raises:
        ValueError: on an argument or input that does not fit the model.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> j = neuron_jacobian(model, np.ones((2, 4), "float32"), "dense")
    >>> j["sequential/dense/kernel"].shape
    (2, 3, 4, 3)
    """
    _check_wrt(wrt, allow_both=False)
    graph = model_graph(model, x)
    inputs = _batch.standardize(graph, x)
    if isinstance(layer, (list, tuple)):
        raise ValueError(
            f"Received layer={layer!r}, a list. Expected one layer name: "
            "`neuron_jacobian` returns the derivatives of one layer. Call it "
            "once per layer."
        )
    (key,) = probe.resolve_layers(graph, [layer])[:1]
    if wrt == "inputs":
        _batch.warn_integer_inputs(graph)
    result = layer_jacobian(graph, inputs, key, wrt)
    if wrt == "inputs" and len(result) == 1:
        return result[0]
    return result


def model_graph(model, x=None):
    """The model's replayable graph, or a clear error for what is not a model.

    `x` (the probe) is needed only to record a subclassed model's graph.
    """
    if not probe.is_model(model):
        raise TypeError(
            f"Received model of type {type(model).__name__}. Expected a "
            "`keras.Model` (Sequential, functional or subclassed), or a "
            "`tf_keras` Sequential or functional model."
        )
    if not probe.is_model_built(model):
        raise UnsupportedModelError(
            f"The model {model.name!r} is not built yet, so it has no weights "
            "to differentiate. Expected a built model. Build it first: train "
            "it, call it on a batch, or start it with `keras.Input(shape)`."
        )
    return probe.build_graph(model, x)


def cached_sweep(model, graph, keys, wrt, memory_budget_mb):
    """The model's compiled sweep for this configuration, made once.

    Which weights are trainable is part of the configuration: freezing or
    unfreezing layers (as fine-tuning does between `fit` calls) changes what
    the sensitivity to weights sums over, and so needs a new sweep.
    """
    trainable = tuple(tuple(id(v) for v in call.weights) for call in graph.calls)
    config = (tuple(graph.keys), tuple(keys), tuple(wrt), memory_budget_mb, trainable)
    per_model = _SWEEPS.setdefault(model, {})
    if config not in per_model:
        per_model[config] = Sweep(graph, keys, wrt, memory_budget_mb * 2**20)
    return per_model[config]


def _check_wrt(wrt, allow_both):
    choices = WRT_CHOICES
    if allow_both:
        values = (wrt,) if isinstance(wrt, str) else tuple(wrt or ())
        if values and all(v in choices for v in values):
            return tuple(dict.fromkeys(values))
        expected = "'weights', 'inputs' or a tuple of both"
    else:
        if wrt in choices:
            return (wrt,)
        expected = "'weights' or 'inputs'"
    raise ValueError(
        f"Received wrt={wrt!r}. Expected {expected}: the derivative of each "
        "neuron with respect to the trainable weights or to the model inputs."
    )


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Received reduction={reduction!r}. Expected one of {REDUCTIONS}: "
            "how the per-sample norms are reduced over the probe batch."
        )


def _check_budget(memory_budget_mb):
    if (
        isinstance(memory_budget_mb, bool)
        or not isinstance(memory_budget_mb, (int, float, np.integer, np.floating))
        or not math.isfinite(memory_budget_mb)
        or memory_budget_mb <= 0
    ):
        raise ValueError(
            f"Received memory_budget_mb={memory_budget_mb!r}. Expected a "
            "positive, finite number of MiB, for example 1024."
        )
