"""The rule interface of the reverse sweep, its shared helpers and the generic rule.

A rule knows two things about one layer family, for a block of cotangents
(one per neuron `k` and sample `n`) arriving at the layer's output:

- the hop: the cotangents at the layer's inputs;
- the squared norm, per `(k, n)`, of the layer's per-sample weight gradient,
  read off cached factors wherever a closed form exists, never by forming it.

Index letters, used in every einsum here: `k` neuron (cotangent), `n` sample,
`t`/`s` position (spatial or time), `i` feature in, `o` feature out.
Cotangent tensors have shape `(k, n, ...)`; forward tensors `(n, ...)`.
"""

import contextlib

import keras
import numpy as np
from keras import ops
from keras.src.backend import get_keras_mask, set_keras_mask
from keras.src.backend.common.stateless_scope import get_stateless_scope

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.errors import UnsupportedLayerError

# Activations that act on each element alone: their Jacobian is diagonal, so
# the hop is a product with the derivative cached from the forward pass.
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu",
        "sigmoid", "hard_sigmoid", "log_sigmoid", "sparse_sigmoid", "tanh",
        "hard_tanh", "tanh_shrink", "softplus", "softsign", "sparse_plus",
        "squareplus", "silu", "swish", "hard_silu", "hard_swish", "mish",
        "exponential", "soft_shrink", "hard_shrink",
    }
)


_is_float = backend.is_float


def tile_rows(x, k):
    """`(n, ...)` -> `(k * n, ...)`: row `j * n + m` is sample `m`.

    A Keras mask that a layer set on `x` at run time (keras_hub's embeddings
    with `mask_zero` do) is tiled along, so that a replayed layer (masked
    pooling, say) computes what it computed in the forward pass.
    """
    tiled = ops.tile(x, [k] + [1] * (len(x.shape) - 1))
    mask = get_keras_mask(x)
    if mask is not None:
        set_keras_mask(tiled, ops.tile(mask, [k] + [1] * (len(mask.shape) - 1)))
    return tiled


def shape_of(x):
    """`x`'s shape as a list of ints (inside the engine every shape is
    known: the probe's shape is fixed). Static shapes keep shape arithmetic
    out of the compiled graphs."""
    return list(backend.shape(x))


def concat_shapes(*parts):
    return [d for p in parts for d in p]


def merge(g):
    """`(k, n, ...)` -> `(k * n, ...)`."""
    return ops.reshape(g, concat_shapes([-1], shape_of(g)[2:]))


def split(g, k):
    """`(k * n, ...)` -> `(k, n, ...)`."""
    return ops.reshape(g, concat_shapes([k, -1], shape_of(g)[1:]))


def sum_squares_per_row(g):
    """`(k, n, ...)` -> `(k, n)`."""
    axes = tuple(range(2, len(g.shape)))
    return ops.sum(ops.square(g), axis=axes) if axes else ops.square(g)


def outer_sqnorm(u, g):
    """`||sum_t u[n, t] (x) g[k, n, t]||^2` for every `(k, n)`.

    The squared Frobenius norm of a per-sample weight gradient `U^T G`, with
    `u` of shape `(n, t, i)` and `g` of shape `(k, n, t, o)`. Formed directly
    (`k t i o` per sample) or through Gram matrices, `<U U^T, G G^T>` ("ghost
    norm": `t t i` per sample for `U U^T`, shared by the `k` cotangents, plus
    `k t t o`), whichever costs less. With many cotangents sharing one `U`
    the ghost form wins roughly when `t < i`, not by the one-cotangent rule
    `2 t t <= i o` of the differential-privacy literature.
    """
    k, t, i, o = g.shape[0], u.shape[1], u.shape[2], g.shape[3]
    if t == 1:
        return ops.sum(ops.square(u[:, 0]), -1) * ops.sum(ops.square(g[:, :, 0]), -1)
    if ghost_is_cheaper(k, t, i, o):
        uu = ops.einsum("nti,nsi->nts", u, u)
        gg = ops.einsum("knto,knso->knts", g, g)
        return ops.einsum("nts,knts->kn", uu, gg)
    # U^T G per row: one (i, t) x (t, o) product each, no transposed copy of G
    # (about a third faster than the einsum, which transposes G).
    ut = ops.transpose(u, [0, 2, 1])
    product = ops.matmul(ut[None], g)  # (k, n, i, o)
    return ops.sum(ops.square(product), [2, 3])


