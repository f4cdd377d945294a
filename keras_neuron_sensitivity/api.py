"""`neuron_sensitivity`, `neuron_activity`, `neuron_jacobian` and
`clear_cache`: argument checks, then one engine call."""

from keras_neuron_sensitivity import _arguments, _computation, health
from keras_neuron_sensitivity.engine.jacobian import layer_jacobian

DEFAULT_MEMORY_BUDGET_MB = 1024


def neuron_sensitivity(
    model,
    x,
    *,
    wrt="weights",
    layers=None,
    reduction="mean",
    method="exact",
    num_probes=None,
    seed=None,
    memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB,
):
    """Per-neuron Jacobian norms of a Keras model on a batch.

    For neuron `k` of layer `l` and sample `x_n`, the sensitivity is
    `||d a_lk(x_n) / d theta||_2` over all trainable weights (`wrt="weights"`)
    or `||d a_lk(x_n) / d x_n||_2` over the floating-point inputs and the
    embedded inputs (for token ids: the output of the `Embedding` that first
    turns them into floats) (`wrt="inputs"`), where `a_lk` is channel `k` of
    the layer's output averaged over positions (spatial, time). The model
    runs in inference mode; no labels are needed.

    By default the values are exact. On large models (a MobileNet, say) the
    exact cost grows with the number of neurons times the depth they cross;
    `method="estimate"` then gives unbiased estimates of the squared norms of
    every neuron at once, from `num_probes` random forward-mode
    Jacobian-vector products, with a standard error for each value.

    Args:
        model: a built `keras.Sequential`, functional or subclassed
            `keras.Model` (see docs/models.md for what a subclassed model may do).
        x: the probe batch: an array, or a list/dict of arrays for a model with
            several inputs.
        wrt: `"weights"` or `"inputs"`. Defaults to `"weights"`.
        layers: layer names (or layer objects) to evaluate. Defaults to every
            layer with trainable weights plus standalone activation layers.
            Inside a nested model, names are `"outer/inner"`; a layer's second
            call is `"name@1"`.
        reduction: how to reduce over the probe batch: `"mean"`, `"rms"`,
            `"max"`, or None for the per-sample norms. Defaults to `"mean"`.
        method: `"exact"`, `"estimate"`, or `"auto"` (exact when its
            predicted cost is at most twice the estimate's). Defaults to
            `"exact"`.
        num_probes: random tangents of the estimate (at least 2); the
            relative error of a per-sample value is about
            `1 / sqrt(2 * num_probes)`. Defaults to None: 32.
        seed: the estimate's seed (a non-negative int): the same seed gives
            the same values. Defaults to None: a fresh seed per call, drawn
            from the operating system, never from a global random state.
        memory_budget_mb: working memory in MiB the computation may use; it is
            chunked over neurons and samples to stay under it. Defaults to 1024.

    Returns:
        A `Sensitivities`: a dict `{layer_key: np.ndarray}` of shape `(C_l,)`,
        or `(B, C_l)` when `reduction=None`, whose attributes say how they were
        computed: `method` (`"exact"` or `"estimate"`), `num_probes`, and
        `std_error`, the standard error of each value (zero when exact).

    Raises:
        ValueError: on an argument or input that does not fit the model.
        UnsupportedModelError: for a model that is not built, or a subclassed
            model whose `call` cannot be replayed exactly (docs/models.md
            says what a subclassed model may do).

    Example:

    A `Dense` neuron's value is `x . w_k + b_k`: its derivative is `x` on its
    kernel column and 1 on its bias, so its sensitivity to weights is
    `sqrt(||x||^2 + 1)`, and to inputs the norm of its kernel column.

    >>> layer = keras.layers.Dense(3, kernel_initializer="ones", name="hidden")
    >>> model = keras.Sequential([keras.Input((4,)), layer])
    >>> x = np.ones((2, 4), "float32")
    >>> s = neuron_sensitivity(model, x)
    >>> s["hidden"].shape, s.method
    ((3,), 'exact')
    >>> np.allclose(s["hidden"], np.sqrt(4 + 1))
    True
    >>> np.allclose(neuron_sensitivity(model, x, wrt="inputs")["hidden"], 2.0)
    True
    """
    wrt = _arguments.check_wrt(wrt, allow_both=False)
    _arguments.check_reduction(reduction)
    _arguments.check_method(method)
    num_probes = _arguments.check_num_probes(num_probes)
    seed = _arguments.check_seed(seed)
    _arguments.check_budget(memory_budget_mb)
    problem = _computation.prepare(model, x, wrt=wrt, layers=layers)
    (result,) = _computation.compute(
        problem,
        method=method,
        num_probes=num_probes,
        seed=seed,
        memory_budget_mb=memory_budget_mb,
    ).values()
    return result.reduce(reduction)


