"""The one path from a model and a probe batch to sensitivities.

`neuron_sensitivity` and `NeuronSensitivityCallback` both call `prepare`
(model graph -> probe batch -> layer keys -> integer-input warning) and then
`compute`, which picks the method per `wrt` (`"auto"`: the cheaper by the
prediction of `cost.predict_costs`) and runs one method object per method,
made once per model and configuration and reused at every call (the cache
at the end of this module; `clear_cache` empties it). With `activity=True`,
`compute` also reads every selected neuron's activity on the probe
(`engine/activity.py`), in one place, `_activity`: from the forward of the
first method that runs (it is given the sites' activity plans), else from a
forward of its own.
"""

import collections
import dataclasses
import secrets
import threading
import weakref

from keras_neuron_sensitivity import _batch, probe
from keras_neuron_sensitivity.engine import activity as _health
from keras_neuron_sensitivity.engine import backend, cost, methods, upstream
from keras_neuron_sensitivity.engine.replay import snapshot_scope
from keras_neuron_sensitivity.errors import UnsupportedModelError


@dataclasses.dataclass(eq=False)
class Problem:
    """A model, its replayable graph, a checked probe batch and what to compute."""

    model: object
    graph: probe.Graph
    inputs: list  # one tensor per model input
    keys: list  # selected layer keys
    wrt: tuple


def prepare(model, x, *, wrt, layers, what="x"):
    """Checks `x` and `layers` against the model; returns a `Problem`.

    `wrt` None means both where they exist (the callback's default): a model
    without any tensor at which a sensitivity to inputs exists gets weights
    only, with a warning; an explicit "inputs" there is an error.

    Raises:
        TypeError, ValueError, UnsupportedModelError: with what was received,
            what was expected and how to fix it.
    """
    graph = model_graph(model, x)
    inputs = _batch.standardize(graph, x, what)
    if not probe.is_tf_keras(model):
        probe.add_inside_sites(graph, inputs)
    keys = probe.resolve_layers(graph, layers)
    wrt = _batch.resolve_wrt(graph, wrt)
    return Problem(model, graph, inputs, keys, tuple(wrt))


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
    name = backend.name()
    if not probe.is_tf_keras(model) and name not in ("tensorflow", "jax", "torch"):
        raise UnsupportedModelError(
            f"Keras runs on the {name!r} backend. Expected 'tensorflow', "
            "'jax' or 'torch', the backends this package differentiates "
            "through. Set the environment variable KERAS_BACKEND to one of "
            "them before Keras is imported."
        )
    if not probe.is_model_built(model):
        raise UnsupportedModelError(
            f"The model {model.name!r} is not built yet, so it has no weights "
            "to differentiate. Expected a built model. Build it first: train "
            "it, call it on a batch, or start it with `keras.Input(shape)`."
        )
    return probe.build_graph(model, x)


class Results(dict):
    """`{wrt: result}`, as `compute` returns it; `result.reduce(reduction)`
    gives `Sensitivities`.

    Attributes:
        activity: `{key: {statistic: (C,) array}}` from the probe forward
            (`activity.summarize`), or None when not asked for or failed.
        activity_error: the exception the activity's forward raised, or
            None: the sensitivities do not depend on it, so the caller
            decides (the callback logs them without it and says why).
    """

    def __init__(self, results, activity=None, activity_error=None):
        super().__init__(results)
        self.activity = activity
        self.activity_error = activity_error


def compute(
    problem, *, method, num_probes, seed, memory_budget_mb, snapshot=None, activity=False
):
    """`Results`: `{wrt: result}`; `result.reduce(reduction)` gives
    `Sensitivities`, and `Results.activity` each neuron's activity.

    Args:
        problem: from `prepare`.
        method: `"exact"`, `"estimate"` or `"auto"`.
        num_probes: tangents of the estimate; None for the default.
        seed: the estimate's seed; None draws a fresh one (from the
            operating system, never from a global random state).
        memory_budget_mb: working memory one chunk may take.
        snapshot: `{id(variable): value}` to compute on
            (`replay.snapshot_values`: the weights an epoch ended with, for
            the background), or None for the variables' values now.
        activity: also read each neuron's activity on the probe.
    """
    num_probes = num_probes or methods.DEFAULT_NUM_PROBES
    seed = secrets.randbits(62) if seed is None else seed
    # Weights split across processes (always computed now, `snapshot` None):
    # the probe and the tangents go on their mesh too.
    mesh = backend.on_mesh(problem.model.weights if snapshot is None else ())
    with snapshot_scope(problem.graph.calls, snapshot), backend.exact_kernels(), mesh as laid:
        inputs = problem.inputs
        if laid:
            inputs = [backend.lay_out(backend.to_host(x)) for x in inputs]
        chosen = {w: choose(problem, w, method, num_probes) for w in problem.wrt}
        results, outputs = {}, []
        for name in dict.fromkeys(chosen.values()):
            wrt = tuple(w for w in problem.wrt if chosen[w] == name)
            # The first method reads the activity in its forward.
            reads = activity and not outputs
            runner = _cached(problem, name, wrt, num_probes, memory_budget_mb, reads)
            outputs.append(runner(inputs, seed, snapshot))
            results.update(outputs[-1].results)
        if "weights" in results:
            results["weights"].frozen = _frozen(problem)
        stats = error = None
        if activity:
            try:
                stats = _activity(problem, snapshot, outputs)
            except Exception as caught:  # noqa: BLE001 - handed to the caller
                error = caught
    return Results({w: results[w] for w in problem.wrt}, stats, error)