def ghost_is_cheaper(k, t, i, o):
    """Whether `<U U^T, G G^T>` costs less than forming `U^T G` for `k` rows.

    Measured on CPU (docs/benchmarks.md), a multiply-add of the ghost form's
    small Gram products costs about twice one of the direct form's batched
    product, hence the factor 2.
    """
    if k is None:
        return t * t < i * o
    return 2 * t * t * (i + k * o) < k * t * i * o


def channel_sqnorm(u, d):
    """`||sum_t u[n, t] d[k, n, t]||^2` for every `(k, n)`: `outer_sqnorm`
    for a cotangent that lives in one output feature per row (`o = 1`).

    `u` is `(n, t, i)`, `d` is `(k, n, t)`.
    """
    k, t, i = d.shape[0], u.shape[1], u.shape[2]
    if t == 1:
        return ops.sum(ops.square(u[:, 0]), -1) * ops.square(d[:, :, 0])
    if ghost_is_cheaper(k, t, i, 1):
        uu = ops.einsum("nti,nsi->nts", u, u)
        return ops.einsum("nts,knt,kns->kn", uu, d, d)
    return ops.sum(ops.square(ops.einsum("nti,knt->kni", u, d)), -1)


# --- activations, fused into a layer or standalone -------------------------


def activation_kind(fn):
    """`"linear"`, `"elementwise"`, `"softmax"` or `"generic"`."""
    name = getattr(fn, "__name__", None)
    if fn is None or name == "linear":
        return "linear"
    if name in ELEMENTWISE_ACTIVATIONS:
        return "elementwise"
    if fn is keras.activations.softmax:
        return "softmax"
    return "generic"


def activation_forward(fn, z):
    """Applies `fn` to `z`; returns the output and the tensor the hop needs.

    That tensor is None for a linear activation, the derivative for an
    elementwise one, the output for softmax, and `z` for any other.
    """
    kind = activation_kind(fn)
    if kind == "linear":
        return z, None
    if kind == "elementwise":
        return elementwise_derivative(fn, z)
    y = fn(z)
    return y, (y if kind == "softmax" else z)


def elementwise_derivative(fn, z):
    """`(fn(z), fn'(z))` for a map that acts on each element alone: the
    derivative is one VJP with a cotangent of ones."""
    y, pullback = backend.vjp(fn, z)
    return y, pullback(ops.ones_like(y))


def activation_backward(fn, cache, g):
    """Cotangents `(k, n, ...)` at an activation's output -> at its input."""
    kind = activation_kind(fn)
    if kind == "linear":
        return g
    if kind == "elementwise":
        return g * cache
    if kind == "softmax":
        return cache * (g - ops.sum(g * cache, axis=-1, keepdims=True))
    k = g.shape[0]
    _, pullback = backend.vjp(fn, tile_rows(cache, k))
    return split(pullback(merge(g)), k)


def activation_derivative(y, cache):
    """The diagonal of a linear or elementwise activation's Jacobian."""
    return ops.ones_like(y) if cache is None else cache


def variable_tensor(v):
    """What a tape differentiates: a Keras 3 variable's `.value` (its dtype
    is a string, which `tape.gradient` rejects), a `tf.Variable` itself."""
    return v.value if isinstance(v, keras.Variable) else v


def plain_weights(layer):
    """True when the layer computes from its own variables as they are: no
    LoRA factors, no quantization, same compute and variable dtype."""
    return (
        not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and layer.compute_dtype == getattr(layer, "variable_dtype", layer.dtype)
    )


# --- cotangents that live in one channel ----------------------------------


