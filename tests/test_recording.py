"""Recording layer calls in one thread while another calls layers: the other
thread's calls are neither recorded nor changed, and `Layer.__call__` is
Keras's own again afterwards."""

import threading

import keras
import numpy as np

from keras_neuron_sensitivity.engine import recording
from keras_neuron_sensitivity.probe import subclassed

L = keras.layers
WAIT = 60  # seconds: a failure must not hang the suite
CALLS = 20  # the other thread's layer calls while the recording is on


class Chain(keras.Model):
    """Two Dense layers; between them, `call` waits for the other thread
    (so that its calls surely happen while this one is being recorded)."""

    def __init__(self, between=None):
        super().__init__()
        self.first = L.Dense(3, activation="tanh", name="first")
        self.second = L.Dense(2, name="second")
        self.between = between

    def call(self, x):
        h = self.first(x)
        if self.between is not None:
            self.between()
        return self.second(h)


class _Other(threading.Thread):
    """Calls `layer` on `x` `CALLS` times once `go` is set; keeps the outputs,
    whether `Layer.__call__` was replaced meanwhile, and any error."""

    def __init__(self, layer, x, go):
        super().__init__(daemon=True)
        self.layer, self.x, self.go = layer, x, go
        self.outputs, self.replaced, self.error = [], [], None
        self.done = threading.Event()

    def run(self):
        try:
            if not self.go.wait(WAIT):
                raise TimeoutError("the recording thread never started")
            for _ in range(CALLS):
                self.replaced.append(keras.layers.Layer.__call__ is not ORIGINAL)
                self.outputs.append(keras.ops.convert_to_numpy(self.layer(self.x)))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.done.set()


ORIGINAL = keras.layers.Layer.__dict__["__call__"]


def _dense(x, layer):
    """The literal answer of a linear Dense layer."""
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    return x @ kernel + bias


def test_another_threads_layer_calls_are_neither_recorded_nor_changed():
    x = np.random.default_rng(0).normal(size=(1, 4)).astype("float32")
    other_x = np.random.default_rng(1).normal(size=(5, 6)).astype("float32")
    other_layer = L.Dense(7, name="other")
    other_layer(other_x)  # built before
    go = threading.Event()
    other = _Other(other_layer, other_x, go)

    def between():  # inside the model's call, recording on
        go.set()
        assert other.done.wait(WAIT), "the other thread did not finish"

    model = Chain()
    model(x)  # built before, without waiting
    model.between = between
    other.start()
    calls, output = subclassed.record_calls(model, [keras.ops.convert_to_tensor(x)])
    other.join(WAIT)

    assert other.error is None, other.error
    assert all(other.replaced) and len(other.replaced) == CALLS  # it ran while recording
    # Not recorded: only the model's two calls of its own thread.
    assert [layer for layer, *_ in calls] == [model.first, model.second]
    # Not changed: each call gave what Keras gives.
    for got in other.outputs:
        np.testing.assert_allclose(got, _dense(other_x, other_layer), rtol=1e-6, atol=1e-6)
    assert keras.layers.Layer.__dict__["__call__"] is ORIGINAL
    model.between = None
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(output), keras.ops.convert_to_numpy(model(x)), rtol=1e-6
    )


def test_two_threads_recording_at_once_see_their_own_calls_only():
    x = np.random.default_rng(0).normal(size=(1, 4)).astype("float32")
    both_in = threading.Barrier(2, timeout=WAIT)
    first_out = threading.Event()
    models = {}

    def between_main():
        both_in.wait()  # the two recordings overlap here

    def between_thread():
        both_in.wait()
        # Leave after the main thread did: the last one out restores Keras's call.
        assert first_out.wait(WAIT)
        assert keras.layers.Layer.__dict__["__call__"] is not ORIGINAL

    models["main"], models["thread"] = Chain(), Chain()
    for model in models.values():
        model(x)  # built before, without waiting
    models["main"].between, models["thread"].between = between_main, between_thread
    recorded, errors = {}, []

    def record_in_thread():
        try:
            recorded["thread"] = subclassed.record_calls(
                models["thread"], [keras.ops.convert_to_tensor(x)]
            )[0]
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    thread = threading.Thread(target=record_in_thread, daemon=True)
    thread.start()
    recorded["main"] = subclassed.record_calls(models["main"], [keras.ops.convert_to_tensor(x)])[0]
    first_out.set()
    thread.join(WAIT)
    assert not errors, errors
    for name, model in models.items():
        assert [layer for layer, *_ in recorded[name]] == [model.first, model.second]
    assert keras.layers.Layer.__dict__["__call__"] is ORIGINAL


def test_an_error_inside_the_recording_restores_keras_call():
    def fail(layer, args, kwargs, proceed):
        raise RuntimeError("in the handler")

    layer = L.Dense(2)
    layer(np.ones((1, 3), "float32"))
    try:
        with recording.intercept(fail):
            layer(np.ones((1, 3), "float32"))
    except RuntimeError as error:
        assert "in the handler" in str(error)
    else:
        raise AssertionError("the handler was not called")
    assert keras.layers.Layer.__dict__["__call__"] is ORIGINAL
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(np.ones((1, 3), "float32"))),
        _dense(np.ones((1, 3), "float32"), layer), rtol=1e-6,
    )


def test_a_patch_of_layer_call_made_after_import_is_kept_and_used(monkeypatch):
    # Another library (a profiler, a test harness) wraps `Layer.__call__`
    # after this package was imported. A recording must go through it, leave
    # the other thread's calls going through it, and leave it in place.
    seen = []
    theirs = ORIGINAL

    def counting(layer, *args, **kwargs):
        seen.append((threading.get_ident(), layer.name))
        return theirs(layer, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    x = np.random.default_rng(0).normal(size=(1, 4)).astype("float32")
    other_x = np.ones((2, 6), "float32")
    other_layer = L.Dense(7, name="other")
    other_layer(other_x)
    go = threading.Event()
    other = _Other(other_layer, other_x, go)

    def between():
        go.set()
        assert other.done.wait(WAIT), "the other thread did not finish"

    model = Chain()
    model(x)
    model.between = between
    seen.clear()
    other.start()
    calls, _ = subclassed.record_calls(model, [keras.ops.convert_to_tensor(x)])
    other.join(WAIT)
    assert other.error is None, other.error
    assert [layer for layer, *_ in calls] == [model.first, model.second]
    # Their wrapper saw every call of both threads, the other's unchanged.
    assert [name for ident, name in seen if ident == other.ident] == ["other"] * CALLS
    assert {"first", "second"} <= {name for ident, name in seen if ident != other.ident}
    assert keras.layers.Layer.__dict__["__call__"] is counting  # still theirs
