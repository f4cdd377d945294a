"""What every neuron's output did on the probe: activity, firing, slope.

A site's tensor `(n, ..., k)` has one entry per sample and position (a
pixel of a conv map, a time step); a site's Keras mask (from
`Embedding(mask_zero=True)`) drops padded positions. `site_statistics`
reduces a site's tensor over its kept entries to per-neuron sums, written
on `keras.ops` so that any compiled forward of the engine can call it on
the tensors it already holds: `SiteSums` does so for all selected sites in
the methods' own forward (`sweep.Sweep`, `estimate.Estimator`), and in
`ActivityForward`'s where no method ran one (`_computation._activity`).
`merge` combines the sums of several chunks of the probe, `summarize` turns
them into the statistics on the host.

Two things are read from the layers themselves, through tables:

- the site's elementwise activation (`ACTIVATIONS`, found per layer class by
  `LAYER_ACTIVATIONS`): whether it "fires" when its output is above zero
  (ReLU-like) or when it is nonzero, and its derivative as a function of
  its own output, relative to the activation's largest derivative
  (sigmoid: `y (1 - y) / (1/4)`, tanh: `1 - y^2`, ReLU6: 1 between 0 and 6,
  else 0). Saturation is read from that slope;
- the layer that consumes the site's tensor (`OUTGOING`): a `Dense`, an
  `EinsumDense` that contracts the neuron axis, or a convolution, whose
  kernel gives each neuron's outgoing weight mass `sum_j |w_kj|` for the
  contribution utility.

Index letters: `e` entry (a sample at one kept position), `k` neuron.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import activations, layers, ops
from keras.src.backend import get_keras_mask

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.replay import (
    Replay,
    Variables,
    float32_compute,
    primary_variables,
)

# --- activations --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Activation:
    """How to read firing and slope off an elementwise activation's output.

    Attributes:
        firing: `"positive"` (ReLU-like: off at or below zero) or
            `"nonzero"`.
        slope: `y -> phi'(z) / max phi'` from the output `y = phi(z)`, in
            [0, 1]; None where the derivative is not a function of the
            output (GELU, SiLU: not monotonic).
    """

    firing: str
    slope: object = None


def _step(y, low=None, high=None, inside=1.0, outside=0.0):
    """`inside` where `low < y < high`, else `outside`."""
    keep = ops.ones_like(y, dtype="bool")
    if low is not None:
        keep = ops.logical_and(keep, y > low)
    if high is not None:
        keep = ops.logical_and(keep, y < high)
    return ops.where(keep, inside, outside)


def _leaky(negative_slope):
    largest = max(1.0, abs(negative_slope))
    return Activation("positive", lambda y: ops.where(y > 0, 1.0, abs(negative_slope)) / largest)


def _elu(alpha, scale=1.0):
    # y = scale * alpha * (e^z - 1) below zero: dy/dz = y + scale * alpha.
    largest = max(scale, scale * alpha)
    return Activation("positive", lambda y: ops.where(y > 0, scale, y + scale * alpha) / largest)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805

ACTIVATIONS = {
    activations.linear: Activation("nonzero", ops.ones_like),
    activations.relu: Activation("positive", lambda y: _step(y, low=0.0)),
    activations.relu6: Activation("positive", lambda y: _step(y, 0.0, 6.0)),
    activations.leaky_relu: _leaky(0.2),
    activations.elu: _elu(1.0),
    activations.selu: _elu(_SELU_ALPHA, _SELU_SCALE),
    activations.sigmoid: Activation("nonzero", lambda y: 4.0 * y * (1.0 - y)),
    activations.tanh: Activation("nonzero", lambda y: 1.0 - ops.square(y)),
    activations.hard_sigmoid: Activation("nonzero", lambda y: _step(y, 0.0, 1.0)),
    activations.hard_tanh: Activation("nonzero", lambda y: _step(y, -1.0, 1.0)),
    activations.softsign: Activation("nonzero", lambda y: ops.square(1.0 - ops.abs(y))),
    # softplus' = sigmoid(z) = 1 - e^-y.
    activations.softplus: Activation("nonzero", lambda y: 1.0 - ops.exp(-y)),
    activations.gelu: Activation("positive"),
    activations.silu: Activation("positive"),
    activations.hard_silu: Activation("positive"),
    activations.mish: Activation("positive"),
    activations.celu: Activation("positive"),
}


def _relu_layer(layer):
    if layer.threshold != 0:
        return Activation("positive")
    negative = float(layer.negative_slope)
    largest = max(1.0, abs(negative))
    top = None if layer.max_value is None else float(layer.max_value)

    def slope(y):
        below = ops.where(y > 0, 1.0, abs(negative))
        return (below if top is None else ops.where(y < top, below, 0.0)) / largest

    return Activation("positive", slope)


def _activation_of(layer):
    return ACTIVATIONS.get(getattr(layer, "activation", None))


# Per layer class: its output's elementwise activation, or None. Looked up
# along the class's MRO, so subclasses inherit their parent's entry.
LAYER_ACTIVATIONS = {
    layers.Dense: _activation_of,
    layers.EinsumDense: _activation_of,
    layers.Activation: _activation_of,
    keras.src.layers.convolutional.base_conv.BaseConv: _activation_of,
    keras.src.layers.convolutional.base_conv_transpose.BaseConvTranspose: _activation_of,
    keras.src.layers.convolutional.base_depthwise_conv.BaseDepthwiseConv: _activation_of,
    keras.src.layers.convolutional.base_separable_conv.BaseSeparableConv: _activation_of,
    layers.ReLU: _relu_layer,
    layers.LeakyReLU: lambda layer: _leaky(float(layer.negative_slope)),
    layers.ELU: lambda layer: _elu(float(layer.alpha)),
    layers.PReLU: lambda layer: Activation("positive"),
}


def activation_of(layer):
    """The `Activation` of `layer`'s output, or None (not elementwise, or an
    activation not in `ACTIVATIONS`: firing is then "nonzero", slope NaN)."""
    for cls in type(layer).__mro__:
        if cls in LAYER_ACTIVATIONS:
            return LAYER_ACTIVATIONS[cls](layer)
    return None


# --- outgoing weights ---------------------------------------------------------


def _dense_mass(layer):
    return ops.sum(ops.abs(layer.kernel), axis=1)  # (k, out)


def _einsum_mass(layer):
    left, kernel, _ = _einsum_letters(layer)
    axis = kernel.index(left[-1])
    other = [i for i in range(len(kernel)) if i != axis]
    return ops.sum(ops.abs(layer.kernel), axis=other)


def _conv_mass(layer):
    kernel = ops.abs(layer.kernel)  # (*size, k / groups, out)
    *size, per_group, out = backend.shape(kernel)
    groups = getattr(layer, "groups", 1) or 1
    summed = ops.sum(ops.reshape(kernel, (math.prod(size), per_group, groups, out // groups)), axis=(0, 3))
    # Input channel g * per_group + j feeds group g's outputs only.
    return ops.reshape(ops.transpose(summed), (-1,))


def _transpose_mass(layer):
    kernel = ops.abs(layer.kernel)  # (*size, out, k)
    return ops.sum(ops.reshape(kernel, (-1, kernel.shape[-1])), axis=0)


def _depthwise_mass(layer):
    # (*size, k, multiplier): `kernel` of a depthwise convolution, the
    # first of a separable one's two.
    kernel = getattr(layer, "depthwise_kernel", None)
    kernel = ops.abs(layer.kernel if kernel is None else kernel)
    return ops.sum(kernel, axis=[i for i in range(len(kernel.shape)) if i != len(kernel.shape) - 2])


def _einsum_letters(layer):
    try:
        ins, output = layer.equation.replace(" ", "").split("->")
        left, kernel = ins.split(",")
    except ValueError:
        return None
    return left, kernel, output


def _einsum_reads_neurons(layer):
    letters = _einsum_letters(layer)
    if letters is None or "." in layer.equation:
        return False
    left, kernel, output = letters
    # The neuron axis (the input's last) is contracted with one kernel axis.
    return left[-1] in kernel and left[-1] not in output and kernel.count(left[-1]) == 1


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


# Per consumer class: `(applies(layer), mass(layer) -> (k,))`, the summed
# magnitude of each input channel's outgoing weights (read inside the
# variables' scope, so from the values computed on). Quantized layers are
# left out: their `kernel` is not the weights they multiply by.
OUTGOING = {
    layers.Dense: (lambda layer: True, _dense_mass),
    layers.EinsumDense: (_einsum_reads_neurons, _einsum_mass),
    keras.src.layers.convolutional.base_conv.BaseConv: (_channels_last, _conv_mass),
    keras.src.layers.convolutional.base_conv_transpose.BaseConvTranspose: (_channels_last, _transpose_mass),
    keras.src.layers.convolutional.base_depthwise_conv.BaseDepthwiseConv: (_channels_last, _depthwise_mass),
    keras.src.layers.convolutional.base_separable_conv.BaseSeparableConv: (_channels_last, _depthwise_mass),
}

# Layers that pass their input through in inference: the consumer behind
# them is the one whose weights count.
PASS_THROUGH = (
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.SpatialDropout3D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
    layers.Identity,
)


def outgoing(layer):
    """`layer`'s mass function if its kernel reads the neurons, else None."""
    if getattr(layer, "quantization_mode", None):
        return None
    for cls in type(layer).__mro__:
        if cls in OUTGOING:
            applies, mass = OUTGOING[cls]
            return mass if applies(layer) else None
    return None


