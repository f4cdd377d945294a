"""The one path from a model and a probe batch to sensitivities.

`neuron_sensitivity` and `NeuronSensitivityCallback` both call `prepare`
(model graph -> probe batch -> layer keys -> integer-input warning) and then
`compute`, which picks the method per `wrt` (`"auto"`: the cheaper by the
prediction of `methods.predict_costs`) and runs one method object per method,
made once per model and configuration and reused at every call.
"""

import dataclasses
import secrets
import weakref

from keras_neuron_sensitivity import _batch, probe
from keras_neuron_sensitivity.engine import backend, methods, upstream
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


def compute(problem, *, method, num_probes, seed, memory_budget_mb, snapshot=None):
    """`{wrt: result}`; `result.reduce(reduction)` gives `Sensitivities`.

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
    """
    num_probes = num_probes or methods.DEFAULT_NUM_PROBES
    chosen = {w: choose(problem, w, method, num_probes) for w in problem.wrt}
    seed = secrets.randbits(62) if seed is None else seed
    results = {}
    for name in dict.fromkeys(chosen.values()):
        wrt = tuple(w for w in problem.wrt if chosen[w] == name)
        runner = _cached(problem, name, wrt, num_probes, memory_budget_mb)
        with backend.exact_kernels():
            results.update(runner(problem.inputs, seed, snapshot))
    if "weights" in results:
        results["weights"].frozen = _frozen(problem)
    return {w: results[w] for w in problem.wrt}


def _frozen(problem):
    """The neurons with nothing trainable upstream (`upstream.py`), once per
    configuration and probe shape."""
    per_config = _per_config(problem)
    key = ("frozen", _shapes(problem))
    if key not in per_config:
        per_config[key] = upstream.frozen_neurons(problem.graph, problem.keys, problem.inputs)
    return per_config[key]


def choose(problem, wrt, method, num_probes):
    """The method that runs for this `wrt`: `method` itself, or auto's pick."""
    if method != "auto":
        return method
    key = ("auto", wrt, num_probes, _shapes(problem))
    per_config = _per_config(problem)
    if key not in per_config:
        costs = methods.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, num_probes)
        per_config[key] = methods.choose(costs)
    return per_config[key]


# One cache per model (freed with it): method objects keep their traced
# functions, so calls at later epochs reuse them instead of tracing again.
_CACHE = weakref.WeakKeyDictionary()


def _per_config(problem):
    """The model's cache entries for this graph, selection and trainability.

    Which weights are trainable is part of the configuration: freezing or
    unfreezing layers (as fine-tuning does between `fit` calls) changes what
    the sensitivity to weights sums over, and so needs new method objects.
    """
    graph = problem.graph
    trainable = tuple(tuple(id(v) for v in call.weights) for call in graph.calls)
    config = (tuple(graph.keys), tuple(problem.keys), trainable)
    return _CACHE.setdefault(problem.model, {}).setdefault(config, {})


def _cached(problem, name, wrt, num_probes, memory_budget_mb):
    per_config = _per_config(problem)
    budget = int(memory_budget_mb * 2**20)
    module = methods
    if name == "exact":
        key = (name, wrt, budget)
        make = lambda: module.ExactMethod(problem.graph, problem.keys, wrt, budget)  # noqa: E731
    else:
        key = (name, wrt, budget, num_probes)
        make = lambda: module.EstimateMethod(  # noqa: E731
            problem.graph, problem.keys, wrt, budget, num_probes
        )
    if key not in per_config:
        per_config[key] = make()
    return per_config[key]


def _shapes(problem):
    return tuple(tuple(x.shape) for x in problem.inputs)
