"""A private copy of the layers a computation replays, for the background.

`NeuronSensitivityCallback` computes a logged epoch while training goes on
(`asynchronous=True`). The computation must then read weights that training
does not change under it, and call layer objects that nothing else calls:
it runs on a copy of the replayed layers (`LayerCopy`), whose variables
receive the model's values at the end of each logged epoch (`take`, on the
main thread, between training steps: one compiled call that copies every
trainable and non-trainable weight).

Why a copy of the layers rather than the model's variables mapped to shadow
values with `keras.StatelessScope`: the methods' compiled functions read the
layers' variables directly (`layer.kernel` in the rules), so a mapping would
have to be entered inside every traced function of every method (a scope
entered outside is captured once, at trace time), and the estimator's own
scope, which maps only the trainable weights, would hide it for the
non-trainable ones. The copy needs no change to the engine, keeps the
methods' cache apart from the model's (a `neuron_sensitivity` call on the
model never reuses functions traced on the copy), and lets the first
computation be traced in the background while the first epoch trains.

Tracing that computation costs more than a few epochs of a small model, so
the copy a finished `fit` leaves is kept (`release`) and given to the next
callback on a model of the same architecture (`acquire`: same layer classes,
configs, names, wiring, selection and probe shape), with its traced
functions: a model trained again in the same process (cross-validation, a
sweep, a notebook cell run twice) does not trace again. One such copy is
kept at a time.
"""

import dataclasses
import json
import random
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity import _computation
from keras_neuron_sensitivity.probe.subclassed import Placeholder, RecordedArguments
from keras_neuron_sensitivity.engine import registry
from keras_neuron_sensitivity.engine.replay import Replay


class CopyError(ValueError):
    """The layers could not be copied faithfully; the reason is the message."""


def acquire(problem, check):
    """A copy for `problem`: the one kept from an earlier `fit` on the same
    architecture, bound to this model, or a new `LayerCopy(problem, check)`.

    Raises:
        CopyError: as `LayerCopy`.
    """
    try:
        key = None if check else _signature(problem)
        with _SPARE_LOCK:
            copy = _SPARE.pop(key, None) if key is not None else None
        if copy is not None:
            copy.bind(problem)
            return copy
        copy = LayerCopy(problem, check)
        copy.key = key
        return copy
    except CopyError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure: no copy
        raise CopyError(f"{type(error).__name__}: {error}") from error


def release(copy):
    """Keeps `copy` (and its traced functions) for a later `acquire`."""
    if copy.key is not None:
        with _SPARE_LOCK:
            _SPARE.clear()
            _SPARE[copy.key] = copy


def reclaim(copy):
    """Takes `copy` back for its own callback's next `fit`, if it is still
    kept; False if another callback took it meanwhile."""
    with _SPARE_LOCK:
        if copy.key is not None and _SPARE.get(copy.key) is copy:
            del _SPARE[copy.key]
            return True
    return copy.key is None


def clear():
    """Drops the copy kept for a later `fit` (`release`), and its functions."""
    with _SPARE_LOCK:
        _SPARE.clear()


_SPARE = {}  # signature -> the LayerCopy kept
_SPARE_LOCK = threading.Lock()


