"""Rules for `EinsumDense`, and the LoRA factors of `Dense` and `EinsumDense`.

An `EinsumDense` equation such as `"bqm,muh->bquh"` (an attention's query
projection) is a `Dense` applied at every position: its letters split into
the batch `b`, positions `P` (in the input and the output, not the kernel),
features in `I` (input and kernel) and features out `J` (kernel and
output). Per sample the kernel's gradient is `sum_p x[p, I] (x) g[p, J]`, so
its squared norm is `base.outer_sqnorm` of the input and the cotangent laid
out as `(P, I)` and `(P, J)`, as for `Dense` on a sequence.

With LoRA (`layer.enable_lora(rank)`, as keras_hub's `enable_lora` does for
the query and value projections) the kernel is `W + s A B`, `s = alpha /
rank`, where `B` maps the rank to the kernel's last axis. Training updates
`A` and `B` only (`W` is frozen):

    dA = s sum_p x[p, I] (x) (g B^T)[p, J']     (J' : J with its last axis -> rank)
    dB = s sum_{p, J-} (x A)[p, J-, r] (x) g[p, J-, c]

again outer products over positions, never formed. Each term is added only
for the weights the call trains (`Site.weights`).
"""

from keras import ops

from keras_neuron_sensitivity.engine import backend

from keras_neuron_sensitivity.engine.rules.base import (
    Rule,
    activation_backward,
    activation_forward,
    outer_sqnorm,
    shape_of,
)


def lora_scale(layer):
    return layer.lora_alpha / layer.lora_rank


def exact_weights(layer):
    """Whether the layer computes from its variables as they are, or with
    LoRA factors on them: no quantization, one dtype."""
    return (
        getattr(layer, "quantization_mode", None) is None
        and layer.compute_dtype == getattr(layer, "variable_dtype", layer.dtype)
    )


class _Equation:
    """The letters of an `EinsumDense` equation, by role."""

    def __init__(self, equation):
        ins, self.output = equation.replace(" ", "").split("->")
        self.input, self.kernel = ins.split(",")
        self.batch = self.input[0]
        self.positions = "".join(
            c for c in self.input[1:] if c in self.output and c not in self.kernel
        )
        self.features_in = "".join(c for c in self.kernel if c in self.input)
        self.features_out = "".join(c for c in self.kernel if c in self.output)
        letters = set(self.input + self.kernel + self.output)
        # Free letters for the cotangent rows and the LoRA rank.
        self.row, self.rank = [c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in letters][:2]

    @classmethod
    def of(cls, layer):
        """The equation's roles, or None where the rule does not apply: an
        ellipsis, a batch letter that is not first in the input and the
        output, a letter in all three terms, or one summed out of the input
        alone."""
        equation = getattr(layer, "equation", "")
        if "." in equation or "->" not in equation:
            return None
        eq = cls(equation)
        everywhere = set(eq.input) & set(eq.kernel) & set(eq.output)
        if (
            eq.output[0] != eq.batch
            or eq.batch in eq.kernel
            or everywhere
            or set(eq.input[1:]) != set(eq.positions) | set(eq.features_in)
            or set(eq.output[1:]) != set(eq.positions) | set(eq.features_out)
            or set(eq.kernel) != set(eq.features_in) | set(eq.features_out)
        ):
            return None
        return eq

    def rows_in(self, x):
        """`(n, P, I)`: the input per position and feature in."""
        u = ops.einsum(f"{self.input}->{self.batch}{self.positions}{self.features_in}", x)
        return _flatten(u, 1, len(self.features_in))

    def rows_out(self, g, out_letters=None):
        """`(k, n, P, J)`: a cotangent `(k, n, *output)` per position and
        feature out (`out_letters`: the output's letters, when the last
        feature out stands for the LoRA rank)."""
        output = out_letters or self.output
        features = "".join(c for c in (self.features_out if out_letters is None else self._rank_features()) if c in output)
        g = ops.einsum(f"{self.row}{output}->{self.row}{self.batch}{self.positions}{features}", g)
        return _flatten(g, 2, len(features))

    def _rank_features(self):
        return self.features_out[:-1] + self.rank

    def with_rank(self, letters):
        """`letters` with the kernel's last letter replaced by the rank."""
        return letters.replace(self.kernel[-1], self.rank)


