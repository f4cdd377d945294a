"""Left on for a long time: asynchronous computation, full disks, removed
directories, preemption with BackupAndRestore, bounded heat maps."""

import errno
import os
import shutil
import subprocess
import warnings

import keras
import numpy as np
import oracle
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity, neuron_sensitivity
from keras_neuron_sensitivity import _background, _computation
from keras_neuron_sensitivity.tensorboard import events, pictures
from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter
from keras_neuron_sensitivity.callback import continue_steps

L = keras.layers
KEYS = ("hidden", "out")


def _data(n=64, features=6, classes=3):
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(n, features)).astype("float32"),
        rng.integers(0, classes, n),
    )


def _model():
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", name="hidden"),
        L.BatchNormalization(name="norm"),
        L.Dropout(0.3, name="drop"),
        L.Dense(3, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def _join_computations():
    """Waits for computations in flight on the callback's background thread
    (the interpreter waits for them at exit too)."""
    _background.drain()


def _raw_steps(log_dir, tag="per_neuron_to_weights/hidden"):
    """Every event's step for `tag`, duplicates included, in file order."""
    acc = EventAccumulator(os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return []
    return [event.step for event in acc.Tensors(tag)]


def _served(log_dir, tag="per_neuron_to_weights/hidden"):
    """`{step: value}` of `tag` as TensorBoard's Python loader serves it (the
    accumulator of its `--load_fast=false` multiplexer, which forgets a
    restarted job's orphaned steps), with every step asserted once."""
    acc = plugin_event_accumulator.EventAccumulator(
        os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0}
    )
    acc.Reload()
    events = acc.Tensors(tag)
    steps = [event.step for event in events]
    assert steps == sorted(set(steps)), steps
    return {event.step: tf.make_ndarray(event.tensor_proto) for event in events}


def _whole_records(run_dir):
    """Reads every event file strictly: a cut or corrupt record raises."""
    count = 0
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." in name:
            count += sum(1 for _ in tf.data.TFRecordDataset(os.path.join(run_dir, name)))
    return count


class _EpochHook(keras.callbacks.Callback):
    """Runs `action(epoch)` at each epoch end, after the computations in
    flight are written (so that what it does to the disk is deterministic)."""

    def __init__(self, action):
        super().__init__()
        self.action = action

    def on_epoch_end(self, epoch, logs=None):
        _join_computations()
        self.action(epoch)


def _fit(tmp_path, callbacks, epochs=5, seed=7):
    keras.utils.set_random_seed(seed)
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks)
    return model


def _weights_without_callback(tmp_path, epochs=5):
    return _fit(tmp_path, [], epochs=epochs).get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# --- asynchronous computation ----------------------------------------------


class _SaveWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.saved = []

    def on_epoch_end(self, epoch, logs=None):
        self.saved.append(self.model.get_weights())


@pytest.mark.parametrize("method", ["exact", "estimate"])
def test_asynchronous_values_equal_a_synchronous_computation(tmp_path, method):
    x, _ = _data()
    saver = _SaveWeights()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, method=method, num_probes=4)
    assert callback.asynchronous  # the default
    model = _fit(tmp_path, [saver, callback], epochs=3)
    logged = load_sensitivity(tmp_path)  # right after fit returns
    for epoch, weights in enumerate(saver.saved):
        model.set_weights(weights)
        for wrt in ("weights", "inputs"):
            expected = neuron_sensitivity(
                model, x[:8], wrt=wrt, method=method, num_probes=4, seed=callback.seed
            )
            for key in KEYS:
                np.testing.assert_array_equal(logged[wrt][key][epoch], expected[key])
                np.testing.assert_array_equal(
                    callback.sensitivities[epoch][wrt][key], expected[key]
                )
    if method == "exact":
        # And the last epoch against brute force (one gradient per neuron).
        fn = oracle.output_fn(model, model.get_layer("hidden").output)
        brute = oracle.brute_force(model, x[:8], fn, "weights").mean(axis=0)
        np.testing.assert_allclose(logged["weights"]["hidden"][2], brute, rtol=1e-5, atol=1e-7)


class Scale(L.Layer):
    """y = x * w; its config lacks the constructor's argument, so Keras
    cannot rebuild it (a common state of custom layers)."""

    def __init__(self, units_hint):
        super().__init__()
        self.units_hint = units_hint

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