# --- the reductions -------------------------------------------------------------

def site_statistics(y, mask=None, activation=None):
    """Per-neuron sums of one site's tensor over its kept entries.

    Args:
        y: `(n, ..., k)`, the site's tensor.
        mask: its Keras mask (`(n, ...)`, True where kept) or None.
        activation: the site's `Activation`, or None (firing means nonzero,
            no slope).

    Returns:
        A dict of tensors: `count`, the entries kept (a scalar); per neuron
        `sum`, `abs_sum`, `centered_squares` (the sum of squared deviations
        from this batch's mean: combined across chunks by `merge`, it keeps
        the standard deviation of a neuron whose mean is far from zero
        exact, which `sum(y^2) - n mean^2` in float32 would not), `firing`
        (entries that fire) and, when the activation's slope is known,
        `slope_sum` (the relative derivative summed over the firing entries).
    """
    names, count, totals = _site_sums(y, mask, activation)
    k = y.shape[-1]
    out = {"count": count}
    for i, name in enumerate(names):
        out[name] = totals[i * k : (i + 1) * k]
    return out


def _site_sums(y, mask, activation):
    """`(names, count, totals)`: `totals` holds the sums of `names`, `k`
    values each, back to back, so that a caller can pass them on as one
    tensor (each operation in a compiled function has a cost of its own)."""
    y = ops.cast(y, "float32")
    k = y.shape[-1]
    y_ek = ops.reshape(y, (-1, k))
    keep = None
    if mask is not None:
        mask = ops.cast(mask, "float32")
        while len(mask.shape) < len(y.shape) - 1:
            mask = ops.expand_dims(mask, -1)
        keep = ops.reshape(ops.broadcast_to(mask, ops.shape(y)[:-1]), (-1, 1))
        # A padded entry may hold anything (NaN after a masked softmax).
        y_ek = ops.where(keep > 0, y_ek, 0.0)
    positive = activation is not None and activation.firing == "positive"
    fires = ops.cast(y_ek > 0 if positive else ops.not_equal(y_ek, 0.0), "float32")
    columns, names = [y_ek, ops.abs(y_ek), fires], ["sum", "abs_sum", "firing"]
    if activation is not None and activation.slope is not None:
        columns.append(fires * activation.slope(y_ek))
        names.append("slope_sum")
    if keep is None:
        count = ops.cast(ops.shape(y_ek)[0], "float32")
        first = ops.sum(ops.concatenate(columns, axis=1), axis=0)
    else:
        count = ops.sum(keep)
        first = ops.matmul(ops.transpose(keep), ops.concatenate(columns, axis=1))[0]
    # The second pass: squared deviations from the mean of the first.
    deviations = ops.square(y_ek - first[:k] / ops.maximum(count, 1.0))
    if keep is not None:
        deviations = deviations * keep
    return names + ["centered_squares"], count, ops.concatenate([first, ops.sum(deviations, axis=0)])


