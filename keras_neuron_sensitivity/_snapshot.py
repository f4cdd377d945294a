"""A private copy of the layers a computation replays, for the background.

`NeuronSensitivityCallback` computes a logged epoch while training goes on
(`asynchronous=True`). The computation must then read weights that training
does not change under it, and call layer objects that nothing else calls:
it runs on a copy of the replayed layers (`LayerCopy`), made once per
callback, whose variables receive the model's values at the end of each
logged epoch (`take`, on the main thread, between training steps: one
compiled call that copies every trainable and non-trainable weight).

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
"""

import dataclasses
import random
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_neuron_sensitivity import _computation
from keras_neuron_sensitivity.engine.replay import Replay


class CopyError(ValueError):
    """The layers could not be copied faithfully; the reason is the message."""


class LayerCopy:
    """The replayed layers of `problem`, copied, with their weights.

    Attributes:
        problem: the same `_computation.Problem` on the copied layers (its
            `model` is this object, so the methods' cache lives and dies
            with it).

    Args:
        problem: the `_computation.Problem` prepared on the model.

    Raises:
        CopyError: when a layer cannot be rebuilt from its config, its
            weights do not match, or the copy's outputs on two probe
            samples differ from the model's in any bit.
    """

    def __init__(self, problem):
        layers = {}
        for call in problem.graph.calls:
            if isinstance(call.layer, keras.layers.Layer):
                layers.setdefault(id(call.layer), call.layer)
        self._originals = list(layers.values())
        self._copies = _clone_isolated(self._originals)
        self.sync_trainable()
        self._pairs = []
        for layer, copy in zip(self._originals, self._copies, strict=True):
            self._pairs += _weight_pairs(layer, copy)
        for target, source in self._pairs:
            target.assign(source)
        copies = {id(layer): copy for layer, copy in zip(self._originals, self._copies)}
        calls = [
            dataclasses.replace(call, layer=copies.get(id(call.layer), call.layer))
            for call in problem.graph.calls
        ]
        graph = dataclasses.replace(problem.graph, calls=calls)
        self.problem = _computation.Problem(
            self, graph, problem.inputs, problem.keys, problem.wrt
        )
        _check_same_outputs(problem, self.problem)
        pairs = self._pairs

        def copy_all():
            for target, source in pairs:
                target.assign(source)

        # A function of its own per copy (not a bound method, which TF would
        # count as retraced across copies).
        self._copy_fn = tf.function(copy_all, autograph=False)

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
        self._copy_fn()


def _clone_isolated(layers):
    """`from_config` copies of `layers`, built like them, with nothing global
    changed: made in a thread of its own (Keras's name counters and scopes are
    thread-local), while the caller waits, and with Python's and NumPy's
    random states restored (default seeds of initializers and seed
    generators are drawn from Python's `random`)."""
    result = {}
    policy = keras.config.dtype_policy()

    def clone():
        try:
            keras.config.set_dtype_policy(policy)
            result["copies"] = [_clone(layer) for layer in layers]
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
        error = result["error"]
        raise CopyError(f"{type(error).__name__}: {error}") from error
    return result["copies"]


def _clone(layer):
    copy = type(layer).from_config(layer.get_config())
    if not copy.built:
        config = layer.get_build_config()
        if not config:
            raise CopyError(f"layer {layer.name!r} has no build config")
        copy.build_from_config(config)
    return copy


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