def test_a_layer_keras_cannot_rebuild_is_computed_in_the_background(tmp_path):
    # The background computes on a snapshot of the weights: no layer is
    # copied, so a custom layer without a faithful config is no obstacle.
    x, y = _data()
    model = keras.Sequential([keras.Input((6,)), Scale(3), L.Dense(3, name="out")])
    model.compile("adam", "mse")
    saver = _SaveWeights()
    callback = NeuronSensitivityCallback(x[:8], log_dir=tmp_path, layers=["out"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.zeros((64, 3)), epochs=2, verbose=0, callbacks=[saver, callback])
    assert not [w for w in caught if "NeuronSensitivityCallback" in str(w.message)]
    assert callback._background
    model.set_weights(saver.saved[1])
    expected = neuron_sensitivity(model, x[:8], layers=["out"])
    np.testing.assert_array_equal(load_sensitivity(tmp_path)["weights"]["out"][1], expected["out"])


# --- full disks ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root: skipped where mounting is refused; the
    fault-injection tests below cover the same paths everywhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk):
    """Writes a file until the disk is full, down to the last byte."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (65536, 4096, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC


def test_disk_full_warns_once_keeps_what_was_written_and_writes_again(tmp_path, small_disk):
    log_dir = small_disk / "logs"

    def disk(epoch):
        if epoch == 1:
            _fill(small_disk)
        elif epoch == 3:
            os.remove(small_disk / "filler")

    callback = NeuronSensitivityCallback(_data()[0][:8], log_dir=log_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(tmp_path, [callback, _EpochHook(disk)], epochs=6)
    messages = [str(w.message) for w in caught if "NeuronSensitivityCallback" in str(w.message)]
    failed = [m for m in messages if "could not write" in m]
    assert len(failed) == 1 and "No space left on device" in failed[0]
    assert len([m for m in messages if "again, from step" in m]) == 1
    # Epochs 2 and 3 were computed while the disk was full: at least one of
    # them is missing (an event may fit in the file's last page); the file
    # holds only whole events, and every step it holds is exact.
    steps = _raw_steps(log_dir)
    assert steps == sorted(set(steps))
    assert {0, 1, 4, 5} <= set(steps) and not {2, 3} <= set(steps)
    assert _whole_records(log_dir / "sensitivity") > 0
    logged = load_sensitivity(log_dir)
    for step in steps:
        np.testing.assert_array_equal(
            logged["weights"]["hidden"][step], callback.sensitivities[step]["weights"]["hidden"]
        )
    assert sorted(callback.sensitivities) == list(range(6))
    _assert_same_weights(model.get_weights(), _weights_without_callback(tmp_path, epochs=6))


class _DiskFullAfter:
    """A raw file that takes `room` more bytes (the last write partly), then
    fails as a full disk does."""

    def __init__(self, raw, room):
        self.raw, self.room = raw, room

    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = bytes(data[: self.room])
        self.room -= len(part)
        return self.raw.write(part)

    def fileno(self):
        return self.raw.fileno()

    def close(self):
        self.raw.close()


def _one_epoch(width=4):
    vector = np.arange(width, dtype=np.float32)
    return {"weights": {"dense": vector}}, {"weights": {"dense": vector == 0}}


def test_a_partial_write_is_cut_back_and_the_next_write_succeeds(tmp_path):
    writer = SensitivityWriter(tmp_path, num_bins=5)
    writer.write(0, *_one_epoch())
    writer._file._file = _DiskFullAfter(writer._file._file, room=100)
    with pytest.raises(OSError, match="No space left"):
        writer.write(1, *_one_epoch())
    run_dir = tmp_path / "sensitivity"
    assert _whole_records(run_dir) == 2  # the file version and step 0
    writer._file._file.room = 10**6  # space again
    writer.write(2, *_one_epoch())
    writer.close()
    assert _whole_records(run_dir) == 3
    assert sorted(load_sensitivity(tmp_path)["weights"]["dense"]) == [0, 2]


def test_a_restart_reaches_the_disk_with_the_next_event_written(tmp_path):
    def epoch(value):
        vector = np.full(3, value, np.float32)
        return {"weights": {"dense": vector}}, {"weights": {"dense": vector == 0}}

    writer = SensitivityWriter(tmp_path, num_bins=5)
    for step in range(4):
        writer.write(step, *epoch(step + 1))
    writer.restart(2)  # steps 2 and 3 are trained again
    assert sorted(writer.history()["weights"]["dense"]) == [0, 1]
    assert sorted(writer.steps()) == [0, 1]
    writer._file._file = _DiskFullAfter(writer._file._file, room=0)
    with pytest.raises(OSError, match="No space left"):
        writer.write(2, *epoch(20))
    # Not on disk yet: the run still holds the abandoned steps there.
    assert sorted(load_sensitivity(tmp_path)["weights"]["dense"]) == [0, 1, 2, 3]
    writer._file._file.room = 10**6
    writer.write(3, *epoch(30))
    writer.close()
    logged = load_sensitivity(tmp_path)["weights"]["dense"]
    assert sorted(logged) == [0, 1, 3]  # step 2 was lost to the full disk
    np.testing.assert_array_equal(logged[3], np.full(3, 30, np.float32))
    assert sorted(writer.history()["weights"]["dense"]) == [0, 1, 2, 3]  # memory kept it

    # A restart and no epoch written after it: `finish` writes it alone.
    writer = SensitivityWriter(tmp_path, num_bins=5)
    writer.restart(1)
    writer.finish()
    writer.close()
    assert sorted(load_sensitivity(tmp_path)["weights"]["dense"]) == [0]
    assert sorted(_served(tmp_path, "per_neuron_to_weights/dense")) == [0]  # TensorBoard agrees


@pytest.mark.parametrize("on_error", ["warn", "raise"])
def test_unwritable_log_dir_follows_on_error(tmp_path, monkeypatch, on_error):
    def full(self, event):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(events.EventFile, "append", full)
    callback = NeuronSensitivityCallback(_data()[0][:8], log_dir=tmp_path, on_error=on_error)
    if on_error == "raise":
        with pytest.raises(OSError, match="No space left"):
            _fit(tmp_path, [callback], epochs=3)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, [callback], epochs=3)
    failed = [w for w in caught if "could not write" in str(w.message)]
    assert len(failed) == 1
    assert sorted(callback.sensitivities) == [0, 1, 2]


# --- the run directory removed ------------------------------------------------


def test_run_directory_removed_mid_training_is_created_again(tmp_path):
    log_dir = tmp_path / "logs"

    def cleanup(epoch):
        if epoch == 2:
            shutil.rmtree(log_dir)

    callback = NeuronSensitivityCallback(_data()[0][:8], log_dir=log_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(tmp_path, [callback, _EpochHook(cleanup)], epochs=5)
    removed = [w for w in caught if "was removed during training" in str(w.message)]
    assert len(removed) == 1
    assert _raw_steps(log_dir) == [3, 4]
    logged = load_sensitivity(log_dir)
    np.testing.assert_array_equal(
        logged["inputs"]["out"][4], callback.sensitivities[4]["inputs"]["out"]
    )
    acc = EventAccumulator(os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("heatmap_to_weights/hidden")] == [3, 4]
    _assert_same_weights(model.get_weights(), _weights_without_callback(tmp_path))


# --- preemption -----------------------------------------------------------------


class _Preempted(keras.callbacks.Callback):
    """Interrupts training at the end of epoch `at`, as Keras's own
    BackupAndRestore tests do."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("preempted")


