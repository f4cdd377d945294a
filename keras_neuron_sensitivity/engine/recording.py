"""Seeing the layer calls a call makes, in this thread only.

Keras records no graph inside a layer's `call` (nor inside a subclassed
model's): sub-layers are called from Python. To see them, `intercept(handler)`
routes every `keras.layers.Layer.__call__` made *by this thread* through
`handler(layer, args, kwargs, proceed)`, where `proceed(args, kwargs)` makes
the call itself (whose own sub-layer calls come to the handler in turn).

`Layer.__call__` is replaced on the class while any thread intercepts (the
first `intercept` installs it, the last one to leave puts back what it
replaced, under a lock), but the replacement looks up the handler in a
thread-local slot: layer calls of every other thread (a training loop
running beside a computation in the background) go straight to Keras,
recorded by nobody. "Keras" is `Layer.__call__` as the first `intercept`
found it, not as it was when this module was imported: another library's
wrapper installed in between (a profiler, a test harness) keeps seeing every
call, and stays installed.
"""

import contextlib
import threading

import keras

_LOCAL = threading.local()
_LOCK = threading.Lock()
_ACTIVE = 0  # threads intercepting now
# What `_intercepting_call` replaced. Never reset: a thread that looked up the
# class's `__call__` just before the last `intercept` left still calls it.
_REPLACED = keras.layers.Layer.__call__


def _intercepting_call(layer, *args, **kwargs):
    handler = getattr(_LOCAL, "handler", None)
    call = _REPLACED
    if handler is None:
        return call(layer, *args, **kwargs)
    return handler(layer, args, kwargs, lambda a, k: call(layer, *a, **k))


@contextlib.contextmanager
def intercept(handler):
    """Routes this thread's layer calls through `handler` while active.

    Args:
        handler: `handler(layer, args, kwargs, proceed)` returns the call's
            outputs; `proceed(args, kwargs)` calls the layer itself.

    Nested use replaces the handler for the inner block and restores the
    outer one after it.
    """
    global _ACTIVE, _REPLACED
    with _LOCK:
        if _ACTIVE == 0:
            current = keras.layers.Layer.__call__
            if current is not _intercepting_call:
                _REPLACED = current
            keras.layers.Layer.__call__ = _intercepting_call
        _ACTIVE += 1
    outer = getattr(_LOCAL, "handler", None)
    _LOCAL.handler = handler
    try:
        yield
    finally:
        _LOCAL.handler = outer
        with _LOCK:
            _ACTIVE -= 1
            # Unless someone replaced ours meanwhile: theirs stays.
            if _ACTIVE == 0 and keras.layers.Layer.__call__ is _intercepting_call:
                keras.layers.Layer.__call__ = _REPLACED


@contextlib.contextmanager
def passing_through():
    """Inside an `intercept`, calls made here go straight to Keras (a handler
    that calls layers of its own, which it does not want to see)."""
    outer = getattr(_LOCAL, "handler", None)
    _LOCAL.handler = None
    try:
        yield
    finally:
        _LOCAL.handler = outer