def merge(parts):
    """The sums of chunks of the probe (NumPy, as `site_statistics` gave
    them) combined into the sums of the whole probe (Chan et al.'s pairwise
    update for the centred squares)."""
    merged = dict(parts[0])
    for part in parts[1:]:
        n_a, n_b = merged["count"], part["count"]
        n = n_a + n_b
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(n_b > 0, part["sum"] / np.maximum(n_b, 1), 0) - np.where(
                n_a > 0, merged["sum"] / np.maximum(n_a, 1), 0
            )
        squares = merged["centered_squares"] + part["centered_squares"]
        if n > 0:
            squares = squares + delta**2 * n_a * n_b / n
        merged = {name: merged[name] + part[name] for name in merged if name in part}
        merged["centered_squares"] = squares
    return merged


# --- the statistics -------------------------------------------------------------

STATISTICS = ("mean", "mean_abs", "std", "firing_rate", "tau_score", "utility", "slope")


def summarize(sums, mass=None):
    """`{statistic: (k,) float64}` of one site from its summed reductions.

    Args:
        sums: `{name: NumPy}` as `site_statistics` (or `merge`) gave them.
        mass: `(k,)` outgoing weight mass per neuron, or None (utility NaN).

    Returns:
        `mean`, `mean_abs` (`E|h_k|`), `std` (population standard
        deviation), `firing_rate`, `tau_score` (`E|h_k|` over its mean over
        the site's neurons, Sokar et al. 2023; 0 for every neuron when all
        are silent), `utility` (`E|h_k| sum_j |w_kj|`, Dohare et al. 2024),
        `slope` (the mean relative derivative over the firing entries; NaN
        where it never fires or the activation's derivative is unknown).
        With no kept entry, all NaN.
    """
    count = float(sums["count"])
    k = np.shape(sums["sum"])[-1]
    if count == 0:
        return {name: np.full(k, np.nan) for name in STATISTICS}
    mean_abs = np.asarray(sums["abs_sum"], np.float64) / count
    layer_mean = mean_abs.mean() if k else 0.0
    firing = np.asarray(sums["firing"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = mean_abs / layer_mean if layer_mean > 0 else np.zeros(k)
        slope = (
            np.where(firing > 0, np.asarray(sums["slope_sum"], np.float64) / firing, np.nan)
            if "slope_sum" in sums
            else np.full(k, np.nan)
        )
    return {
        "mean": np.asarray(sums["sum"], np.float64) / count,
        "mean_abs": mean_abs,
        "std": np.sqrt(np.maximum(np.asarray(sums["centered_squares"], np.float64) / count, 0)),
        "firing_rate": firing / count,
        "tau_score": tau,
        "utility": mean_abs * mass if mass is not None else np.full(k, np.nan),
        "slope": slope,
    }


# --- the plan and the forward ---------------------------------------------------


@dataclasses.dataclass(eq=False)
class SitePlan:
    """What the activity of one site needs, found once from the graph.

    Attributes:
        key: the site's key.
        activation: its `Activation`, or None.
        consumers: the layers whose kernels read its neurons (their outgoing
            weight masses are summed), or None where the utility is not
            defined (the model's output, a consumer that is not a `Dense`, an
            `EinsumDense` on the neuron axis or a convolution, a site read
            inside a layer other than a feed-forward block's hidden units).
        calls: graph calls holding the consumers (their variables are read).
    """

    key: str
    activation: object
    consumers: list
    calls: list


def plan(graph, keys):
    """`[SitePlan]`, one per key, in order."""
    return [_plan_site(graph, graph.site(key)) for key in keys]


def _plan_site(graph, site):
    call = site.call
    inner = _inner_layer(call.layer, site.inside.path)
    if site.inside.which == "output":
        activation = activation_of(inner) if inner is not None else None
    else:
        activation = None  # the input of a projection: its producer is unknown
    consumers, calls = None, []
    if site.kind == "ffn":
        if inner is not None and outgoing(inner) is not None:
            consumers, calls = [inner], [call]
    elif site.inside.path == () and site.tensor in call.outputs:
        consumers, calls = _graph_consumers(graph, site.tensor)
    return SitePlan(site.key, activation, consumers, calls)


def _inner_layer(layer, path):
    """The layer at `path` (`((name, occurrence), ...)`) inside `layer`'s
    call, found by name among its sub-layers; None if not found."""
    for name, _ in path:
        children = layer._flatten_layers(include_self=False, recursive=False)
        found = next((c for c in children if c.name == name), None)
        if found is None:
            below = layer._flatten_layers(include_self=False, recursive=True)
            found = next((c for c in below if c.name == name), None)
        if found is None:
            return None
        layer = found
    return layer


def _graph_consumers(graph, tensor):
    """`(layers, calls)` reading `tensor` with kernels that read its last
    axis, through layers that pass it on; `(None, [])` if any reader is
    another kind of layer, or nothing reads it."""
    layers_, calls, seen = [], [], set()
    pending = [tensor]
    while pending:
        t = pending.pop()
        readers = [call for call in graph.calls if t in call.inputs]
        if not readers:
            return None, []
        for call in readers:
            if isinstance(call.layer, PASS_THROUGH):
                pending.extend(call.outputs[: call.num_layer_outputs])
            elif outgoing(call.layer) is not None and len(call.inputs) == 1:
                if id(call.layer) not in seen:  # a layer called twice: its weights once
                    seen.add(id(call.layer))
                    layers_.append(call.layer)
                calls.append(call)
            else:
                return None, []
    return layers_, calls


class SiteSums:
    """The selected sites' sums (`site_statistics`) and outgoing weight
    masses, read inside a compiled forward that holds the sites' tensors,
    and turned into statistics on the host.

    A method's forward (`sweep.Sweep`, `estimate.Estimator`) or
    `ActivityForward` calls `flat` on the tensors it computed, in the order
    of the keys, and returns the one flat float32 vector (one transfer to
    the host; each operation in a compiled function has a cost of its own);
    `statistics` decodes the vectors of one or more chunks of the probe.

    Args:
        plans: `[SitePlan]`, one per key (`plan`).

    Attributes:
        calls: the graph calls whose variables the masses read (the
            consumers'); the forward passes their values too.
    """

    def __init__(self, plans):
        self.plans = list(plans)
        self.calls = _unique([c for p in self.plans for c in p.calls])
        self._layout = None  # per site, `[(name, size)]` in the flat vector

    def flat(self, tensors, keep=None):
        """Every site's sums and masses, one flat float32 vector (traced).

        Args:
            tensors: each site's tensor `(n, ..., k)`, carrying its Keras
                mask, in the order of the plans.
            keep: `(n,)`, 1 for the samples to count (a chunk padded to its
                traced size), or None for all.
        """
        parts, layout = [], []
        for y, p in zip(tensors, self.plans):
            mask = get_keras_mask(y)
            if keep is not None:
                mask = _and_samples(mask, keep, y)
            names, count, totals = _site_sums(y, mask, p.activation)
            k = int(y.shape[-1])
            parts += [ops.reshape(count, (1,)), totals]
            site = [("count", 1)] + [(name, k) for name in names]
            if p.consumers is not None:
                masses = [ops.cast(outgoing(layer)(layer), "float32") for layer in p.consumers]
                parts.append(masses[0] if len(masses) == 1 else ops.sum(ops.stack(masses), axis=0))
                site.append(("mass", k))
            layout.append(site)
        self._layout = layout
        return ops.concatenate(parts)

    def statistics(self, flats):
        """`{key: {statistic: (k,) np.ndarray}}` (`summarize`'s) from the
        host copies of `flat`'s vectors, one per chunk of the probe."""
        chunks = [self._unpack(np.asarray(f)) for f in flats]
        out = {}
        for i, p in enumerate(self.plans):
            parts = [chunk[i] for chunk in chunks]
            mass = parts[0].get("mass")  # the same weights in every chunk
            sums = merge([{n: v for n, v in part.items() if n != "mass"} for part in parts])
            out[p.key] = summarize(sums, mass)
        return out

    def _unpack(self, flat):
        sites, offset = [], 0
        for layout in self._layout:
            parts = {}
            for name, size in layout:
                parts[name] = flat[offset : offset + size]
                offset += size
            parts["count"] = parts["count"][0]
            sites.append(parts)
        return sites


def _and_samples(mask, keep, y):
    """`mask` (`(n, ...)` or None) and the samples `keep` (`(n,)`)."""
    samples = ops.reshape(ops.cast(keep, "float32"), (-1,) + (1,) * (len(y.shape) - 2))
    if mask is None:
        return samples
    mask = ops.cast(mask, "float32")
    while len(mask.shape) < len(y.shape) - 1:
        mask = ops.expand_dims(mask, -1)
    return mask * samples


class ActivityForward:
    """The selected sites' activity in a compiled forward of its own: where
    no method's forward read it (`_computation._activity`).

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the selected sites.
    """

    def __init__(self, graph, keys):
        self.keys = list(keys)
        self.replay = Replay(graph, self.keys)
        self.sums = SiteSums(plan(graph, self.keys))
        self.variables = Variables(self.replay.calls, read=self.sums.calls)
        self._fn = None

    def __call__(self, inputs, snapshot=None):
        """`{key: {statistic: (k,) np.ndarray}}` (`summarize`'s) on `inputs`.

        Args:
            inputs: one tensor per `graph.inputs` entry, batch first.
            snapshot: `{id(variable): value}` to compute on, or None for
                the variables' values now.
        """
        with float32_compute(self.replay.layers()), primary_variables():
            if snapshot is not None:
                values = self.variables.values(snapshot)
            elif self.variables.stateless:
                # Not copied (TensorFlow would copy each variable eagerly):
                # nothing updates them before this call returns, as training
                # waits for it or it reads the callback's private copy.
                values = [v.value for v in self.variables.all]
            else:
                values = []
            if self._fn is None:
                self._fn = backend.compile(self._forward)
            flat = backend.to_host(self._fn(values, list(inputs)))
        return self.sums.statistics([flat])

    def _forward(self, values, inputs):
        with self.variables.scope(values):
            computed = self.replay.run(inputs)
            return self.sums.flat(self.replay.target_outputs(computed))


def _unique(calls):
    seen, out = set(), []
    for call in calls:
        if id(call) not in seen:
            seen.add(id(call))
            out.append(call)
    return out