def _preempted_then_resumed(tmp_path, order, with_callback, epochs=7):
    keras.utils.set_random_seed(7)
    x, y = _data()
    model = _model()
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")

    def ordered(**made):
        return [made[name] for name in order if made.get(name) is not None]

    def ours():
        return NeuronSensitivityCallback(x[:8], log_dir=tmp_path / "logs") if with_callback else None

    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
                  callbacks=ordered(backup=backup, ours=ours(), preempt=_Preempted(4)))
    # A new callback, as a restarted process would make.
    history = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
                        callbacks=ordered(backup=backup, ours=ours()))
    return model.get_weights(), len(history.history["loss"])


@pytest.mark.parametrize(
    "order, resumed_epochs, written",
    [
        # Epoch 4 saved and logged: resumes at 5.
        (("backup", "ours", "preempt"), 2, [0, 1, 2, 3, 4, 5, 6]),
        # Epoch 4 logged, not saved: resumes at 4, whose second logging
        # replaces the first for every reader.
        (("ours", "preempt", "backup"), 3, [0, 1, 2, 3, 4, 4, 5, 6]),
    ],
)
def test_backup_and_restore_preemption_logs_each_epoch_once(tmp_path, order, resumed_epochs, written):
    weights, ran = _preempted_then_resumed(tmp_path / "a", order, with_callback=True)
    assert ran == resumed_epochs
    assert _raw_steps(tmp_path / "a" / "logs") == written
    # Each epoch's step exactly once, step = epoch index.
    assert sorted(_served(tmp_path / "a" / "logs")) == list(range(7))
    epochs = _served(tmp_path / "a" / "logs", "fit_epoch")
    assert {step: int(epoch) for step, epoch in epochs.items()} == {s: s for s in range(7)}
    assert sorted(load_sensitivity(tmp_path / "a" / "logs")["weights"]["hidden"]) == list(range(7))
    without, _ = _preempted_then_resumed(tmp_path / "b", order, with_callback=False)
    _assert_same_weights(weights, without)


