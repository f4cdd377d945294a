"""Per-layer rules of the reverse sweep, and the table that maps layers to them.

A rule knows two things about one layer family, for a block of cotangents
(one per neuron `k` and sample `n`) arriving at the layer's output:

- the hop: the cotangents at the layer's inputs;
- the squared norm, per `(k, n)`, of the layer's per-sample weight gradient,
  read off cached factors wherever a closed form exists, never by forming it.

Index letters, used in every einsum here: `k` neuron (cotangent), `n` sample,
`t`/`s` position (spatial or time), `i` feature in, `o` feature out.
Cotangent tensors have shape `(k, n, ...)`; forward tensors `(n, ...)`.
"""

import keras
import tensorflow as tf

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


def _is_float(x):
    return x is not None and x.dtype.is_floating


def _tile_rows(x, k):
    """`(n, ...)` -> `(k * n, ...)`: row `j * n + m` is sample `m`."""
    return tf.tile(x, [k] + [1] * (x.shape.rank - 1))


def _merge(g):
    """`(k, n, ...)` -> `(k * n, ...)`."""
    return tf.reshape(g, tf.concat([[-1], tf.shape(g)[2:]], 0))


def _split(g, k):
    """`(k * n, ...)` -> `(k, n, ...)`."""
    return tf.reshape(g, tf.concat([[k, -1], tf.shape(g)[1:]], 0))


def _split_or_none(g, k):
    return None if g is None else _split(tf.convert_to_tensor(g), k)


def sum_squares_per_row(g):
    """`(k, n, ...)` -> `(k, n)`."""
    return tf.reduce_sum(tf.square(g), axis=tf.range(2, tf.rank(g)))


def outer_sqnorm(u, g):
    """`||sum_t u[n, t] (x) g[k, n, t]||^2` for every `(k, n)`.

    The squared Frobenius norm of a per-sample weight gradient `U^T G`, with
    `u` of shape `(n, t, i)` and `g` of shape `(k, n, t, o)`. Formed directly
    when `i * o` is small, else through Gram matrices ("ghost norm"):
    `<U U^T, G G^T>`, which costs `t * t` per `(k, n)` instead of `i * o`.
    """
    t, i, o = u.shape[1], u.shape[2], g.shape[3]
    if t == 1:
        return tf.reduce_sum(tf.square(u[:, 0]), -1) * tf.reduce_sum(
            tf.square(g[:, :, 0]), -1
        )
    if t * t < i * o:
        uu = tf.einsum("nti,nsi->nts", u, u)
        gg = tf.einsum("knto,knso->knts", g, g)
        return tf.einsum("nts,knts->kn", uu, gg)
    return tf.reduce_sum(tf.square(tf.einsum("nti,knto->knio", u, g)), [2, 3])


# --- activations, fused into a layer or standalone -------------------------


def activation_forward(fn, z):
    """Applies `fn` to `z`; returns the output and what the hop back needs."""
    name = getattr(fn, "__name__", None)
    if fn is None or name == "linear":
        return z, ("linear",)
    if name in ELEMENTWISE_ACTIVATIONS:
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = fn(z)
        return y, ("elementwise", tape.gradient(y, z))
    if fn is keras.activations.softmax:
        y = fn(z)
        return y, ("softmax", y)
    return fn(z), ("generic", fn, z)


def activation_backward(cache, g):
    """Cotangents `(k, n, ...)` at an activation's output -> at its input."""
    kind = cache[0]
    if kind == "linear":
        return g
    if kind == "elementwise":
        return g * cache[1]
    if kind == "softmax":
        s = cache[1]
        return s * (g - tf.reduce_sum(g * s, axis=-1, keepdims=True))
    _, fn, z = cache
    k = g.shape[0]
    zt = _tile_rows(z, k)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        y = fn(zt)
    return _split(tape.gradient(y, zt, output_gradients=_merge(g)), k)


# --- rules ------------------------------------------------------------------


class Rule:
    """How the sweep passes through one layer family.

    Subclass it and `register_rule` it for a layer class of your own. A site
    is one call of the layer in the sweep: `site.layer`, `site.inputs` (the
    call's input tensors, in order) and `site.run(inputs)` (the call replayed
    on other inputs, returning its flattened outputs).
    """

    def applies(self, layer):
        """Whether this rule is exact for this instance (else: generic)."""
        return True

    def forward(self, site):
        """Returns `(flat_outputs, cache)` for the site's inputs."""
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


