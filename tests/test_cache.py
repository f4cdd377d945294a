"""No hidden state: what the package keeps between calls is bounded, freed
with its model, and cleared by `clear_cache`."""

import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

import keras_neuron_sensitivity
from keras_neuron_sensitivity import NeuronSensitivityCallback, clear_cache, neuron_sensitivity
from keras_neuron_sensitivity import _background, _computation

L = keras.layers
KEYS = ("a", "b", "c", "d")


def _model():
    return keras.Sequential(
        [keras.Input((4,))] + [L.Dense(3, activation="tanh", name=key) for key in KEYS]
    )


def _probe():
    return np.random.default_rng(0).normal(size=(5, 4)).astype("float32")


def _weak(value):
    try:
        return weakref.ref(value)
    except TypeError:  # a tuple or a string: nothing to free
        return None


def _traced(engine):
    """The engine's `tf.function`s that have been traced."""
    found = []
    for value in vars(engine).values():
        for candidate in value.values() if isinstance(value, dict) else [value]:
            if isinstance(candidate, tf.types.experimental.PolymorphicFunction):
                if candidate.experimental_get_tracing_count():
                    found.append(candidate)
    return found


def test_a_deleted_model_is_freed_with_its_graph_and_traced_functions():
    model, x = _model(), _probe()
    for wrt in ("weights", "inputs"):
        neuron_sensitivity(model, x, wrt=wrt)
        neuron_sensitivity(model, x, wrt=wrt, method="estimate", num_probes=2, seed=0)
        neuron_sensitivity(model, x, wrt=wrt, method="auto")
    entries = _computation.cache_entries(model)
    engines = [getattr(v, "_sweep", None) or getattr(v, "_estimator", None) for v in entries.values()]
    engines = [engine for engine in engines if engine is not None]
    assert len(engines) == 4  # exact and estimate, to weights and to inputs
    refs = [weakref.ref(model)] + [r for r in map(_weak, entries.values()) if r is not None]
    functions = [f for engine in engines for f in _traced(engine)]
    assert functions
    refs += [weakref.ref(engine) for engine in engines] + [weakref.ref(f) for f in functions]
    cache = weakref.ref(vars(model)[_computation._ATTRIBUTE])
    del model, entries, engines, functions
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert cache() is None and cache() not in _computation._CACHES


def test_the_cache_keeps_the_most_recently_used_entries(monkeypatch):
    monkeypatch.setattr(_computation, "MAX_CACHE_ENTRIES", 3)
    model, x = _model(), _probe()
    first = neuron_sensitivity(model, x, wrt="inputs", layers=["a"])  # one entry per call
    for key in ("b", "c", "d"):
        neuron_sensitivity(model, x, wrt="inputs", layers=[key])

    def selections():
        return [config[1] for config, _ in _computation.cache_entries(model)]

    assert selections() == [("b",), ("c",), ("d",)]  # "a", least recently used, dropped
    (kept_b,) = [v for (config, _), v in _computation.cache_entries(model).items() if config[1] == ("b",)]
    neuron_sensitivity(model, x, wrt="inputs", layers=["b"])  # used again: kept, and last
    assert selections() == [("c",), ("d",), ("b",)]
    (again_b,) = [v for (config, _), v in _computation.cache_entries(model).items() if config[1] == ("b",)]
    assert again_b is kept_b  # not made (nor traced) again
    # A dropped entry is made again, with the same values.
    np.testing.assert_array_equal(
        neuron_sensitivity(model, x, wrt="inputs", layers=["a"])["a"], first["a"]
    )
    assert selections() == [("d",), ("b",), ("a",)]


def test_clear_cache_empties_every_cache(tmp_path):
    assert "clear_cache" in keras_neuron_sensitivity.__all__
    model, x = _model(), _probe()
    model.compile("sgd", "mse")
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path)
    model.fit(x, np.zeros((5, 3)), epochs=1, verbose=0, callbacks=[callback])
    _background.drain()
    # The callback's traced functions are the model's: kept for a later fit.
    assert _computation.cache_entries(model)
    before = neuron_sensitivity(model, x)

    clear_cache()
    assert _computation.cache_entries(model) == {}
    after = neuron_sensitivity(model, x)
    for key in KEYS:
        np.testing.assert_array_equal(after[key], before[key])


def test_a_model_with_a_cache_saves_and_loads_as_without(tmp_path):
    model, x = _model(), _probe()
    neuron_sensitivity(model, x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert _computation.cache_entries(loaded) == {}
    for key in KEYS:
        np.testing.assert_array_equal(
            neuron_sensitivity(loaded, x)[key], neuron_sensitivity(model, x)[key]
        )