def neuron_activity(
    model,
    x,
    *,
    layers=None,
    dormant_threshold=health.DEFAULT_DORMANT_THRESHOLD,
    saturation_threshold=health.DEFAULT_SATURATION_THRESHOLD,
    memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB,
):
    """What every neuron's output does on a batch, and its status.

    For each neuron, over the samples and positions of `x` (padded
    positions of a Keras mask left out): its mean activation, mean absolute
    activation, standard deviation, firing rate, tau-dormant score (Sokar
    et al. 2023), contribution utility (Dohare et al. 2024) and the slope of
    its activation where it fires; then its status: `"frozen"` (nothing
    trainable upstream), `"dead"` (sensitivity to weights exactly zero on
    every sample), `"dormant"` (tau-score at most `dormant_threshold`),
    `"saturated"` (it fires, but its activation's slope there is at most
    `saturation_threshold` of the largest) or `"active"`. The same numbers
    `NeuronSensitivityCallback` logs at every epoch.

    Args:
        model: a built `keras.Model`, as for `neuron_sensitivity`.
        x: the batch: an array, or a list/dict of arrays for a model with
            several inputs.
        layers: layer names (or layer objects), as for `neuron_sensitivity`.
            Defaults to every layer with trainable weights plus standalone
            activation layers.
        dormant_threshold: tau: a neuron whose mean `|activation|` is at most
            this fraction of its layer's average is dormant. Defaults to 0.1.
        saturation_threshold: a neuron that fires is saturated when the
            derivative of its activation, averaged over the entries where it
            fires, is at most this fraction of the activation's largest
            derivative. Defaults to 0.01.
        memory_budget_mb: working memory in MiB for the sensitivity that
            tells dead neurons. Defaults to 1024.

    Returns:
        A `NeuronActivity`: `{layer_key: {statistic: np.ndarray (C,)}}` with
        `mean`, `mean_abs`, `std`, `firing_rate`, `tau_score`, `utility`
        (NaN where the next layer is not a `Dense` or a convolution),
        `slope` (NaN where the activation's derivative is unknown) and
        `status`.

    Raises:
        ValueError: on an argument or input that does not fit the model.

    Example:

    Three ReLU neurons that output 4, 0.1 and 0 on every sample: the first
    is active, the second dormant (its mean |activation| is under a tenth
    of the layer's average), the third dead.

    >>> layer = keras.layers.Dense(3, activation="relu", kernel_initializer="ones", name="hidden")
    >>> model = keras.Sequential([keras.Input((4,)), layer])
    >>> _ = layer.bias.assign([0.0, -3.9, -10.0])
    >>> a = neuron_activity(model, np.ones((2, 4), "float32"))
    >>> a["hidden"]["status"].tolist()
    ['active', 'dormant', 'dead']
    >>> a["hidden"]["firing_rate"].tolist()
    [1.0, 1.0, 0.0]
    >>> sorted(a["hidden"])
    ['firing_rate', 'mean', 'mean_abs', 'slope', 'status', 'std', 'tau_score', 'utility']
    """
    dormant_threshold = _arguments.check_dormant_threshold(dormant_threshold)
    saturation_threshold = _arguments.check_saturation_threshold(saturation_threshold)
    _arguments.check_budget(memory_budget_mb)
    problem = _computation.prepare(model, x, wrt=("weights",), layers=layers)
    # Dead neurons are exact zeros, which the estimator keeps exact too: the
    # cheaper method at the fewest probes tells them.
    results = _computation.compute(
        problem,
        method="auto",
        num_probes=2,
        seed=0,
        memory_budget_mb=memory_budget_mb,
        activity=True,
    )
    if results.activity_error is not None:
        raise results.activity_error
    return health.NeuronActivity.build(
        results.activity,
        results["weights"].reduce("mean"),
        dormant_threshold,
        saturation_threshold,
    )


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
        (one per floating-point input, then one per embedded input) when
        there are several.
        For `wrt="weights"`: `{weight.path: array (B, C, *weight.shape)}` over
        the trainable weights upstream of the layer.

    Raises:
        ValueError: on an argument or input that does not fit the model.

    Example:

    The derivative of neuron `k` of a `Dense` layer with respect to its
    kernel is the sample `x` in column `k`, zero elsewhere:

    >>> layer = keras.layers.Dense(3, name="hidden")
    >>> model = keras.Sequential([keras.Input((4,)), layer], name="mlp")
    >>> x = np.arange(8, dtype="float32").reshape(2, 4)
    >>> j = neuron_jacobian(model, x, "hidden")
    >>> j[layer.kernel.path].shape
    (2, 3, 4, 3)
    >>> j[layer.kernel.path][1, 2, :, 2].tolist()
    [4.0, 5.0, 6.0, 7.0]
    >>> float(np.abs(j[layer.kernel.path][1, 2, :, :2]).max())
    0.0
    """
    wrt_tuple = _arguments.check_wrt(wrt, allow_both=False)
    if isinstance(layer, (list, tuple)):
        raise ValueError(
            f"Received layer={layer!r}, a list. Expected one layer name: "
            "`neuron_jacobian` returns the derivatives of one layer. Call it "
            "once per layer."
        )
    problem = _computation.prepare(model, x, wrt=wrt_tuple, layers=[layer])
    result = layer_jacobian(problem.graph, problem.inputs, problem.keys[0], wrt)
    if wrt == "inputs" and len(result) == 1:
        return result[0]
    return result


def clear_cache():
    """Frees the functions this package traced, and what it keeps with them.

    `neuron_sensitivity` and the callback keep, per model, the method objects
    of its most recent configurations with their traced functions (at most
    16 entries, about 8 configurations; the least recently used is dropped),
    so that a repeated call (and the callback's next logged epoch, or next
    `fit` of the same model) does not trace again; they are freed with the
    model. Use this to free that memory now, as
    `keras.backend.clear_session()` frees Keras's global state: for
    example between the models of a sweep that keeps them. The next call
    traces again.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden")])
    >>> x = np.ones((2, 4), "float32")
    >>> before = neuron_sensitivity(model, x)["hidden"]
    >>> clear_cache()
    >>> np.array_equal(neuron_sensitivity(model, x)["hidden"], before)  # traced again
    True
    """
    _computation.clear_cache()
