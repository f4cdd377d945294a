"""`NeuronSensitivityCallback`: scheduling and orchestration only, no math."""

import secrets
import warnings

import keras
import numpy as np
from keras.src.utils import io_utils

from keras_neuron_sensitivity import _arguments, _batch, _computation, api, probe
from keras_neuron_sensitivity.engine.summary import dead_neurons
from keras_neuron_sensitivity.tensorboard import SensitivityWriter

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
        on_error: `"warn"` to report a failed computation and keep training,
            `"raise"` to stop training with the error. Defaults to `"warn"`.
        verbose: 1 to print one line per logged epoch, 0 for silence.
            Defaults to 0.

    Attributes:
        sensitivities: what was logged, `{step: {wrt: Sensitivities}}`, each
            a dict `{key: (C,) array}` with `method`, `num_probes` and
            `std_error` attributes; the step is the epoch index (continued
            across `fit` calls).

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
        method="auto",
        num_probes=None,
        seed=None,
        num_bins=30,
        probe_size=None,
        memory_budget_mb=api.DEFAULT_MEMORY_BUDGET_MB,
        on_error="warn",
        verbose=0,
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
        self.verbose = verbose
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
        self._writer = SensitivityWriter(self.log_dir, self.num_bins)
        self._problem = None  # once the model is built
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
        if self._problem is None and probe.is_model_built(self.model):
            self._prepare()

    # tf_keras (Keras 2) asks each callback which batch hooks it implements,
    # once per fit: ours is needed only for a model built inside `fit`.
    def _implements_train_batch_hooks(self):
        return self._problem is None and not probe.is_model_built(self.model)

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
        results = _computation.compute(
            self._prepare(),
            method=self.method,
            num_probes=self.num_probes,
            seed=self.seed,
            memory_budget_mb=self.memory_budget_mb,
        )
        reduced = {w: result.reduce(self.reduction) for w, result in results.items()}
        dead = {w: {k: dead_neurons(v) for k, v in s.items()} for w, s in reduced.items()}
        errors = {w: s.std_error for w, s in reduced.items() if s.method == "estimate"}
        methods = {w: describe_method(s) for w, s in reduced.items()}
        step = self._step(epoch)
        self._writer.write(step, reduced, dead, errors, methods)
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
        if self._problem is None:
            self._problem = _computation.prepare(
                self.model, self.probe_data, wrt=self.wrt, layers=self.layers,
                what="probe_data",
            )
        return self._problem


def _is_chief(model):
    """Whether this process computes and writes: under `tf.distribute`, the
    chief only (every worker holds the same weights); otherwise always."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


def describe_method(sensitivities):
    """`"exact"` or `"estimate (32 probes)"`."""
    if sensitivities.method == "exact":
        return "exact"
    return f"estimate ({sensitivities.num_probes} probes)"


def _one_line(epoch, reduced, dead):
    parts = []
    for wrt, per_layer in reduced.items():
        values = np.concatenate(list(per_layer.values()))
        n_dead = int(sum(d.sum() for d in dead[wrt].values()))
        parts.append(
            f"to {wrt} ({describe_method(per_layer)}): mean {values.mean():.3g}, "
            f"{n_dead}/{values.size} dead"
        )
    return f"Epoch {epoch}: neuron sensitivity " + "; ".join(parts)