class GenericRule(Rule):
    """Any differentiable layer: batched VJP for the hop, per-row VJP norms.

    Exact for every layer whose samples do not interact, but slower than a
    closed form: the layer is replayed on `k * n` rows.
    """

    def forward(self, site):
        return site.run(site.inputs), None

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        k = next(g for g in cotangents if g is not None).shape[0]
        tiled = [_tile_rows(x, k) for x in site.inputs]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        flat_cots = [_merge(cotangents[j]) for j in connected]
        input_cots = None
        if need_inputs:
            floats = [x for x in tiled if _is_float(x)]
            with tf.GradientTape() as tape:
                tape.watch(floats)
                outs = site.run(tiled)
            grads = tape.gradient(
                [outs[j] for j in connected], floats, output_gradients=flat_cots
            )
            grads = iter(grads)
            input_cots = [
                _split_or_none(next(grads), k) if _is_float(x) else None
                for x in tiled
            ]
        sqnorm = None
        if need_weights:
            sqnorm = tf.reshape(
                self.per_row(site, tiled, connected, flat_cots, _row_sqnorm),
                [k, -1],
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
            [_tile_rows(x, k) for x in site.inputs],
            connected,
            [_merge(cotangents[j]) for j in connected],
            _row_flat,
        )

    @staticmethod
    def per_row(site, tiled, connected, flat_cots, reduce):
        """Maps `reduce(per-row weight gradients)` over the `k * n` rows."""
        weights = [v.value for v in site.layer.trainable_weights]

        def one_row(row):
            inputs, cots = row
            with tf.GradientTape() as tape:
                outs = site.run([x[None] for x in inputs])
            grads = tape.gradient(
                [outs[j] for j in connected],
                weights,
                output_gradients=[g[None] for g in cots],
            )
            grads = [
                tf.zeros_like(w) if g is None else tf.convert_to_tensor(g)
                for w, g in zip(weights, grads)
            ]
            return reduce(grads)

        return tf.vectorized_map(one_row, (tiled, flat_cots))


def _row_sqnorm(grads):
    return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])


def _row_flat(grads):
    return tf.concat([tf.reshape(g, [-1]) for g in grads], 0)


class ElementwiseRule(Rule):
    """Standalone elementwise activation layers (ReLU, LeakyReLU, ELU, ...)."""

    def applies(self, layer):
        if isinstance(layer, keras.layers.Activation):
            return (
                getattr(layer.activation, "__name__", None)
                in ELEMENTWISE_ACTIVATIONS
            )
        return not layer.trainable_weights

    def forward(self, site):
        (x,) = site.inputs
        with tf.GradientTape() as tape:
            tape.watch(x)
            (y,) = site.run([x])
        return [y], tape.gradient(y, x)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        return [cotangents[0] * cache], None


class DenseRule(Rule):
    """`Dense`: `||dW||^2 = ||h||^2 ||g_z||^2`, bias `||g_z||^2`."""

    def applies(self, layer):
        return (
            not getattr(layer, "lora_enabled", False)
            and getattr(layer, "quantization_mode", None) is None
            and layer.compute_dtype == layer.variable_dtype
        )

    def forward(self, site):
        layer = site.layer
        (h,) = site.inputs
        z = tf.matmul(h, layer.kernel) if h.shape.rank == 2 else tf.tensordot(
            h, layer.kernel, axes=1
        )
        if layer.bias is not None:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        return [y], (h, act)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        h, act = cache
        gz = activation_backward(act, cotangents[0])
        sqnorm = None
        if need_weights and layer.trainable:
            k = gz.shape[0]
            u = tf.reshape(h, [tf.shape(h)[0], -1, h.shape[-1]])
            g = tf.reshape(gz, [k, tf.shape(h)[0], -1, gz.shape[-1]])
            sqnorm = outer_sqnorm(u, g)
            if layer.bias is not None:
                sqnorm += tf.reduce_sum(tf.square(tf.reduce_sum(g, 2)), -1)
        input_cots = None
        if need_inputs:
            input_cots = [tf.einsum("kn...o,io->kn...i", gz, layer.kernel)]
        return input_cots, sqnorm


# --- the table --------------------------------------------------------------

GENERIC_RULE = GenericRule()

_RULES = {
    keras.layers.Dense: DenseRule(),
    keras.layers.ReLU: ElementwiseRule(),
    keras.layers.LeakyReLU: ElementwiseRule(),
    keras.layers.ELU: ElementwiseRule(),
    keras.layers.Activation: ElementwiseRule(),
}


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
