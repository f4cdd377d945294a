"""The background thread that computes and writes logged epochs.

One thread for the process, kept for its lifetime: a thread per computation
would make the allocator open new arenas, and the process's memory grow, over
the first hundred epochs (49 MiB in `benchmarks/studies/soak.py`). It is a daemon,
so that it never keeps the interpreter alive; at exit, the computations
submitted are waited for first (a `fit` left by an exception still writes
its last epoch). A computation's exception is kept for the main thread,
which reports it; the thread lives on.
"""

import atexit
import os
import queue
import threading


class Job:
    """One computation: on the background thread, or run at once (`now`)."""

    def __init__(self, target, run_dir, now=False):
        self.result = self.error = self.epoch = None
        self._target = target
        self._run_dir = None if run_dir is None else os.path.abspath(run_dir)
        self._done = threading.Event()
        if now:
            self.run()
            return
        if self._run_dir is not None:
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT[self._run_dir] = self
        _worker().put(self)

    def run(self):
        try:
            self.result = self._target()
        except BaseException as error:  # noqa: BLE001 - reported on the main thread
            self.error = error  # (and the background thread lives on)
        finally:
            self._target = None
            if self._run_dir is not None:
                with _IN_FLIGHT_LOCK:
                    if _IN_FLIGHT.get(self._run_dir) is self:
                        del _IN_FLIGHT[self._run_dir]
            self._done.set()

    def join(self):
        self._done.wait()


# The computation in flight per run directory, across callbacks: a `fit`
# left by an exception leaves its last epoch computing in the background,
# and a new `fit` on the same run waits for it before it decides its steps.
_IN_FLIGHT = {}
_IN_FLIGHT_LOCK = threading.Lock()


def wait_for_run(run_dir):
    with _IN_FLIGHT_LOCK:
        job = _IN_FLIGHT.get(os.path.abspath(run_dir))
    if job is not None:
        job.join()


_WORKER = None
_WORKER_LOCK = threading.Lock()


def _worker():
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = queue.SimpleQueue()
            threading.Thread(
                target=_work, args=(_WORKER,), name="NeuronSensitivityCallback", daemon=True
            ).start()
            atexit.register(drain)
        return _WORKER


def _work(jobs):
    while True:
        jobs.get().run()


def drain():
    """Waits until every computation submitted so far is done."""
    if _WORKER is not None:
        last = Job(lambda: None, run_dir=None)
        last.join()