class LayerCopy:
    """The replayed layers of `problem`, copied, with their weights.

    Attributes:
        problem: the same `_computation.Problem` on the copied layers (its
            `model` is this object, so the methods' cache lives and dies
            with it).

    Args:
        problem: the `_computation.Problem` prepared on the model.
        check: True on the main thread: the copy is made in a thread of its
            own (Keras's name counters and scopes are thread-local) with
            Python's and NumPy's random states restored, then checked: its
            outputs on two probe samples must equal the model's bit for bit
            (needed for layers that are not Keras's own, whose config may
            miss part of their state). False in a background thread, for
            Keras's own layers only (`keras_layers_only`): no random state
            is drawn (every seed in their configs is fixed), nothing is
            checked, and the model's layers are not called.

    Raises:
        CopyError: when a layer cannot be rebuilt from its config, its
            weights do not match, or the check fails.
    """

    def __init__(self, problem, check):
        self.key = None
        self.warmed = set()  # configurations computed once (traced)
        self._copy_fn = None
        originals = _layers(problem)
        self._copies = _clone_isolated(originals) if check else _clone_all(originals)
        copies = {id(layer): copy for layer, copy in zip(originals, self._copies)}
        # The copy's graph refers to nothing of the model's: a copy kept for
        # a later `fit` must not keep the model alive.
        self._graph = problem.graph.with_calls(
            [_detached(call, copies.get(id(call.layer), call.layer))
             for call in problem.graph.calls]
        )
        self.bind(problem)
        if check:
            try:
                self.take()
                _check_same_outputs(problem, self.problem)
            except CopyError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: no copy
                raise CopyError(f"{type(error).__name__}: {error}") from error

    def bind(self, problem):
        """Makes this the copy of `problem`'s model (same architecture)."""
        originals = _layers(problem)
        if len(originals) != len(self._copies):
            raise CopyError("the model's layers do not match the copy's")
        self._originals = originals
        self.sync_trainable()
        pairs = []
        for layer, copy in zip(originals, self._copies, strict=True):
            pairs += _weight_pairs(layer, copy)
        self._pairs = pairs
        # The model's variables are arguments (resource handles), so that a
        # copy bound to another model of the same shapes reuses the function.
        self._sources = [source.value for _, source in pairs]
        if self._copy_fn is None:
            targets = [target for target, _ in pairs]

            def copy_all(*sources):
                for target, source in zip(targets, sources):
                    target.assign(source)

            # A function of its own per copy (not a bound method, which TF
            # would count as retraced across copies).
            self._copy_fn = tf.function(copy_all, autograph=False)
        self.problem = _computation.Problem(
            self, self._graph, problem.inputs, problem.keys, problem.wrt
        )

    @property
    def num_bytes(self):
        """Memory the copied weights take."""
        return sum(int(np.prod(t.shape)) * t.dtype.size for t, _ in self._pairs)

    def sync_trainable(self):
        """Gives each copied layer (and sub-layer) the model's `trainable`
        flags, which decide what the sensitivity to weights sums over; a
        user may change them between `fit` calls (fine-tuning)."""
        for layer, copy in zip(self._originals, self._copies, strict=True):
            subs = layer._flatten_layers(include_self=True, recursive=True)
            copy_subs = copy._flatten_layers(include_self=True, recursive=True)
            for sub, copy_sub in zip(subs, copy_subs, strict=True):
                if copy_sub.trainable != sub.trainable:
                    copy_sub.trainable = sub.trainable

    def take(self):
        """Copies every weight of the model into the copy (main thread,
        between training steps, while no computation runs on the copy)."""
        self._copy_fn(*self._sources)


def keras_layers_only(problem):
    """Whether every replayed call is of one of Keras's own layer classes,
    whose config is known to rebuild it exactly (what saving models relies
    on)."""
    return all(
        isinstance(call.layer, keras.layers.Layer)
        and type(call.layer).__module__.startswith("keras.")
        for call in problem.graph.calls
    )


def _layers(problem):
    """The distinct layer objects the problem's calls use, in call order."""
    layers = {}
    for call in problem.graph.calls:
        if isinstance(call.layer, keras.layers.Layer):
            layers.setdefault(id(call.layer), call.layer)
    return list(layers.values())