def _flatten(x, lead, trailing):
    """`(lead..., middle..., trailing...)` -> `(lead..., prod middle, prod trailing)`."""
    shape = shape_of(x)
    rank = len(x.shape)
    middle = 1
    for d in shape[lead : rank - trailing]:
        middle *= d
    last = 1
    for d in shape[rank - trailing :]:
        last *= d
    return ops.reshape(x, list(shape[:lead]) + [middle, last])


class EinsumDenseRule(Rule):
    """`EinsumDense` (with or without LoRA): squared norms of the kernel's
    (or the LoRA factors') and the bias's per-sample gradients as outer
    products over positions."""

    def applies(self, layer):
        eq = _Equation.of(layer)
        if not exact_weights(layer) or eq is None:
            return False
        # LoRA's B maps the rank to the kernel's last axis: a feature out
        # (as in every projection of Keras and keras_hub).
        return not getattr(layer, "lora_enabled", False) or eq.kernel[-1] in eq.features_out

    def forward(self, site):
        layer = site.layer
        (x,) = site.inputs
        z = ops.einsum(layer.equation, x, layer.kernel)
        if layer.bias is not None:
            z = z + layer.bias
        y, act = activation_forward(layer.activation, z)
        return [y], (x, act)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        layer = site.layer
        x, act = cache
        gz = activation_backward(layer.activation, act, cotangents[0])
        eq = _Equation.of(layer)
        sqnorm = None
        if need_weights:
            with backend.name_scope("weight_term"):
                sqnorm = self._weight_sqnorm(site, eq, x, gz)
        input_cots = None
        if need_inputs:
            with backend.name_scope("hop"):
                r = eq.row
                input_cots = [
                    ops.einsum(f"{r}{eq.output},{eq.kernel}->{r}{eq.input}", gz, layer.kernel)
                ]
        return input_cots, sqnorm

    def _weight_sqnorm(self, site, eq, x, gz):
        layer = site.layer
        trainable = {id(v) for v in site.weights}
        k, n = gz.shape[0], shape_of(x)[0]
        total = ops.zeros([k, n], gz.dtype)
        u = None
        if id(layer._kernel) in trainable:
            u = eq.rows_in(x)
            total += outer_sqnorm(u, eq.rows_out(gz))
        if getattr(layer, "lora_enabled", False):
            s = lora_scale(layer)
            a, b = layer.lora_kernel_a, layer.lora_kernel_b
            if id(a) in trainable:
                # g B^T: the kernel's last letter becomes the rank.
                out_rank = eq.with_rank(eq.output)
                gb = ops.einsum(
                    f"{eq.row}{eq.output},{eq.rank}{eq.kernel[-1]}->{eq.row}{out_rank}", gz, b
                )
                u = eq.rows_in(x) if u is None else u
                total += s * s * outer_sqnorm(u, eq.rows_out(gb, out_rank))
            if id(b) in trainable:
                kernel_rank = eq.with_rank(eq.kernel)
                keep = eq.positions + eq.features_out[:-1]
                xa = ops.einsum(
                    f"{eq.input},{kernel_rank}->{eq.batch}{keep}{eq.rank}", x, a
                )
                ua = _flatten(xa, 1, 1)
                g = ops.einsum(
                    f"{eq.row}{eq.output}->{eq.row}{eq.batch}{keep}{eq.kernel[-1]}", gz
                )
                total += s * s * outer_sqnorm(ua, _flatten(g, 2, 1))
        if layer.bias is not None and id(layer.bias) in trainable:
            total += bias_sqnorm(layer.bias, gz)
        return total


def bias_sqnorm(bias, gz):
    """`(k, n)`: the squared norm of a bias's per-sample gradient, the
    cotangent `(k, n, *output)` summed over the axes the bias broadcasts
    along (it is aligned with the output's trailing axes)."""
    rank = len(bias.shape)
    lead = len(gz.shape) - rank
    g = ops.sum(gz, axis=list(range(2, lead))) if lead > 2 else gz
    broadcast = [2 + d for d, size in enumerate(bias.shape) if size == 1]
    if broadcast:
        g = ops.sum(g, axis=broadcast)
    return ops.sum(ops.square(g), axis=list(range(2, len(g.shape))))
