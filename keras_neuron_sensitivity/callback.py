"""`NeuronSensitivityCallback`: scheduling and orchestration only, no math."""

import os
import warnings

import keras
import numpy as np
from keras.src.utils import io_utils

from keras_neuron_sensitivity import _batch, api, probe
from keras_neuron_sensitivity.engine.summary import dead_neurons, reduce_samples
from keras_neuron_sensitivity.tensorboard import SensitivityWriter

ON_ERROR_CHOICES = ("warn", "raise")


class NeuronSensitivityCallback(keras.callbacks.Callback):
    """Logs every neuron's exact Jacobian norms to TensorBoard during `fit`.

    At each scheduled epoch end, it evaluates the model (in inference mode) on
    a fixed probe batch and computes, for every neuron of every selected
    layer, the norm of the derivative of its output with respect to all
    trainable weights and/or to the inputs. No labels are used. It writes one
    histogram per layer (one value per neuron) and scalars for the mean and
    the dead fraction to the run `{log_dir}/sensitivity`, with step = epoch
    index so it lines up with `keras.callbacks.TensorBoard(log_dir)`.

    It never changes training, and by default a failed computation is
    reported as a warning and training goes on.

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
        num_bins: histogram buckets. Defaults to 30.
        probe_size: keep at most this many samples (a dataset defaults to
            128). Defaults to None: the whole probe batch.
        memory_budget_mb: working memory in MiB for one computation. Defaults
            to 1024.
        on_error: `"warn"` to report a failed computation and keep training,
            `"raise"` to stop training with the error. Defaults to `"warn"`.
        verbose: 1 to print one line per logged epoch, 0 for silence.
            Defaults to 0.

    Attributes:
        sensitivities: what was logged, `{step: {wrt: {key: (C,) array}}}`;
            the step is the epoch index (continued across `fit` calls).

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[
        NeuronSensitivityCallback(x_val[:128], log_dir="logs"),
        keras.callbacks.TensorBoard(log_dir="logs"),
    ])
    # tensorboard --logdir logs
    ```
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
        num_bins=30,
        probe_size=None,
        memory_budget_mb=api.DEFAULT_MEMORY_BUDGET_MB,
        on_error="warn",
        verbose=0,
    ):
        super().__init__()
        self.wrt = None if wrt is None else api._check_wrt(wrt, allow_both=True)
        self.freq = _check_freq(freq)
        if reduction is None:
            raise ValueError(
                "Received reduction=None. Expected 'mean', 'rms' or 'max': the "
                "callback logs one value per neuron. For per-sample norms, "
                "call `neuron_sensitivity(..., reduction=None)`."
            )
        api._check_reduction(reduction)
        self.reduction = reduction
        self.num_bins = _check_positive_int("num_bins", num_bins)
        if probe_size is not None:
            _check_positive_int("probe_size", probe_size)
        api._check_budget(memory_budget_mb)
        self.memory_budget_mb = memory_budget_mb
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"Received on_error={on_error!r}. Expected one of "
                f"{ON_ERROR_CHOICES}: 'warn' reports a failed computation and "
                "keeps training, 'raise' stops training."
            )
        self.on_error = on_error
        self.verbose = verbose
        self.log_dir = _check_log_dir(log_dir)
        if probe_data is None:
            raise ValueError(
                "Received probe_data=None. Expected a batch of inputs (an "
                "array, a list or dict of arrays, an (x, y) tuple or a "
                "tf.data.Dataset), for example `x_val[:128]`."
            )
        self.probe_data = _batch.take_inputs(probe_data, probe_size)
        self.layers = layers
        self.sensitivities = {}
        self._writer = SensitivityWriter(self.log_dir, self.num_bins)
        self._prepared = None  # (graph, inputs, keys) once the model is built
        self._step_offset = None
        self._failed = False

    # --- Keras hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._step_offset = None  # set at this fit's first logged epoch
        if probe.is_model_built(self.model):
            self._prepare()

    def on_train_batch_begin(self, batch, logs=None):
        # A model built inside `fit` (a Sequential without `Input`) is built
        # by its first step: check the probe against it right after. (A batch
        # *end* hook would turn off Keras's asynchronous batch dispatch.)
        if self._prepared is None and probe.is_model_built(self.model):
            self._prepare()

    # tf_keras (Keras 2) asks each callback which batch hooks it implements,
    # once per fit: ours is needed only for a model built inside `fit`.
    def _implements_train_batch_hooks(self):
        return self._prepared is None and not probe.is_model_built(self.model)

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False

    def on_epoch_end(self, epoch, logs=None):
        if not self._scheduled(epoch) or not _is_chief(self.model):
            return
        try:
            self._log(epoch)
        except Exception as error:  # noqa: BLE001 - reported, see on_error
            if self.on_error == "raise":
                raise
            if not self._failed:
                warnings.warn(
                    f"NeuronSensitivityCallback could not compute or write the "
                    f"sensitivities at epoch {epoch} ({type(error).__name__}: "
                    f"{error}); training goes on without them. Pass "
                    "on_error='raise' to stop instead.",
                    stacklevel=2,
                )
            self._failed = True

    def _log(self, epoch):
        graph, inputs, keys = self._prepare()
        sweep = api.cached_sweep(self.model, graph, keys, self._wrt, self.memory_budget_mb)
        per_sample = sweep(inputs)
        reduced = {
            w: {k: reduce_samples(v, self.reduction) for k, v in d.items()}
            for w, d in per_sample.items()
        }
        dead = {w: {k: dead_neurons(v) for k, v in d.items()} for w, d in per_sample.items()}
        step = self._step(epoch)
        self._writer.write(step, reduced, dead)
        self.sensitivities[step] = reduced
        if self.verbose:
            io_utils.print_msg(_one_line(step, reduced, dead))

    def on_train_end(self, logs=None):
        self._writer.finish()
        self._writer.close()

    # --- helpers ------------------------------------------------------------

    def _scheduled(self, epoch):
        if isinstance(self.freq, int):
            return epoch % self.freq == 0
        return epoch in self.freq

    def _step(self, epoch):
        """The TensorBoard step of this epoch: the epoch index, shifted only
        when the run already holds that step (a second `fit` starting again
        at epoch 0), so that no step is written twice."""
        if self._step_offset is None:
            last = self._writer.last_step()
            self._step_offset = 0 if last is None or epoch > last else last + 1 - epoch
        return epoch + self._step_offset

    def _prepare(self):
        """Checks the probe and layers against the model, once."""
        if self._prepared is None:
            graph = api.model_graph(self.model, self.probe_data)
            inputs = _batch.standardize(graph, self.probe_data, "probe_data")
            keys = probe.resolve_layers(graph, self.layers)
            self._wrt = _batch.resolve_wrt(graph, self.wrt)  # None: where they exist
            self._prepared = (graph, inputs, keys)
        return self._prepared


def _is_chief(model):
    """Whether this process computes and writes: under `tf.distribute`, the
    chief only (every worker holds the same weights); otherwise always."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def _one_line(epoch, reduced, dead):
    parts = []
    for wrt, per_layer in reduced.items():
        values = np.concatenate(list(per_layer.values()))
        n_dead = int(sum(d.sum() for d in dead[wrt].values()))
        parts.append(
            f"to {wrt}: mean {values.mean():.3g}, {n_dead}/{values.size} dead"
        )
    return f"Epoch {epoch}: neuron sensitivity " + "; ".join(parts)