class Channelwise:
    """Cotangents `(k, n, ..., C)` that are zero outside one channel per row.

    The seed of a neuron is one: neuron `k`'s cotangent at its own layer lives
    in channel `k` only, and it stays in one channel through every layer that
    acts channel by channel (activations, BatchNormalization, dropout, `Add`,
    depthwise convolutions). Keeping only that channel makes those hops `C`
    times cheaper, and the next convolution's hop a per-channel one.

    Attributes:
        values: `(k, n, ...)`: row `(k, n)` of the cotangent at its channel,
            at every position (no channel axis).
        channels: int32, the channel each row lives in: `(k,)`, the same for
            every sample, or `(k, n)` when the sweep has packed each sample's
            live rows together (see `Rule.live_neurons`).
    """

    def __init__(self, values, channels):
        self.values = values
        self.channels = channels

    @property
    def per_sample(self):
        """Whether `channels` is `(k, n)`."""
        return len(self.channels.shape) == 2

    def dense(self, num_channels):
        """The full cotangent `(k, n, ..., num_channels)`."""
        onehot = ops.one_hot(self.channels, num_channels, dtype=self.values.dtype)
        lead = len(self.channels.shape)
        onehot = ops.reshape(
            onehot,
            shape_of(self.values)[:lead]
            + [1] * (len(self.values.shape) - lead)
            + [num_channels],
        )
        return self.values[..., None] * onehot


def gather_channels(x, channels):
    """`x[n, ..., channels[k]]` (or `channels[k, n]`) as `(k, n, ...)`.

    `x` is `(n, ..., C)`; `channels` is `(k,)` or `(k, n)`.
    """
    rank = len(x.shape)
    if len(channels.shape) == 1:
        picked = ops.take(x, channels, axis=-1)  # (n, ..., k)
        return ops.transpose(picked, [rank - 1] + list(range(rank - 1)))
    moved = ops.transpose(x, [0, rank - 1] + list(range(1, rank - 1)))  # (n, C, ...)
    index = ops.transpose(channels)  # (n, k)
    index = ops.reshape(index, shape_of(index) + [1] * (rank - 2))
    picked = ops.take_along_axis(moved, index, axis=1)  # (n, k, ...)
    return ops.transpose(picked, [1, 0] + list(range(2, rank)))  # (k, n, ...)


def gather_columns(weights, channels):
    """`weights[..., channels]`: `(..., k)`, or `(..., k, n)` for `(k, n)` channels."""
    return ops.take(weights, channels, axis=-1)


def live_rows(derivative):
    """`(n, C)`: whether an activation's derivative `(n, ..., C)` is nonzero
    at some position; where it is not, the neuron's row is exactly zero."""
    flat = ops.reshape(derivative, [shape_of(derivative)[0], -1, derivative.shape[-1]])
    return ops.any(ops.not_equal(flat, 0), axis=1)


# --- rules ------------------------------------------------------------------


