"""`BlockRule`: a call that exposes sites inside it.

A transformer block whose feed-forward units, heads or sub-layers are
selected exposes those tensors as extra outputs of its call
(`probe.inside`). Its rule runs the block's own `call`, as it is, and
differentiates it:

- the hop: the `k` cotangent rows of the `n` samples replayed as `k * n`
  samples (samples do not interact in inference mode), one VJP of the
  block's outputs and exposed sites with respect to its inputs;
- the weight term: every weight inside a block belongs to a layer with
  weights of its own that the block calls (an *owner*: `Dense`,
  `EinsumDense`, a norm; `inside.is_openable` refuses blocks that own
  weights themselves). Each owner's rule gives its term from the cotangent
  at the owner's output, read in the same VJP as the gradient of a zero
  added to that output (a *tap*), and from its inputs recorded in the
  forward pass. An owner called twice has its rows' gradients added before
  the norm (`Rule.weight_rows`).

Index letters as in `base.py`: `k` neuron (cotangent), `n` sample.
"""

import dataclasses

import keras
from keras import ops

from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.rules.base import (
    Rule,
    _is_float,
    merge,
    split,
    tile_rows,
    with_mask,
)
from keras_neuron_sensitivity.engine.site import Call, Placeholder, RecordedArguments, Site
from keras_neuron_sensitivity.errors import UnsupportedLayerError
from keras_neuron_sensitivity.engine.inside import exposing, path_key


@dataclasses.dataclass(eq=False)
class _Owner:
    """A layer with weights called inside the block, as its rule sees it."""

    path: tuple
    call: object  # a `probe.Call` of the owner, on placeholder ids
    rule: Rule
    num_outputs: int


