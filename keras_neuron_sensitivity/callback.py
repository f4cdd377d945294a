"""`NeuronSensitivityCallback`: scheduling and orchestration only, no math."""

import contextlib
import secrets
import time
import warnings

import keras
import numpy as np
from keras.src.utils import io_utils

from keras_neuron_sensitivity import (
    _arguments,
    _background,
    _batch,
    _computation,
    api,
    health,
    probe,
)
from keras_neuron_sensitivity.engine import backend
from keras_neuron_sensitivity.engine.replay import snapshot_values
from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter

ON_ERROR_CHOICES = ("warn", "raise")


class NeuronSensitivityCallback(keras.callbacks.Callback):
    """Logs every neuron's Jacobian norms to TensorBoard during `fit`.

    At each scheduled epoch end, it evaluates the model (in inference mode) on
    a fixed probe batch and computes, for every neuron of every selected
    layer, the norm of the derivative of its output with respect to all
    trainable weights and/or to the inputs. No labels are used. It writes one
    histogram per layer (one value per neuron) and scalars for the mean and
    the dead fraction to the run `{log_dir}/sensitivity`, with step = epoch
    index so it lines up with `keras.callbacks.TensorBoard(log_dir)`.

    By default (`method="auto"`) the values are exact when that is cheap (a
    small MLP or CNN) and otherwise estimated, without bias in the square,
    from random forward-mode Jacobian-vector products whose cost does not
    grow with the number of neurons; the run says which method produced
    each value, and logs the estimate's relative error per layer.

    By default (`asynchronous=True`) a logged epoch is computed and written
    in a background thread, on a private copy of the weights taken when the
    epoch ends, while training goes on; the next logged epoch, and the end of
    training, wait for it, so everything logged is on disk when `fit`
    returns.

    By default (`activity=True`) it also logs each neuron's activity on the
    probe (mean, mean |activation|, standard deviation, firing rate,
    tau-dormant score, contribution utility, the slope of its activation)
    and its status (active, dormant, saturated, dead, or nothing trainable
    upstream), with a histogram of each layer's per-neuron mean activations
    and the fractions of dormant and saturated neurons.

    It never changes training, and by default a failed computation or write
    (a full disk) is reported as a warning and training goes on.

    Args:
        probe_data: the probe batch, fixed for the whole run: an array, a
            list or dict of arrays (several inputs), an `(x, y)` tuple (labels
            are ignored), or a `tf.data.Dataset` (its first batches).
        log_dir: directory for the logs; the run is `{log_dir}/sensitivity`.
            Defaults to `"logs"`.
        wrt: `"weights"`, `"inputs"`, or both as a tuple. Defaults to None:
            both where they exist (a model whose integer or string inputs no
            layer embeds logs weights only, with a warning). For token ids,
            "inputs" means the embedded input (the `Embedding` output).
        freq: an int `N` to log every `N` epochs (epochs 0, N, 2N, ... as
            Keras's `histogram_freq`), or a list of epoch indices. Defaults
            to 1.
        layers: layer names or objects to evaluate. Defaults to every layer
            with trainable weights plus standalone activation layers.
        reduction: `"mean"`, `"rms"` or `"max"` over the probe batch for the
            logged per-neuron value. Defaults to `"mean"`.
        method: `"auto"` (exact when its predicted cost is at most twice the
            estimate's, decided per `wrt` from the model's and probe's shapes),
            `"exact"`, or `"estimate"`. Defaults to `"auto"`.
        num_probes: random tangents of the estimate (at least 2). Defaults to
            None: 32.
        seed: the estimate's seed, a non-negative int. The same tangents are
            used at every logged epoch, so that epochs compare with each
            other more precisely than their values with the truth. Defaults
            to None: drawn once, when the callback is made, from the
            operating system (never from a global random state).
        num_bins: histogram buckets. Defaults to 30.
        probe_size: keep at most this many samples (a dataset defaults to
            128). Defaults to None: the whole probe batch.
        memory_budget_mb: working memory in MiB for one computation. Defaults
            to 1024.
        asynchronous: True to compute and write each logged epoch in a
            background thread, on a copy of the weights, while training goes
            on; False to do it at the end of the epoch, before training goes
            on. `tf_keras` models, models trained under a `tf.distribute`
            strategy, and models whose weights are split across processes
            (every process then computes, together) are computed at the end
            of the epoch either way. Defaults to True.
        on_error: `"warn"` to report a failed computation or write and keep
            training, `"raise"` to stop training with the error (raised at
            the next logged epoch or when training ends, when asynchronous).
            Defaults to `"warn"`.
        verbose: 1 to print one line per logged epoch, 0 for silence.
            Defaults to 0.
        activity: True to log each neuron's activity and status too (read
            in the sensitivity method's own forward pass of the probe),
            False for the sensitivities alone. Defaults to True.
        dormant_threshold: tau: a neuron whose mean |activation| is at most
            this fraction of its layer's average is dormant (Sokar et al.
            2023). Defaults to 0.1.

    Attributes:
        sensitivities: what was logged, `{step: {wrt: Sensitivities}}`, each
            a dict `{key: (C,) array}` with `method`, `num_probes` and
            `std_error` attributes; the step is the epoch index (continued
            across `fit` calls).
        activities: the neuron health logged, `{step: NeuronActivity}`, each
            `{key: {statistic: (C,) array}}` with a `status` per neuron
            (empty with `activity=False`).
        waited: seconds that the last `fit` waited for the callback (its
            hooks' time: the set-up when training begins, each logged
            epoch's end, the end of training).

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[
        NeuronSensitivityCallback(x_val[:128], log_dir="logs"),
        keras.callbacks.TensorBoard(log_dir="logs"),
    ])
    # tensorboard --logdir logs
    ```

    On a tiny model, what was logged is also kept in memory:

    >>> import tempfile
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(3, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 1), "float32")
    >>> callback = NeuronSensitivityCallback(x[:4], log_dir=tempfile.mkdtemp(), freq=[1])
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    >>> list(callback.sensitivities)  # the logged epochs
    [1]
    >>> sorted(callback.sensitivities[1]["weights"])
    ['hidden', 'out']
    >>> callback.sensitivities[1]["weights"]["hidden"].shape
    (3,)
    """

    def __init__(
        self,
        probe_data,
        log_dir="logs",
        *,
        wrt=None,
        freq=1,
        layers=None,
        reduction="mean",
        method="auto",
        num_probes=None,
        seed=None,
        num_bins=30,
        probe_size=None,
        memory_budget_mb=api.DEFAULT_MEMORY_BUDGET_MB,
        asynchronous=True,
        on_error="warn",
        verbose=0,
        activity=True,
        dormant_threshold=health.DEFAULT_DORMANT_THRESHOLD,
    ):
        super().__init__()
        self.wrt = None if wrt is None else _arguments.check_wrt(wrt, allow_both=True)
        self.freq = _arguments.check_freq(freq)
        if reduction is None:
            raise ValueError(
                "Received reduction=None. Expected 'mean', 'rms' or 'max': the "
                "callback logs one value per neuron. For per-sample norms, "
                "call `neuron_sensitivity(..., reduction=None)`."
            )
        _arguments.check_reduction(reduction)
        self.reduction = reduction
        _arguments.check_method(method)
        self.method = method
        self.num_probes = _arguments.check_num_probes(num_probes)
        seed = _arguments.check_seed(seed)
        self.seed = secrets.randbits(62) if seed is None else seed
        self.num_bins = _arguments.check_positive_int("num_bins", num_bins)
        if probe_size is not None:
            _arguments.check_positive_int("probe_size", probe_size)
        _arguments.check_budget(memory_budget_mb)
        self.memory_budget_mb = memory_budget_mb
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"Received on_error={on_error!r}. Expected one of "
                f"{ON_ERROR_CHOICES}: 'warn' reports a failed computation and "
                "keeps training, 'raise' stops training."
            )
        self.on_error = on_error
        if not isinstance(asynchronous, bool):
            raise TypeError(
                f"Received asynchronous={asynchronous!r} of type "
                f"{type(asynchronous).__name__}. Expected True (compute in a "
                "background thread while training goes on) or False (compute "
                "at the end of the epoch)."
            )
        self.asynchronous = asynchronous
        self.verbose = verbose
        if not isinstance(activity, bool):
            raise TypeError(
                f"Received activity={activity!r} of type {type(activity).__name__}. "
                "Expected True (log each neuron's activity and status too) or "
                "False (the sensitivities alone)."
            )
        self.activity = activity
        self.dormant_threshold = _arguments.check_dormant_threshold(dormant_threshold)
        self.log_dir = _arguments.check_log_dir(log_dir)
        if probe_data is None:
            raise ValueError(
                "Received probe_data=None. Expected a batch of inputs (an "
                "array, a list or dict of arrays, an (x, y) tuple or a "
                "tf.data.Dataset), for example `x_val[:128]`."
            )
        self.probe_data = _batch.take_inputs(probe_data, probe_size)
        self.layers = layers
        self.sensitivities = {}
        self.activities = {}
        self.waited = 0.0
        self._writer = SensitivityWriter(self.log_dir, self.num_bins)
        self._problem = None  # once the model is built
        self._background = False  # whether this model computes in the background
        self._writes = True  # whether this process writes (process 0 of several)
        self._job = None  # the computation in flight, if any
        self._pending = None  # the warm-up, started after the first step
        self._step_offset = None
        self._first_epoch = None
        self._warned = set()  # kinds of warnings given, once each
        self._notices = []  # (kind, message) from the background, said on this thread
        self._write_failed = False

    # --- Keras hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.waited = 0.0
        with self._holding():
            # A computation still in flight for this run (an earlier `fit`
            # interrupted by an exception) must be written before this one
            # decides its steps.
            _background.wait_for_run(self._writer.run_dir)
            self._step_offset = None  # set at this fit's first logged epoch
            self._first_epoch = None
            if probe.is_model_built(self.model):
                self._set_up()

    def on_train_batch_begin(self, batch, logs=None):
        # A model built inside `fit` (a Sequential without `Input`) is built
        # by its first step: check the probe against it right after. (A batch
        # *end* hook would turn off Keras's asynchronous batch dispatch.)
        if self._problem is None and probe.is_model_built(self.model):
            with self._holding():
                self._set_up()
        elif self._pending is not None and batch >= 1:
            # After the first step, in which Keras traces its train function:
            # the warm-up would compete with that for the interpreter.
            self._start_pending()

    # tf_keras (Keras 2) asks each callback which batch hooks it implements,
    # once per fit: ours is needed only for a model built inside `fit`.
    def _implements_train_batch_hooks(self):
        return self._problem is None and not probe.is_model_built(self.model)

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch  # after BackupAndRestore's restore

    def on_epoch_end(self, epoch, logs=None):
        if not self._scheduled(epoch):
            return
        computes, self._writes = _roles(self.model)
        if not computes:
            return
        with self._holding():
            self._log_epoch(epoch)

    def _log_epoch(self, epoch):
        # At most one computation in flight: this epoch waits for the last.
        self._start_pending()
        self._finish_job()
        step = self._step(epoch)
        try:
            self._start_job(step, epoch)
        except Exception as error:  # noqa: BLE001 - reported, see on_error
            self._report_failure(epoch, error)
            return
        if not self.asynchronous:
            self._finish_job()

    def on_train_end(self, logs=None):
        with self._holding():
            self._pending = None
            try:
                self._finish_job()
            finally:
                self._close_writer()

    def _close_writer(self):
        try:
            self._writer.finish()  # the heat maps at the last logged epoch
        except OSError as error:
            self._report_write_failure(None, error)
        finally:
            self._writer.close()
        self._report_notices()

    @contextlib.contextmanager
    def _holding(self):
        """Counts the time training waits for this callback (`waited`)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - started

    # --- the computation ----------------------------------------------------

    def _set_up(self):
        """Checks the probe against the model, and schedules the warm-up:
        the computation traced in the background on the weights after the
        first step, while the first epoch trains (`_pending`, from its second
        step on)."""
        problem = self._prepare()
        computes, self._writes = _roles(self.model)
        if not computes:
            return
        if self._writes:
            try:
                self._writer.open()  # a reader finds the run from the start
            except OSError:
                pass  # said when an epoch cannot be written
        self._pending = None
        self._finish_job()  # a warm-up left by an interrupted `fit`
        # tf_keras models (whose variables no StatelessScope replaces),
        # tf.distribute strategies and weights split across processes
        # (documented) compute at the epoch's end.
        self._background = self.asynchronous and _can_snapshot(self.model)
        if self._background:
            self._pending = lambda: self._warm_up(problem, _snapshot(problem))

    def _start_pending(self):
        if self._pending is not None:
            target, self._pending = self._pending, None
            self._job = _background.Job(target, run_dir=None)

    def _warm_up(self, problem, snapshot):
        """Traces the computation on weights taken after the first step (the
        result is not used): the first logged epoch then only computes. The
        traced functions are the model's (`_computation`'s cache): a later
        `fit` of the same model traces nothing."""
        self._compute(problem, snapshot())

    def _compute(self, problem, snapshot=None):
        return _computation.compute(
            problem,
            method=self.method,
            num_probes=self.num_probes,
            seed=self.seed,
            memory_budget_mb=self.memory_budget_mb,
            snapshot=snapshot,
            activity=self.activity,
        )

    def _start_job(self, step, epoch):
        problem = self._prepare()
        if self._background:
            # The weights at this epoch's end, copied on this thread before
            # training changes them; computed and written in the background.
            snapshot = _snapshot(problem)()
            target = lambda: self._log(problem, step, epoch, snapshot)  # noqa: E731
        else:
            target = lambda: self._log(problem, step, epoch)  # noqa: E731
        self._job = _background.Job(
            target, run_dir=self._writer.run_dir, now=not self._background
        )
        self._job.epoch = epoch

    def _log(self, problem, step, epoch, snapshot=None):
        """Computes and writes one epoch; returns what the main thread reports."""
        results = self._compute(problem, snapshot)
        reduced = {w: result.reduce(self.reduction) for w, result in results.items()}
        dead = {w: s.dead() for w, s in reduced.items()}
        errors = {w: s.std_error for w, s in reduced.items() if s.method == "estimate"}
        methods = {w: describe_method(s) for w, s in reduced.items()}
        self.sensitivities[step] = reduced
        activity = None
        if results.activity_error is not None:
            if self.on_error == "raise":
                raise results.activity_error
            error = results.activity_error
            self._notices.append((
                "activity",
                f"could not compute the neuron health ({type(error).__name__}: {error}); "
                "the sensitivities are logged without it. Pass activity=False to "
                "silence this, or on_error='raise' to stop instead.",
            ))
        if results.activity is not None:
            # Dead is the sensitivity to weights' zeros (to the inputs' when
            # only those are logged), as the dead fractions say.
            sensitivities = reduced.get("weights", reduced.get("inputs"))
            activity = health.NeuronActivity.build(
                results.activity, sensitivities, self.dormant_threshold,
                health.DEFAULT_SATURATION_THRESHOLD,
            )
            self.activities[step] = activity
        heads = {
            site.key: site.heads
            for site in problem.graph.sites
            if site.heads and site.key in problem.keys
        }
        if not self._writes:
            return step, reduced, dead, activity, None
        try:
            self._writer.write(
                step, reduced, dead, errors, methods, epoch=epoch, heads=heads, activity=activity
            )
        except OSError as error:
            return step, reduced, dead, activity, error
        return step, reduced, dead, activity, None

    def _finish_job(self):
        """Waits for the job in flight and reports how it went."""
        job, self._job = self._job, None
        if job is None:
            return
        started = time.perf_counter()
        job.join()
        waited = time.perf_counter() - started
        if job.result is None and job.error is None:
            return  # the warm-up
        if job.error is not None:
            if job.epoch is None:
                return  # the warm-up failed: the first logged epoch will say why
            self._report_failure(job.epoch, job.error)
            return
        step, reduced, dead, activity, write_error = job.result
        if write_error is not None:
            self._report_write_failure(step, write_error)
        elif self._write_failed:
            self._write_failed = False
            self._warn_once(
                "write again",
                f"NeuronSensitivityCallback writes to {self._writer.run_dir} "
                f"again, from step {step} on.",
            )
        self._report_notices()
        if self.verbose:
            line = _one_line(step, reduced, dead, activity)
            if self.asynchronous and waited >= 0.01:
                # The computation took longer than the training since.
                line += f" (training waited {waited:.2f} s for it)"
            io_utils.print_msg(line)

    def _report_failure(self, epoch, error):
        if self.on_error == "raise":
            raise error
        self._warn_once(
            "compute",
            f"NeuronSensitivityCallback could not compute or write the "
            f"sensitivities at epoch {epoch} ({type(error).__name__}: "
            f"{error}); training goes on without them. Pass "
            "on_error='raise' to stop instead.",
        )

    def _report_write_failure(self, step, error):
        self._write_failed = True
        if self.on_error == "raise":
            raise error
        at = f"step {step}" if step is not None else "the end of training"
        self._warn_once(
            "write",
            f"NeuronSensitivityCallback could not write to "
            f"{self._writer.run_dir} at {at} ({type(error).__name__}: "
            f"{error}); training goes on. What was written before stays "
            "readable; each later logged epoch tries again, and "
            "`callback.sensitivities` keeps every value. Pass "
            "on_error='raise' to stop instead.",
        )

    def _report_notices(self):
        while self._writer.notices or self._notices:
            kind, message = (self._writer.notices or self._notices).pop(0)
            self._warn_once(kind, f"NeuronSensitivityCallback: {message}")

    def _warn_once(self, kind, message):
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, stacklevel=3)

    # --- helpers ------------------------------------------------------------

    def _scheduled(self, epoch):
        if isinstance(self.freq, int):
            return epoch % self.freq == 0
        return epoch in self.freq

    def _step(self, epoch):
        """The TensorBoard step of this epoch: the epoch index, shifted only
        by `continue_steps` (a second `fit`, or one that BackupAndRestore
        resumed after a second `fit`).

        Decided at this `fit`'s first logged epoch, when no computation is in
        flight. A `fit` that starts at a step the run holds (BackupAndRestore
        resumed it from a backup older than the last logged epoch) trains
        those epochs again: the run forgets its steps from there on, and
        this `fit` logs them anew.
        """
        if self._step_offset is None:
            first = epoch if self._first_epoch is None else self._first_epoch
            # A process that does not write leaves the run to process 0.
            steps = self._writer.steps() if self._writes else {}
            self._step_offset = continue_steps(steps, first)
            first_step = first + self._step_offset
            if self._writes and any(step >= first_step for step in steps):
                self._writer.restart(first_step)
                for step in [s for s in self.sensitivities if s >= first_step]:
                    del self.sensitivities[step]
                for step in [s for s in self.activities if s >= first_step]:
                    del self.activities[step]
                if self.verbose:
                    io_utils.print_msg(
                        f"Epoch {first_step}: trained again after an "
                        "interruption; the neuron sensitivities logged from "
                        "this step on before it are replaced"
                    )
        return epoch + self._step_offset

    def _prepare(self):
        """Checks the probe and layers against the model, once."""
        if self._problem is None:
            self._problem = _computation.prepare(
                self.model, self.probe_data, wrt=self.wrt, layers=self.layers,
                what="probe_data",
            )
        return self._problem


def continue_steps(steps, first_epoch):
    """The offset `step - epoch` of a `fit` whose first epoch is `first_epoch`.

    Args:
        steps: the run's `{step: epoch of its fit}` (epoch None: unknown).
        first_epoch: the first epoch of this `fit` (after `BackupAndRestore`
            set it, or `initial_epoch`).

    - An empty run: 0, the step is the epoch index.
    - A `fit` from epoch 0 on a run that holds steps (a second `fit`, a new
      callback on the same `log_dir`): the steps continue after the last.
    - A `fit` from a later epoch that continues the `fit` which logged the
      run's last step (it starts at most one epoch after that step's epoch:
      `BackupAndRestore` resuming an interrupted `fit`, or `initial_epoch`):
      that `fit`'s offset, so each epoch keeps its step. When it starts at
      or before the last logged epoch (a backup older than that epoch), the
      epochs from its first on are trained again and replace the logged
      ones at the same steps (`SensitivityWriter.restart`).
    - Any other later start: the epoch index if it is beyond the run's last
      step, else the steps continue after the last.
    """
    if not steps:
        return 0
    last = max(steps)
    if first_epoch == 0:
        return last + 1
    last_epoch = last if steps[last] is None else steps[last]
    if first_epoch <= last_epoch + 1:
        return last - last_epoch
    return 0 if first_epoch > last else last + 1 - first_epoch


def _can_snapshot(model):
    """Whether the computation may run beside training on a snapshot of the
    weights: not for `tf_keras` models (their variables are read as they
    are), nor under a `tf.distribute` strategy (the variables are mirrored,
    the background thread outside the strategy), nor for weights split
    across processes (every process must make the computation's collective
    calls in the same order, which a thread beside training's own
    collectives cannot promise)."""
    if probe.is_tf_keras(model):
        return False
    if backend.name() != "tensorflow":
        return not _split_across_processes(model)
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    return not tf.distribute.has_strategy() and (
        strategy is None or strategy is tf.distribute.get_strategy()
    )


def _snapshot(problem):
    """`take()`: the values of every variable the problem's calls read,
    copied when called (on the main thread, between training steps)."""
    return lambda: snapshot_values(problem.graph.calls)


def _roles(model):
    """`(computes, writes)`: whether this process computes, and writes.

    - Under `tf.distribute`: the chief only, both (every worker holds the
      same weights).
    - `keras.distribution` on JAX, weights replicated (`DataParallel`):
      process 0 only, both, from the weights it holds whole.
    - Weights split across processes (`ModelParallel` whose model axis spans
      them): no process holds the model, so every process computes, SPMD
      under the model's own layout, and process 0 writes.
    """
    if backend.name() != "tensorflow":
        first = backend.process_index() == 0
        return first or _split_across_processes(model), first
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    chief = bool(getattr(extended, "should_checkpoint", True))
    return chief, chief


def _split_across_processes(model):
    return backend.spans_processes([v.value for v in model.weights])


def describe_method(sensitivities):
    """`"exact"` or `"estimate (32 probes)"`."""
    if sensitivities.method == "exact":
        return "exact"
    return f"estimate ({sensitivities.num_probes} probes)"


def _one_line(epoch, reduced, dead, activity=None):
    parts = []
    for wrt, per_layer in reduced.items():
        values = np.concatenate(list(per_layer.values()))
        n_dead = int(sum(d.sum() for d in dead[wrt].values()))
        parts.append(
            f"to {wrt} ({describe_method(per_layer)}): mean {values.mean():.3g}, "
            f"{n_dead}/{values.size} dead"
        )
    if activity is not None:
        total = sum(len(v["status"]) for v in activity.values())
        parts.append(
            f"{sum(activity.counts('dormant').values())}/{total} dormant, "
            f"{sum(activity.counts('saturated').values())}/{total} saturated"
        )
    return f"Epoch {epoch}: neuron sensitivity " + "; ".join(parts)