class Rule:
    """How the sweep passes through one layer family.

    Subclass it and `register_rule` it for a layer class of your own. Each
    method receives a `Site`: one call of the layer in the computation, with
    its layer, key, input and output tensors, trainable weights, and
    `site.run(inputs)` to replay it (see `keras_neuron_sensitivity.Site`).
    """

    def applies(self, layer):
        """Whether this rule is exact for this instance (else: generic)."""
        return True

    def forward(self, site):
        """Returns `(flat_outputs, cache)` for the site's inputs.

        The cache holds tensors only (or None, or tuples of them): it is
        passed between compiled functions.
        """
        raise NotImplementedError

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        """Pushes cotangents back through the layer.

        Args:
            cotangents: one `(k, n, ...)` tensor or None per flat output.
            need_inputs: whether the input cotangents are needed.
            need_weights: whether the weight term is needed.

        Returns:
            `(input_cotangents, weight_sqnorm)`: a list with one `(k, n, ...)`
            tensor (or None) per input, or None; and a `(k, n)` tensor of the
            squared norm of the per-sample gradient over the layer's trainable
            weights, or None.
        """
        raise NotImplementedError

    def seed_backward(self, site, cache, start, k, need_inputs, need_weights):
        """`backward` for the target layer itself, neurons `start..start+k-1`.

        The cotangent at the target's output is one-hot per neuron (divided
        by the number of positions), so rules with a diagonal structure can
        skip forming it. By default it is formed and passed to `backward`.
        A rule that implements `channel_backward` need not implement this:
        the seed is then passed to `channel_backward`.
        """
        y = site.outputs[0]
        seed = seed_cotangent(y, start, k)
        cotangents = [seed] + [None] * (len(site.outputs) - 1)
        return self.backward(site, cache, cotangents, need_inputs, need_weights)

    def channel_backward(self, site, cache, cotangent, need_inputs, need_weights):
        """`backward` for cotangents that live in one channel of output 0.

        Optional: implement it where one channel's cotangent is cheaper to
        push than a full one (per-channel layers keep it in one channel, and
        may return a `Channelwise` input cotangent; a convolution's hop is a
        per-channel transposed convolution). By default the full cotangent is
        formed and passed to `backward`.

        Args:
            cotangent: a `Channelwise` at the site's first output.

        Returns:
            As `backward`; an input cotangent may be a `Channelwise`.
        """
        y = site.outputs[0]
        dense = cotangent.dense(y.shape[-1])
        cotangents = [dense] + [None] * (len(site.outputs) - 1)
        return self.backward(site, cache, cotangents, need_inputs, need_weights)

    def live_neurons(self, site, cache):
        """Which neurons' rows can be nonzero on which sample: `(n, C)` bool.

        Optional. False where neuron `c`'s cotangent, seeded at this layer's
        output, is zeroed by the layer's own derivative on sample `n` (an
        inactive ReLU unit): its sensitivity is exactly zero there, and the
        sweep skips that row. None (the default) means every row is live.
        """
        return None

    def weight_rows(self, site, cache, cotangents):
        """Each row's per-sample gradient over the site's trainable weights.

        Optional: the sweep needs the gradients themselves, not only their
        norms, where it summarizes everything below a narrow tensor by a
        Gram matrix (inner products between rows' gradients). By default
        one gradient per row, in a loop; a closed form makes that cheap.

        Args:
            cotangents: one `(k, n, ...)` tensor or None per flat output.

        Returns:
            `(k, n, P)`: row `(k, n)`'s gradient over `site.weights`,
            flattened in any fixed order.
        """
        k = next(g for g in cotangents if g is not None).shape[0]
        flat = GenericRule.flat_grads(site, cotangents)
        return ops.reshape(flat, [k, -1, flat.shape[-1]])


def seed_cotangent(y, start, k):
    """`(k, n, ..., c)`: d a_k / d y for neurons `start .. start + k - 1`.

    The neuron value is the channel averaged over positions, so the cotangent
    is `1 / positions` on its channel; rows past the last channel are zero.
    """
    channels = y.shape[-1]
    positions = int(np.prod(y.shape[1:-1]))
    if _all_neurons(start, k, channels):
        seed = ops.eye(channels, dtype=y.dtype) / positions
    else:
        seed = ops.one_hot(start + ops.arange(k), channels, dtype=y.dtype) / positions
    seed = ops.reshape(seed, [k, 1] + [1] * (len(y.shape) - 2) + [channels])
    return ops.broadcast_to(seed, concat_shapes([k], shape_of(y)))


def neuron_columns(x, start, k):
    """Entries `start .. start + k - 1` of `x`'s last (neuron) axis.

    Entries past the last neuron (the tail of the last chunk) are zero.
    """
    channels = x.shape[-1]
    if _all_neurons(start, k, channels):
        return x
    index = start + ops.arange(k, dtype="int32")
    picked = ops.take(x, ops.minimum(index, channels - 1), axis=-1)
    return picked * ops.cast(index < channels, x.dtype)


def _all_neurons(start, k, channels):
    # In a single round `start` is the Python int 0: no gathering needed.
    return isinstance(start, int) and start == 0 and k == channels


# Rows of the generic rule's per-row gradients evaluated side by side.
_PARALLEL_ROWS = 16