def _check_freq(freq):
    if isinstance(freq, (int, np.integer)) and not isinstance(freq, bool):
        if freq >= 1:
            return int(freq)
    elif isinstance(freq, (list, tuple, set, range)) and freq:
        if all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 0
            for e in freq
        ):
            return frozenset(int(e) for e in freq)
    raise ValueError(
        f"Received freq={freq!r}. Expected a positive int N (log every N "
        "epochs: 0, N, 2N, ...) or a non-empty list of 0-based epoch indices, "
        "for example freq=1 or freq=[0, 5, 9]."
    )


def _check_positive_int(name, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    raise ValueError(f"Received {name}={value!r}. Expected a positive int.")


def _check_log_dir(log_dir):
    if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(
            f"Received log_dir={log_dir!r}. Expected a directory path (str or "
            "os.PathLike), for example 'logs'."
        )
    log_dir = os.fspath(log_dir)
    # The first existing ancestor decides whether the run can be created.
    existing = os.path.abspath(log_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"Received log_dir={log_dir!r}, but {existing!r} is a file, so no "
            "log directory can be created there. Expected a directory path. "
            "Choose another log_dir or move the file."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"Received log_dir={log_dir!r}, but {existing!r} is not writable. "
            "Expected a directory this process can write to. Choose another "
            "log_dir or fix its permissions."
        )
    return log_dir