class _WeightsByEpoch(keras.callbacks.Callback):
    """The model's weights at each epoch end, by epoch index."""

    def __init__(self):
        super().__init__()
        self.saved = {}

    def on_epoch_end(self, epoch, logs=None):
        self.saved[epoch] = self.model.get_weights()


@pytest.mark.parametrize(
    "save_freq, order, rerun_from, same_callback",
    [
        # Epoch 4 logged, then preempted before the backup saved it: the
        # backup holds epoch 3 and training resumes at 4.
        ("epoch", ("ours", "preempt", "backup"), 4, False),
        # A backup every 12 batches (3 epochs of 4): the last one was taken
        # during epoch 2 (its metadata says epoch 2), so epochs 2, 3 and 4,
        # all logged, are trained again.
        (12, ("backup", "ours", "preempt"), 2, False),
        # The same, resumed in the same process with the same callback (its
        # event file still open: `fit` left without `on_train_end`).
        (12, ("backup", "ours", "preempt"), 2, True),
    ],
    ids=["backup-of-the-epoch-before", "backup-three-epochs-back", "same-callback"],
)
def test_preempted_epochs_trained_again_replace_the_abandoned_ones(
    tmp_path, save_freq, order, rerun_from, same_callback
):
    x, y = _data()
    log_dir = tmp_path / "logs"
    keras.utils.set_random_seed(7)
    model = _model()
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup", save_freq=save_freq)
    first = NeuronSensitivityCallback(x[:8], log_dir=log_dir, method="exact")
    made = {"backup": backup, "ours": first, "preempt": _Preempted(4)}
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(x, y, epochs=7, batch_size=16, verbose=0, callbacks=[made[n] for n in order])
    _join_computations()
    kept = dict(first.sensitivities)
    abandoned = {step: kept[step] for step in range(rerun_from, 5)}
    # A restarted process draws other batches: the epochs trained again differ.
    keras.utils.set_random_seed(8)
    saver = _WeightsByEpoch()
    resumed = first if same_callback else NeuronSensitivityCallback(x[:8], log_dir=log_dir, method="exact")
    model.fit(x, y, epochs=7, batch_size=16, verbose=0, callbacks=[backup, resumed, saver])
    assert sorted(saver.saved) == list(range(rerun_from, 7))

    logged = load_sensitivity(log_dir)
    for wrt in ("weights", "inputs"):
        for key in KEYS:
            assert sorted(logged[wrt][key]) == list(range(7))  # each step once
            for step in range(rerun_from, 7):
                np.testing.assert_array_equal(
                    logged[wrt][key][step], resumed.sensitivities[step][wrt][key]
                )
            for step in range(rerun_from):
                np.testing.assert_array_equal(
                    logged[wrt][key][step], kept[step][wrt][key]
                )
            if wrt == "inputs":  # (to weights, the first layer's need not change)
                for step, values in abandoned.items():
                    assert not np.array_equal(logged[wrt][key][step], values[wrt][key])
    # The rerun's values are those of the weights it ended that epoch with.
    model.set_weights(saver.saved[rerun_from])
    expected = neuron_sensitivity(model, x[:8], method="exact")
    for key in KEYS:
        np.testing.assert_array_equal(logged["weights"][key][rerun_from], expected[key])
    # What the callback keeps in memory, abandoned steps dropped.
    assert sorted(resumed.sensitivities) == list(range(0 if same_callback else rerun_from, 7))
    # On disk, the abandoned steps are still there (each write appends)...
    assert _raw_steps(log_dir) == list(range(5)) + list(range(rerun_from, 7))
    # ... and TensorBoard's Python loader forgets them, as our reader does.
    for tag in ("per_neuron_to_inputs/out", "mean_sensitivity_to_weights/hidden", "fit_epoch"):
        assert sorted(_served(log_dir, tag)) == list(range(7))
    served = _served(log_dir, "per_neuron_to_inputs/out")
    for step in range(7):
        np.testing.assert_array_equal(served[step], logged["inputs"]["out"][step])
    mean = _served(log_dir, "mean_sensitivity_to_weights/hidden")[rerun_from]
    np.testing.assert_allclose(mean, logged["weights"]["hidden"][rerun_from].mean(), rtol=1e-6)
    # The last heat map is drawn from the run as it stands, not the abandoned steps.
    drawn = _served(log_dir, "heatmap_to_weights/hidden")[6][2]
    columns = [logged["weights"]["hidden"][step] for step in range(7)]
    assert drawn == pictures.png(pictures.heatmap(columns))