def _activity(problem, snapshot, outputs):
    """Every selected neuron's activity on the probe, decided in this one
    place: from the first method's output that read it in its own forward;
    else (no method ran, or reading it there failed) from a forward of its
    own, whose error, if it fails too, is the caller's to report."""
    for output in outputs:
        if output.activity is not None:
            return output.activity
    forward = _entry(
        problem, ("activity",),
        lambda: _health.ActivityForward(problem.graph, problem.keys),
    )
    return forward(problem.inputs, snapshot)


def _frozen(problem):
    """The neurons with nothing trainable upstream (`upstream.py`), once per
    configuration (which includes the probe's shape)."""
    return _entry(
        problem, ("frozen",),
        lambda: upstream.frozen_neurons(problem.graph, problem.keys, problem.inputs),
    )


def choose(problem, wrt, method, num_probes):
    """The method that runs for this `wrt`: `method` itself, or auto's pick."""
    if method != "auto":
        return method

    def pick():
        costs = cost.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, num_probes)
        return cost.choose(costs)

    return _entry(problem, ("auto", wrt, num_probes), pick)


def _cached(problem, name, wrt, num_probes, memory_budget_mb, reads=False):
    """The method object; with `reads`, given the sites' activity plans."""
    budget = int(memory_budget_mb * 2**20)
    module = methods

    def plans():
        return _health.plan(problem.graph, problem.keys) if reads else None

    if name == "exact":
        key = (name, wrt, budget, reads)
        make = lambda: module.ExactMethod(problem.graph, problem.keys, wrt, budget, plans())  # noqa: E731
    else:
        key = (name, wrt, budget, num_probes, reads)
        make = lambda: module.EstimateMethod(  # noqa: E731
            problem.graph, problem.keys, wrt, budget, num_probes, plans()
        )
    return _entry(problem, key, make)


def _shapes(problem):
    return tuple(tuple(x.shape) for x in problem.inputs)


# --- The cache -------------------------------------------------------------
#
# Method objects keep their traced functions, so that calls at later epochs
# reuse them instead of tracing again. Each model's entries hang on the model
# itself, so that they are freed with it: they refer to the model (its
# graph's calls, the traced functions' closures), and a WeakKeyDictionary
# keyed by the model would hold them, and through them the model, for ever.
# `clear_cache` finds them through `_CACHES`, which holds them weakly.

MAX_CACHE_ENTRIES = 16
_ATTRIBUTE = "_keras_neuron_sensitivity_cache"
_CACHES = weakref.WeakSet()
_LOCK = threading.Lock()
_MISSING = object()


class _ModelCache:
    """One model's entries, `{(configuration, key): value}`, least recently
    used first. Not a dict itself: Keras's saving walks a model's dict and
    list attributes."""

    def __init__(self, model):
        self.owner = weakref.ref(model)
        self.entries = collections.OrderedDict()


def _entry(problem, key, make):
    """The model's cached value of `key` in this problem's configuration;
    `make()` on first use. At most `MAX_CACHE_ENTRIES` entries per model are
    kept (a method object with its traced functions, auto's choice, the
    frozen neurons; about 8 configurations of calls): the least recently used
    is dropped."""
    model = problem.model
    key = (_configuration(problem), key)
    with _LOCK:
        cache = vars(model).get(_ATTRIBUTE)
        # A shallow copy of a model would share its cache, of another graph.
        if cache is None or cache.owner() is not model:
            cache = _ModelCache(model)
            object.__setattr__(model, _ATTRIBUTE, cache)  # untracked by Keras
            _CACHES.add(cache)
        value = cache.entries.get(key, _MISSING)
        if value is not _MISSING:
            cache.entries.move_to_end(key)
            return value
    value = make()  # outside the lock: tracing takes a while
    with _LOCK:
        cache.entries[key] = value
        while len(cache.entries) > MAX_CACHE_ENTRIES:
            cache.entries.popitem(last=False)
    return value


def _configuration(problem):
    """The problem's graph, selection, trainability and probe shapes.

    Which weights are trainable is part of the configuration: freezing or
    unfreezing layers (as fine-tuning does between `fit` calls) changes what
    the sensitivity to weights sums over, and so needs new method objects.
    The probe shapes are too: a method object's functions are traced once
    per shape, so that an entry per shape keeps the bound a bound.
    """
    graph = problem.graph
    trainable = tuple(tuple(id(v) for v in call.weights) for call in graph.calls)
    return (tuple(graph.keys), tuple(problem.keys), trainable, _shapes(problem))


def cache_entries(model):
    """`{(configuration, key): value}`: what is cached for `model`, least
    recently used first (a copy, for tests)."""
    cache = vars(model).get(_ATTRIBUTE)
    if cache is None or cache.owner() is not model:
        return {}
    with _LOCK:
        return dict(cache.entries)


def clear_cache():
    """Empties every model's cache (see `keras_neuron_sensitivity.clear_cache`)."""
    with _LOCK:
        for cache in list(_CACHES):
            cache.entries.clear()