def _signature(problem):
    """What must be equal for a kept copy to serve `problem`: the layers'
    classes, configs, build configs, trainable flags and rules, the calls'
    keys and wiring, the selection, `wrt` and the probe's shapes."""
    layers = _layers(problem)
    index = {id(layer): i for i, layer in enumerate(layers)}
    parts = [problem.keys, problem.wrt]
    parts += [(tuple(x.shape), x.dtype.name) for x in problem.inputs]
    for layer in layers:
        parts.append((
            type(layer).__module__,
            type(layer).__qualname__,
            json.dumps(_fixed_seeds(layer.get_config()), sort_keys=True, default=repr),
            json.dumps(layer.get_build_config(), sort_keys=True, default=repr),
            tuple(s.trainable for s in layer._flatten_layers(include_self=True, recursive=True)),
            id(registry.rule_for(layer)),
        ))
    for call in problem.graph.calls:
        parts.append((call.key, call.inputs, call.outputs, index[id(call.layer)]))
    return repr(parts)


def _detached(call, layer):
    """`call` on `layer`, its arguments' symbolic tensors (which refer to the
    model's layers) replaced by placeholders."""
    if call.arguments is None:
        return dataclasses.replace(call, layer=layer, root=None)
    keras_ids = {}

    def replace(x):
        if id(x) in call.keras_ids:
            placeholder = Placeholder()
            keras_ids[id(placeholder)] = call.keras_ids[id(x)]
            return placeholder
        return x

    args = keras.tree.map_structure(replace, call.arguments.args)
    kwargs = keras.tree.map_structure(replace, call.arguments.kwargs)
    return dataclasses.replace(
        call, layer=layer, arguments=RecordedArguments(args, kwargs),
        keras_ids=keras_ids, root=None,
    )


def _clone_isolated(layers):
    """`_clone_all` with nothing global changed: in a thread of its own
    (Keras's name counters and scopes are thread-local), while the caller
    waits, with Python's and NumPy's random states restored (a custom
    layer's constructor may draw default seeds from Python's `random`)."""
    result = {}
    policy = keras.config.dtype_policy()

    def clone():
        try:
            keras.config.set_dtype_policy(policy)
            result["copies"] = _clone_all(layers)
        except Exception as error:  # noqa: BLE001 - re-raised below
            result["error"] = error

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        thread = threading.Thread(target=clone, name="NeuronSensitivityCallback-copy")
        thread.start()
        thread.join()
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    if "error" in result:
        raise result["error"]
    return result["copies"]


def _clone_all(layers):
    try:
        return [_clone(layer) for layer in layers]
    except CopyError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure: no copy
        raise CopyError(f"{type(error).__name__}: {error}") from error


def _clone(layer):
    # Fixed seeds: a seed left to None would be drawn from Python's global
    # `random` (the copy's initial values and dropout masks are never used).
    copy = type(layer).from_config(_fixed_seeds(layer.get_config()))
    if not copy.built:
        config = layer.get_build_config()
        if not config:
            raise CopyError(f"layer {layer.name!r} has no build config")
        copy.build_from_config(config)
    return copy


def _fixed_seeds(config):
    if isinstance(config, dict):
        return {
            key: 0 if key == "seed" and value is None else _fixed_seeds(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_fixed_seeds(value) for value in config]
    return config


def _weight_pairs(layer, copy):
    if len(layer.weights) != len(copy.weights):
        raise CopyError(
            f"layer {layer.name!r} has {len(layer.weights)} weights, its copy "
            f"{len(copy.weights)}"
        )
    pairs = []
    for source, target in zip(layer.weights, copy.weights):
        if (source.name, tuple(source.shape), source.dtype) != (
            target.name, tuple(target.shape), target.dtype
        ):
            raise CopyError(
                f"weight {source.path!r} does not match its copy {target.path!r}"
            )
        pairs.append((target, source))
    return pairs


def _check_same_outputs(problem, copy):
    """The copy must replay to the same bits as the model (a layer whose
    config misses part of its state would differ silently otherwise)."""
    inputs = [x[:2] for x in problem.inputs]
    original = Replay(problem.graph, problem.keys)
    replica = Replay(copy.graph, copy.keys)
    ours = original.target_outputs(original.run(inputs))
    theirs = replica.target_outputs(replica.run(inputs))
    for key, a, b in zip(problem.keys, ours, theirs):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            raise CopyError(f"the copy of layer {key!r} computes other values")