def test_preemption_after_a_second_fit_keeps_its_continued_steps(tmp_path):
    x, y = _data()
    model = _model()
    log_dir = tmp_path / "logs"
    first = NeuronSensitivityCallback(x[:8], log_dir=log_dir)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[first])  # steps 0, 1, 2
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    second = NeuronSensitivityCallback(x[:8], log_dir=log_dir)
    with pytest.raises(RuntimeError):  # epochs 0, 1 of this fit: steps 3, 4
        model.fit(x, y, epochs=4, verbose=0, callbacks=[backup, second, _Preempted(1)])
    resumed = NeuronSensitivityCallback(x[:8], log_dir=log_dir)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[backup, resumed])  # epochs 2, 3
    assert _raw_steps(log_dir) == [0, 1, 2, 3, 4, 5, 6]
    assert _raw_steps(log_dir, "fit_epoch") == [0, 1, 2, 3, 4, 5, 6]
    acc = EventAccumulator(os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    epochs = [int(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("fit_epoch")]
    assert epochs == [0, 1, 2, 0, 1, 2, 3]


@pytest.mark.parametrize(
    "steps, first_epoch, offset",
    [
        ({}, 0, 0),
        ({}, 5, 0),  # initial_epoch on a new run: the epoch index
        ({0: 0, 1: 1}, 0, 2),  # a second fit from 0 continues the steps
        ({0: 0, 1: 1, 2: 0, 3: 1}, 4, 0),  # initial_epoch beyond the run
        ({0: 0, 1: 1, 2: 2, 3: 3, 4: 4}, 5, 0),  # resumed after a saved epoch
        ({0: 0, 1: 1, 2: 2, 3: 3, 4: 4}, 4, 0),  # resumed before a logged one
        ({0: 0, 1: 1, 2: 2, 3: 0, 4: 1}, 2, 3),  # resumed second fit
        ({0: None, 1: None}, 2, 0),  # a run written before epochs were recorded
    ],
)
def test_continue_steps(steps, first_epoch, offset):
    assert continue_steps(steps, first_epoch) == offset


# --- growth -----------------------------------------------------------------------


def test_heat_maps_are_drawn_on_a_schedule_with_bounded_columns():
    due = [n for n in range(1, 400) if pictures.heatmap_due(n)]
    assert due == [1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384]
    assert pictures.heatmap_columns(range(50)) == list(range(50))
    columns = pictures.heatmap_columns(range(1000))
    assert len(columns) == pictures.HEATMAP_COLUMNS
    assert columns[0] == 0 and columns[-1] == 999
    assert columns == sorted(set(columns))


def test_a_second_fit_of_the_model_reuses_its_traced_functions(tmp_path):
    x, y = _data()
    first = NeuronSensitivityCallback(x[:8], log_dir=tmp_path / "a")
    model = _fit(tmp_path, [first], epochs=2, seed=1)
    _background.drain()
    traced = {key: id(value) for key, value in _computation.cache_entries(model).items()}
    saver, second = _SaveWeights(), NeuronSensitivityCallback(x[:8], log_dir=tmp_path / "b")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[saver, second])
    # The same method objects, with their traced functions.
    assert {key: id(value) for key, value in _computation.cache_entries(model).items()} == traced
    model.set_weights(saver.saved[1])
    expected = neuron_sensitivity(model, x[:8], wrt="inputs")
    for key in KEYS:
        np.testing.assert_array_equal(second.sensitivities[1]["inputs"][key], expected[key])
