"""`SensitivityWriter`: one epoch of a `sensitivity` run, written as one event.

The run's layout is in `tags`; the heat maps are drawn by `pictures`; the
event file is `events.EventFile`.
"""

import os
import time

import numpy as np
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata

from keras_neuron_sensitivity.tensorboard import pictures, reader
from keras_neuron_sensitivity.tensorboard.events import EventFile
from keras_neuron_sensitivity.tensorboard.histograms import MEAN_ACTIVATION_DESCRIPTION, histogram_buckets
from keras_neuron_sensitivity.tensorboard.tags import (
    EPOCH_TAG,
    METHOD_TAG,
    PLUGIN_NAME,
    RUN_NAME,
    TEXT_TAG,
    THRESHOLDS_TAG,
    activity_rows,
    activity_tag,
    dead_fraction_tag,
    dormant_fraction_tag,
    error_tag,
    frozen_fraction_tag,
    frozen_tag,
    heads_tag,
    heatmap_tag,
    histogram_tag,
    mean_activation_tag,
    mean_tag,
    nonfinite_tag,
    relative_error_tag,
    saturated_fraction_tag,
    values_tag,
)


def median_relative_error(values, errors):
    """The median of `errors / values` over neurons with a finite, non-zero
    value (a dead neuron's value is exact: it has no relative error); NaN
    when there is none."""
    values, errors = np.asarray(values, np.float64), np.asarray(errors, np.float64)
    live = np.isfinite(values) & (values != 0) & np.isfinite(errors)
    return float(np.median(errors[live] / values[live])) if live.any() else float("nan")


def _dead_table(step, reduced, dead):
    lines = [
        f"Epoch {step}: dead neurons (sensitivity exactly zero on every probe sample).",
        "",
        "| layer | to | neurons | dead | dead neuron indices | nothing trainable upstream | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for wrt, per_layer in reduced.items():
        for key, vector in per_layer.items():
            indices = np.flatnonzero(dead[wrt][key])
            shown = ", ".join(str(i) for i in indices[:32])
            if len(indices) > 32:
                shown += f", ... ({len(indices) - 32} more)"
            frozen = getattr(per_layer, "frozen", {}).get(key)
            frozen = int(frozen.sum()) if frozen is not None else 0
            finite = vector[np.isfinite(vector)]
            low, high = (f"{finite.min():.3g}", f"{finite.max():.3g}") if finite.size else ("-", "-")
            lines.append(
                f"| {key} | {wrt} | {vector.size} | {len(indices)} | {shown or '-'} | {frozen or '-'} | {low} | {high} |"
            )
    return "\n".join(lines)


_HISTOGRAM, _SCALAR, _VALUES, _IMAGE, _TEXT, _EPOCH, _ACTIVATION, _NUMBERS = (
    "histogram", "scalar", "values", "image", "text", "epoch", "activation", "numbers"
)
# The data class lets TensorBoard's data providers serve these tensors
# (`list_tensors`); without it they are stored but never listed.
_OURS = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME),
    data_class=summary_pb2.DATA_CLASS_TENSOR,
)
_METADATA = {
    _HISTOGRAM: histogram_metadata.create_summary_metadata(None, None),
    _ACTIVATION: histogram_metadata.create_summary_metadata(None, MEAN_ACTIVATION_DESCRIPTION),
    _SCALAR: scalar_metadata.create_summary_metadata(None, None),
    _VALUES: _OURS,
    _IMAGE: image_metadata.create_summary_metadata(None, pictures.HEATMAP_DESCRIPTION),
    _TEXT: text_metadata.create_summary_metadata(None, None),
    _EPOCH: _OURS,
    _NUMBERS: _OURS,
}
# Numeric kinds: (NumPy dtype, TensorProto dtype). Images and text are strings.
_NUMERIC = {
    _HISTOGRAM: (np.float64, types_pb2.DT_DOUBLE),
    _ACTIVATION: (np.float64, types_pb2.DT_DOUBLE),
    _SCALAR: (np.float32, types_pb2.DT_FLOAT),
    _VALUES: (np.float32, types_pb2.DT_FLOAT),
    _EPOCH: (np.int64, types_pb2.DT_INT64),
    _NUMBERS: (np.float64, types_pb2.DT_DOUBLE),
}