class BlockRule(Rule):
    """The rule of one call with sites inside it (one instance per call: it
    keeps what the forward pass found of the owners, which are the same at
    every trace)."""

    def __init__(self, rule_for):
        self._rule_for = rule_for
        self._owners = None

    def forward(self, site):
        with exposing(site.layer, site.inside, owners=site.need_weights) as exposed:
            outputs = site.call_layer(site.inputs)
        missing = [spec for spec, v in zip(site.inside, exposed.values) if v is None]
        if missing:
            raise ValueError(
                f"Layer {site.key!r} did not call {path_key(missing[0].path)!r} "
                "in this pass, where the probe's first sample showed the site "
                "inside it: its `call` takes another path on other inputs. "
                "Select sites it always computes (`layers=`)."
            )
        cache = ()
        if site.need_weights:
            owned = {id(v) for _, layer, _, _, _ in exposed.owners for v in layer.weights}
            missing = [v.path for v in site.weights if id(v) not in owned]
            if missing:
                raise UnsupportedLayerError(
                    f"Layer {site.key!r} read the trainable weights {missing} "
                    "outside the layers it called in this pass, so their "
                    "weight term cannot be read from those layers' rules. "
                    "Select only sites that are not inside it (`layers=`), "
                    "or register a `Rule` for its class."
                )
            self._owners, cache = self._owner_caches(site, exposed.owners)
        return outputs + exposed.values, cache

    def _owner_caches(self, site, recorded):
        """The owners with trainable weights, and per owner the tensors its
        weight term reads: `(inputs, outputs, its rule's cache)`."""
        trainable = {id(v) for v in site.weights}
        owners, cache = [], []
        for path, layer, args, kwargs, outs in recorded:
            if not any(id(v) in trainable for v in layer.weights):
                continue
            call, inputs = _owner_call(site, path, layer, args, kwargs)
            rule = self._rule_for(layer)
            owner_site = Site(call, inputs, need_weights=True)
            _, owner_cache = rule.forward(owner_site)
            flat = keras.tree.flatten(outs)
            owners.append(_Owner(path, call, rule, len(flat)))
            cache.append((tuple(inputs), tuple(flat), owner_cache))
        return owners, tuple(cache)

    def backward(self, site, cache, cotangents, need_inputs, need_weights):
        input_cots, owner_cots = self._vjp(site, cache, cotangents, need_inputs, need_weights)
        sqnorm = None
        if need_weights:
            sqnorm = self._weight_term(cache, owner_cots)
        return input_cots, sqnorm

    def weight_rows(self, site, cache, cotangents):
        _, owner_cots = self._vjp(site, cache, cotangents, False, True)
        rows = [
            owner.rule.weight_rows(_owner_site(owner, entry), entry[2], cots)
            for owner, entry, cots in zip(self._owners, cache, owner_cots)
        ]
        return ops.concatenate(rows, -1) if len(rows) > 1 else rows[0]

    def _vjp(self, site, cache, cotangents, need_inputs, need_weights):
        """`(input cotangents or None, [per owner: its output cotangents])`."""
        k = next(g for g in cotangents if g is not None).shape[0]
        tiled = [tile_rows(x, k) for x in site.inputs]
        floats = [x for x in tiled if _is_float(x)] if need_inputs else []
        taps, flat_taps = {}, []
        if need_weights:
            for owner, (_, outs, _) in zip(self._owners, cache):
                per_output = [
                    ops.zeros([k * y.shape[0], *y.shape[1:]], y.dtype) if _is_float(y) else None
                    for y in outs
                ]
                taps.setdefault(owner.path, per_output)
                flat_taps += [t for t in per_output if t is not None]
        connected = [j for j, g in enumerate(cotangents) if g is not None]
        positions = [j for j, x in enumerate(tiled) if _is_float(x)] if need_inputs else []

        def f(primals):
            float_values, tap_values = primals
            inputs = list(tiled)
            for j, x in zip(positions, float_values):
                inputs[j] = with_mask(x, tiled[j])
            values = iter(tap_values)
            replaced = {
                path: [None if t is None else next(values) for t in per_output]
                for path, per_output in taps.items()
            }
            with exposing(site.layer, site.inside, taps=replaced) as exposed:
                outputs = site.call_layer(inputs)
            outputs = outputs + exposed.values
            return [outputs[j] for j in connected]

        _, pullback = backend.vjp(f, (floats, flat_taps))
        float_grads, tap_grads = pullback([merge(cotangents[j]) for j in connected])
        grads = iter(list(float_grads) + list(tap_grads))
        input_cots = None
        if need_inputs:
            input_cots = [
                _split(next(grads), k, x) if _is_float(x) else None for x in tiled
            ]
        owner_cots = []
        for owner in self._owners if need_weights else ():
            owner_cots.append(
                [None if t is None else _split(next(grads), k, t) for t in taps[owner.path]]
            )
        return input_cots, owner_cots

    def _weight_term(self, cache, owner_cots):
        """Per `(k, n)`: the squared norm of the block's per-sample weight
        gradient, owner by owner (owners sharing a layer: rows added)."""
        by_layer = {}
        for owner, entry, cots in zip(self._owners, cache, owner_cots):
            by_layer.setdefault(id(owner.call.layer), []).append((owner, entry, cots))
        total = None
        for group in by_layer.values():
            if len(group) == 1:
                owner, entry, cots = group[0]
                _, sq = owner.rule.backward(_owner_site(owner, entry), entry[2], cots, False, True)
            else:
                rows = sum(
                    owner.rule.weight_rows(_owner_site(owner, entry), entry[2], cots)
                    for owner, entry, cots in group
                )
                sq = ops.sum(ops.square(rows), -1)
            if sq is not None:
                total = sq if total is None else total + ops.cast(sq, total.dtype)
        return total


def _split(g, k, like=None):
    """A gradient of `k * n` rows as `(k, n, ...)` (zeros where None)."""
    if g is None:
        g = ops.zeros_like(like)
    return split(ops.convert_to_tensor(g), k)


def _owner_site(owner, entry):
    inputs, outputs, _ = entry
    site = Site(owner.call, list(inputs), need_weights=True)
    site.outputs = list(outputs)
    return site


def _owner_call(site, path, layer, args, kwargs):
    """A `probe.Call` of an owner, its tensors replaced by placeholders, and
    the tensors themselves (its inputs, as a rule's `Site` has them)."""
    keras_ids, inputs = {}, []

    def replace(x):
        if not keras.ops.is_tensor(x):
            return x
        placeholder = Placeholder()
        keras_ids[id(placeholder)] = len(inputs)
        inputs.append(x)
        return placeholder

    arguments = RecordedArguments(
        keras.tree.map_structure(replace, args), keras.tree.map_structure(replace, kwargs)
    )
    call = Call(
        layer,
        f"{site.key}/{path_key(path)}" if path else site.key,
        tuple(range(len(inputs))),
        (),
        arguments,
        keras_ids,
        root=site._call.root,
    )
    return call, inputs
