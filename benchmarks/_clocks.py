"""Clocks inside `fit`, for the benchmarks that time the callback there.

`Clock` is a Keras callback that notes the time at every epoch's begin and
end; placed before and after a callback in `fit`'s list, two clocks time
that callback's `on_epoch_end` without wrapping anything of it (Keras calls
the callbacks in their order). `time_writes` times the callback's
TensorBoard writes, on its private writer: the one thing no public hook
sees.
"""

import time

import keras


class Clock(keras.callbacks.Callback):
    """`begins` and `ends`: `time.perf_counter()` at each epoch's begin and end."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def between(before, after):
    """Per epoch, the seconds from `before`'s `on_epoch_end` to `after`'s:
    the `on_epoch_end` of the callbacks between them."""
    return [b - a for a, b in zip(before.ends, after.ends)]


def time_writes(callback):
    """A list that fills with the seconds of each of `callback`'s TensorBoard
    writes (stays empty if its private writer moved)."""
    times = []
    writer = getattr(callback, "_writer", None)
    if writer is None or not callable(getattr(writer, "write", None)):
        return times
    write = writer.write

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return write(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    writer.write = timed
    return times