class SensitivityWriter:
    """The `sensitivity` run's writer: created on first use, flushed per epoch.

    Writes are synchronous (`events.EventFile`): when `write` returns, the
    epoch is readable by TensorBoard and `load_sensitivity`; when it raises `OSError`
    (a full disk, a read-only file system), what was written before stays
    readable and the next `write` tries again. A run directory removed while
    training (a cleanup job) is created again at the next write, and said so
    in `notices`.

    Args:
        log_dir: the directory shared with `keras.callbacks.TensorBoard`.
        num_bins: histogram buckets.
    """

    def __init__(self, log_dir, num_bins):
        self.run_dir = os.path.join(os.fspath(log_dir), RUN_NAME)
        self.num_bins = num_bins
        self.notices = []  # things the user should hear of, once each
        self._file = None
        self._history = None  # {wrt: {key: {step: vector}}}, disk included
        self._steps = None  # {step: epoch of its `fit`, or None}, disk included
        self._frozen = None  # {key: {step: mask}} of layers with frozen neurons
        self._run = None  # what the disk held when loaded (`reader.Run`), kept current
        self._logged = 0  # epochs logged by this writer
        self._last_written = self._heatmap_step = None
        self._restart = None  # a restart's step, until it is on disk

    def history(self):
        """What the run holds: `{wrt: {key: {step: vector}}}`, disk included.

        Lets a new callback (or a new `fit` with the same one) continue the
        run, and its heat maps, instead of starting them again.
        """
        self._load()
        return self._history

    def steps(self):
        """`{step: epoch}`: the steps the run holds, each with the epoch of
        its `fit` that produced it (None for runs written before it was
        recorded). Disk included."""
        self._load()
        return self._steps

    def last_step(self):
        """The largest step already in the run, or None."""
        return max(self.steps(), default=None)

    def _load(self):
        if self._history is None:
            self._run = reader.read(self.run_dir)
            self._history, self._steps, self._frozen = self._run.values, self._run.steps, self._run.frozen

    def restart(self, step):
        """Forgets the run's steps from `step` on: they are trained again.

        For a `fit` that `BackupAndRestore` resumed from a backup older than
        the last logged epoch. The steps are dropped from `history()`,
        `steps()` and the heat maps now, and for every reader with the next
        event written (`write`, or `finish`): it is preceded by a
        `SessionLog.START` at `step`, after which TensorBoard and `read_run`
        forget them too. That event also draws the heat maps, so that none
        drawn from the abandoned steps is left at a later step.

        Args:
            step: the first step trained again.
        """
        self._load()
        self._run.forget_from(step)
        if self._last_written is not None and self._last_written >= step:
            self._last_written = self._heatmap_step = None
        self._restart = step if self._restart is None else min(self._restart, step)

    def write(
        self, step, reduced, dead, errors=None, methods=None, epoch=None, heads=None, activity=None
    ):
        """Writes one epoch and flushes it.

        Args:
            step: the TensorBoard step (the epoch index, continued across
                `fit` calls).
            reduced: `{wrt: {key: (C,) per-neuron sensitivity}}`.
            dead: `{wrt: {key: (C,) bool}}`.
            errors: `{wrt: {key: (C,) standard error}}` for the `wrt`s that
                the estimator computed; None or missing `wrt`s: exact.
            methods: `{wrt: description}`, the method that produced each
                `wrt` ("exact", "estimate (32 probes)"), for the text entry.
            epoch: the epoch of the current `fit` (recorded so that a `fit`
                resumed by `BackupAndRestore` continues the same steps).
                Defaults to `step`.
            heads: `{key: number of heads}` for attention-context sites,
                written with the first step this writer writes.
            activity: a `health.NeuronActivity` of this epoch, or None.

        Raises:
            OSError: the event could not be written (it is kept in memory,
                in `history()` and the heat maps, all the same).
        """
        errors = errors or {}
        history = self.history()
        self._steps[step] = step if epoch is None else epoch
        entries = []
        for wrt, per_layer in reduced.items():
            for key, vector in per_layer.items():
                per_step = history.setdefault(wrt, {}).setdefault(key, {})
                per_step[step] = vector
                # A diverging run gives NaN or Inf: count them, bin the rest.
                finite = vector[np.isfinite(vector)]
                if finite.size:
                    entries.append((histogram_tag(wrt, key), _HISTOGRAM,
                                    histogram_buckets(finite, self.num_bins)))
                    entries.append((mean_tag(wrt, key), _SCALAR, finite.mean()))
                entries.append((dead_fraction_tag(wrt, key), _SCALAR,
                                np.mean(dead[wrt][key])))
                entries.append((nonfinite_tag(wrt, key), _SCALAR,
                                vector.size - finite.size))
                entries.append((values_tag(wrt, key), _VALUES, vector))
                frozen = getattr(per_layer, "frozen", {}).get(key)
                if frozen is not None and frozen.any():
                    self._frozen.setdefault(key, {})[step] = frozen
                    entries.append((frozen_tag(key), _VALUES, frozen.astype(np.float32)))
                    entries.append((frozen_fraction_tag(key), _SCALAR, frozen.mean()))
                error = errors.get(wrt, {}).get(key)
                if error is not None:
                    entries.append((error_tag(wrt, key), _VALUES, error))
                    relative = median_relative_error(vector, error)
                    if np.isfinite(relative):
                        entries.append((relative_error_tag(wrt, key), _SCALAR, relative))
        if activity is not None:
            entries += _activity_entries(activity, self.num_bins)
        entries.append((TEXT_TAG, _TEXT, _dead_table(step, reduced, dead).encode()))
        if methods:
            lines = [f"Epoch {step}:"] + [f"- to {w}: {m}" for w, m in methods.items()]
            entries.append((METHOD_TAG, _TEXT, "\n".join(lines).encode()))
        entries.append((EPOCH_TAG, _EPOCH, self._steps[step]))
        # After a restart too: TensorBoard's Rust data server forgets a tag's
        # steps from `step` on only when that tag is written at `step`.
        restarting = self._restart is not None
        if self._logged == 0 or restarting:
            entries += [(heads_tag(key), _EPOCH, count) for key, count in (heads or {}).items()]
            if activity is not None:
                thresholds = [activity.dormant_threshold, activity.saturation_threshold]
                entries.append((THRESHOLDS_TAG, _NUMBERS, thresholds))
        self._logged += 1
        drawn = pictures.heatmap_due(self._logged) or restarting
        if drawn:
            entries += self._heatmap_entries(step)
        self._emit(step, entries)
        if drawn:
            self._heatmap_step = step

    def finish(self):
        """Draws the heat maps at the last logged step, if not drawn yet;
        writes a `restart` that no event has carried yet.

        Raises:
            OSError: as `write`.
        """
        if self._last_written is not None and self._heatmap_step != self._last_written:
            self._emit(self._last_written, self._heatmap_entries(self._last_written))
            self._heatmap_step = self._last_written
        elif self._restart is not None:
            self._emit(self._restart, [])

    def _heatmap_entries(self, step):
        entries = []
        for wrt, per_layer in self.history().items():
            for key, per_step in per_layer.items():
                if step not in per_step:
                    continue
                shape = per_step[step].shape
                steps = pictures.heatmap_columns(
                    [s for s in per_step if s <= step and per_step[s].shape == shape]
                )
                frozen = None
                if wrt == "weights" and key in self._frozen:
                    masks = self._frozen[key]
                    frozen = [masks.get(s, np.zeros(shape, bool)) for s in steps]
                picture = pictures.heatmap([per_step[s] for s in steps], frozen)
                width, height = picture.size
                entries.append((heatmap_tag(wrt, key), _IMAGE, [
                    str(width).encode(), str(height).encode(), pictures.png(picture)
                ]))
        return entries

    def _emit(self, step, entries):
        """Writes one event of `entries` at `step` (none: no event), after
        the marks of a pending `restart`, all in one write."""
        file = self._event_file()
        events = []
        if self._restart is not None:
            start = event_pb2.Event(
                wall_time=time.time(), step=int(self._restart),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            ).SerializeToString()
            # Twice: TensorBoard's Python loader takes a run's first START as
            # the job's beginning, not a restart (plugin_event_accumulator's
            # `_CheckForRestartAndMaybePurge`), and a run may have none
            # before this one. A second START at the same step forgets
            # nothing more.
            events += [start, start]
        if entries:
            values = []
            for tag, kind, value in entries:
                value = summary_pb2.Summary.Value(tag=tag, tensor=_tensor_proto(kind, value))
                # Readers take a tag's plugin from its first value in a file
                # (as tf.summary writes it): later values need no metadata.
                if tag not in file.tags:
                    value.metadata.CopyFrom(_METADATA[kind])
                values.append(value)
            event = event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
            events.append(event.SerializeToString())
        file.append(*events)
        file.tags.update(tag for tag, _, _ in entries)
        self._restart = None
        if entries:
            self._last_written = step

    def _event_file(self):
        """The open event file; a new one if the run directory was removed."""
        if self._file is not None and (self._file.broken or self._file.removed()):
            if not self._file.broken:
                self.notices.append((
                    "removed",
                    f"The run directory {self.run_dir} (or its event file) was "
                    "removed during training. It is created again and the "
                    "following epochs are written there; what was written "
                    "before is gone (the heat maps, drawn from memory, keep it).",
                ))
            self._file.close()
            self._file = None
        if self._file is None:
            self._file = EventFile(self.run_dir)
        return self._file

    def open(self):
        """Creates the run directory and its event file now, so that a reader
        finds the run from the start of training.

        Raises:
            OSError: as `write` (the next `write` tries again).
        """
        self._event_file()

    def close(self):
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