class GenericRule(Rule):
    """Any differentiable layer: batched VJP for the hop, per-row VJP norms.

    Exact for every layer whose samples do not interact, but slower than a
    closed form: the hop replays the layer on `k * n` rows at once, and the
    weight term takes one gradient per row in a loop.
    """

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        k = next(g for g in cotangents if g is not None).shape[0]
        tiled = [tile_rows(x, k) for x in site.inputs]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        flat_cots = [merge(cotangents[j]) for j in connected]
        input_cots = None
        if need_inputs:
            grads = iter(input_vjp(site, tiled, connected, flat_cots))
            input_cots = [split(next(grads), k) if _is_float(x) else None for x in tiled]
        sqnorm = None
        if need_weights:
            sqnorm = ops.reshape(
                self.per_row(site, tiled, connected, flat_cots, _row_sqnorm), [k, -1]
            )
        return input_cots, sqnorm

    @staticmethod
    def flat_grads(site, cotangents):
        """`(k * n, P)`: each row's weight gradient, flattened.

        For a layer called more than once: its per-sample gradient is the sum
        over calls, so norms cannot be added; the vectors can.
        """
        k = next(g for g in cotangents if g is not None).shape[0]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        return GenericRule.per_row(
            site,
            [tile_rows(x, k) for x in site.inputs],
            connected,
            [merge(cotangents[j]) for j in connected],
            _row_flat,
        )

    @staticmethod
    def per_row(site, tiled, connected, flat_cots, reduce):
        """Maps `reduce(per-row weight gradients)` over the `k * n` rows."""
        weights = site.weights
        # Each row keeps its own slice of its inputs' Keras masks.
        masked = [j for j, x in enumerate(tiled) if get_keras_mask(x) is not None]
        masks = [get_keras_mask(tiled[j]) for j in masked]

        def one_row(row):
            inputs, row_masks, cots = row
            single = [x[None] for x in inputs]
            for j, mask in zip(masked, row_masks):
                set_keras_mask(single[j], mask[None])

            def f(values):
                with weights_as(weights, values):
                    outs = site.run(single)
                return [outs[j] for j in connected]

            _, pullback = backend.vjp(f, primal_weights(weights))
            return reduce(pullback([g[None] for g in cots]))

        with backend.name_scope("generic_per_row"):
            return backend.map_rows(
                one_row, (tiled, masks, flat_cots), _PARALLEL_ROWS, dtype=weights[0].dtype
            )


def input_vjp(site, inputs, connected, cotangents):
    """The gradients, at `inputs`' floating-point entries, of the call's
    `connected` outputs replayed on `inputs` against `cotangents` (one VJP
    of the layer on all rows)."""
    positions = [j for j, x in enumerate(inputs) if _is_float(x)]

    def f(floats):
        replaced = list(inputs)
        for j, x in zip(positions, floats):
            replaced[j] = with_mask(x, inputs[j])
        outs = site.run(replaced)
        return [outs[j] for j in connected]

    _, pullback = backend.vjp(f, [inputs[j] for j in positions])
    try:
        return pullback(cotangents)
    except LookupError as error:  # "No gradient defined for operation"
        raise UnsupportedLayerError(
            f"Layer {site.key!r} ({type(site.layer).__name__}) uses an "
            f"operation {backend.name()} cannot differentiate ({error}), so no "
            "neuron after it has a derivative through it. Expected a "
            "differentiable layer. Select only layers before it (`layers=`), "
            "or register a `Rule` for its class that says how cotangents "
            "pass through it."
        ) from error


def with_mask(x, like):
    """`x` carrying `like`'s Keras mask (a function being differentiated
    receives new tensor objects, without the masks of the ones passed)."""
    mask = get_keras_mask(like)
    if mask is not None and get_keras_mask(x) is None:
        set_keras_mask(x, mask)
    return x


def primal_weights(variables):
    """What to differentiate a call with respect to its weights by: their
    values (Keras 3 variables, read back through `weights_as`), or the
    variables themselves (`tf_keras`'s, which TensorFlow's tape watches)."""
    if all(isinstance(v, keras.Variable) for v in variables):
        return [v.value for v in variables]
    return list(variables)


@contextlib.contextmanager
def weights_as(variables, values):
    """Keras 3 `variables` read `values` inside (every other variable reads
    what the enclosing `keras.StatelessScope` maps it to, if any); nothing
    for `tf_keras` variables, which are differentiated as they are."""
    if not all(isinstance(v, keras.Variable) for v in variables):
        yield
        return
    outer = get_stateless_scope()
    scope = keras.StatelessScope(state_mapping=list(zip(variables, values)))
    if outer is not None:
        for key, value in outer.state_mapping.items():
            scope.state_mapping.setdefault(key, value)
    with scope:
        yield


def _row_sqnorm(grads):
    return sum(ops.sum(ops.square(g)) for g in grads)


def _row_flat(grads):
    return ops.concatenate([ops.reshape(g, [-1]) for g in grads], 0)


GENERIC_RULE = GenericRule()