def _activity_entries(activity, num_bins):
    """The entries of one epoch's neuron health (the layout in `tags`)."""
    entries = []
    for key, statistics in activity.items():
        means = np.asarray(statistics["mean"], np.float64)
        finite = means[np.isfinite(means)]
        if finite.size:
            entries.append((mean_activation_tag(key), _ACTIVATION, histogram_buckets(finite, num_bins)))
        status = statistics["status"]
        entries.append((dormant_fraction_tag(key), _SCALAR, np.mean(status == "dormant")))
        entries.append((saturated_fraction_tag(key), _SCALAR, np.mean(status == "saturated")))
        entries.append((activity_tag(key), _VALUES, activity_rows(statistics)))
    return entries


def _tensor_proto(kind, value):
    """A `TensorProto` built directly (about 20x faster than
    `tensor_util.make_tensor_proto`, which inspects every value)."""
    if kind in (_IMAGE, _TEXT):
        strings = [value] if isinstance(value, bytes) else list(value)
        shape = [] if isinstance(value, bytes) else [len(strings)]
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=_shape_proto(shape), string_val=strings
        )
    np_dtype, dtype = _NUMERIC[kind]
    array = np.asarray(value, np_dtype)
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=_shape_proto(array.shape), tensor_content=array.tobytes()
    )


def _shape_proto(shape):
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in shape]
    )
