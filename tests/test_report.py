"""Reading runs back: load_sensitivity, the report command, a real TensorBoard."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity, neuron_sensitivity

L = keras.layers


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    """A 3-epoch run where `hidden` neurons 0 and 2 are dead from the start.

    Their bias is -100 and inputs are in [0, 1]: relu never opens, so their
    sensitivity is exactly zero, and SGD cannot revive them (zero gradient).
    """
    log_dir = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(size=(64, 5)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, 64)
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="hidden"), L.Dense(3, activation="softmax", name="out")])
    bias = model.get_layer("hidden").bias
    bias.assign(np.array([-100.0, 0.1, -100.0, 0.1], "float32"))
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    callback = NeuronSensitivityCallback(x[:16], log_dir=log_dir)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    return log_dir, model, x[:16], callback


def test_load_sensitivity_returns_every_logged_vector_exactly(dead_run):
    log_dir, model, probe, callback = dead_run
    loaded = load_sensitivity(log_dir)
    assert sorted(loaded) == ["inputs", "weights"]
    for wrt in ["weights", "inputs"]:
        assert sorted(loaded[wrt]) == ["hidden", "out"]
        for key in ["hidden", "out"]:
            assert list(loaded[wrt][key]) == [0, 1, 2]
            for step in [0, 1, 2]:
                np.testing.assert_array_equal(loaded[wrt][key][step], callback.sensitivities[step][wrt][key])
    final = neuron_sensitivity(model, probe)
    np.testing.assert_allclose(loaded["weights"]["hidden"][2], final["hidden"], rtol=1e-6)
    # The run directory itself is accepted too.
    assert load_sensitivity(os.path.join(log_dir, "sensitivity")).keys() == loaded.keys()


def test_load_sensitivity_as_frame(dead_run):
    pd = pytest.importorskip("pandas")
    frame = load_sensitivity(dead_run[0], as_frame=True)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [
        "wrt", "layer", "step", "neuron", "sensitivity", "frozen",
        "mean", "mean_abs", "std", "firing_rate", "tau_score", "utility", "slope", "status",
    ]
    assert not frame["frozen"].any()
    # 2 wrt x 3 steps x (4 + 3) neurons
    assert len(frame) == 2 * 3 * 7
    # Each row's health is its neuron's at that step, on both wrt rows.
    activities = dead_run[3].activities
    for row in frame.itertuples():
        logged = activities[row.step][row.layer]
        assert row.status == logged["status"][row.neuron]
        assert row.tau_score == np.float32(logged["tau_score"][row.neuron])
    assert set(frame[frame.layer == "hidden"].groupby("neuron").status.first()) == {"dead", "active"}


def test_load_sensitivity_without_activity_keeps_its_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")])
    model.compile("sgd", "mse")
    callback = NeuronSensitivityCallback(x, log_dir=tmp_path, activity=False)
    model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0, callbacks=[callback])
    run = load_sensitivity(tmp_path)
    assert run.activity == {} and run.status == {} and run.dormant_threshold is None
    assert callback.activities == {}
    frame = load_sensitivity(tmp_path, as_frame=True)
    assert list(frame.columns) == ["wrt", "layer", "step", "neuron", "sensitivity", "frozen"]
    assert isinstance(frame, pd.DataFrame)


def test_load_sensitivity_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such directory"):
        load_sensitivity(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="No sensitivity values"):
        load_sensitivity(tmp_path)


def _report(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_neuron_sensitivity", "report", *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )


def test_report_names_layers_and_dead_counts(dead_run):
    result = _report(dead_run[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Logged epochs: 3 (steps 0 to 2)"
    rows = {tuple(line.split()[:2]): line.split() for line in lines[3:]}
    assert rows[("hidden", "weights")][2:4] == ["4", "2"]  # 4 neurons, 2 dead
    assert rows[("hidden", "weights")][4] == "0"  # dead since epoch 0
    assert rows[("out", "weights")][2:4] == ["3", "0"]
    assert rows[("hidden", "inputs")][2:4] == ["4", "2"]


@pytest.fixture(scope="module")
def health_run(tmp_path_factory):
    """Two epochs of a model whose neurons are set by hand (and barely move,
    SGD at 1e-4): `relu` neuron 0 dead (bias -100), neuron 1 dormant (a
    kernel of 0.001), the rest active; `squash` (a sigmoid) neuron 0
    saturated (bias 9, far from zero), the rest active."""
    log_dir = tmp_path_factory.mktemp("health")
    x = np.random.default_rng(0).uniform(size=(64, 5)).astype("float32")
    y = np.random.default_rng(1).normal(size=(64, 2)).astype("float32")
    model = keras.Sequential([
        keras.Input((5,)),
        L.Dense(4, activation="relu", name="relu"),
        L.Dense(3, activation="sigmoid", name="squash"),
        L.Dense(2, name="out"),
    ])
    relu, squash = model.get_layer("relu"), model.get_layer("squash")
    kernel = np.full((5, 4), 0.5, "float32")
    kernel[:, 1] = 0.001
    relu.kernel.assign(kernel)
    relu.bias.assign(np.array([-100.0, 0.0, 0.1, 0.2], "float32"))
    squash.kernel.assign(np.full((4, 3), 0.1, "float32"))
    squash.bias.assign(np.array([9.0, 0.0, 0.5], "float32"))
    model.compile(keras.optimizers.SGD(1e-4), "mse")
    callback = NeuronSensitivityCallback(x[:16], log_dir=log_dir, method="exact")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    return log_dir, callback


def test_statuses_of_hand_set_neurons_are_logged_and_read_back(health_run):
    log_dir, callback = health_run
    for step in (0, 1):
        assert list(callback.activities[step]["relu"]["status"]) == ["dead", "dormant", "active", "active"]
        assert list(callback.activities[step]["squash"]["status"]) == ["saturated", "active", "active"]
    run = load_sensitivity(log_dir)
    assert (run.dormant_threshold, run.saturation_threshold) == (0.1, 0.01)
    for step, logged in callback.activities.items():
        for key, statistics in logged.items():
            assert list(run.status[key][step]) == list(statistics["status"])
            for name, vector in run.activity.items():
                # float32 on disk, exactly what was computed, rounded once.
                np.testing.assert_array_equal(vector[key][step], np.float32(statistics[name]), err_msg=name)
    acc = EventAccumulator(os.path.join(log_dir, "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    for step, event in enumerate(acc.Tensors("dormant_fraction/relu")):
        assert (event.step, tf.make_ndarray(event.tensor_proto)) == (step, np.float32(0.25))
    assert tf.make_ndarray(acc.Tensors("saturated_fraction/squash")[-1].tensor_proto) == np.float32(1 / 3)
    buckets = tf.make_ndarray(acc.Tensors("mean_activation/squash")[-1].tensor_proto)
    means = callback.activities[1]["squash"]["mean"]
    assert buckets[:, 2].sum() == 3  # one count per neuron
    np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [means.min(), means.max()], rtol=1e-6)
    metadata = acc.SummaryMetadata("mean_activation/squash")
    assert "Per neuron, not per entry" in metadata.summary_description


def test_report_lists_dormant_and_saturated_neurons_per_layer(health_run):
    result = _report(health_run[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Neuron health at the last step"))
    assert "tau-score at most 0.1" in lines[start]
    rows = {line.split()[0]: line.split() for line in lines[start + 2:]}
    # layer, neurons, dormant, saturated, dormant since, dormant neurons, saturated neurons
    assert rows["relu"][:6] == ["relu", "4", "1", "0", "0", "1"]
    assert rows["squash"][:4] == ["squash", "3", "0", "1"]
    assert rows["squash"][-1] == "0"  # saturated: neuron 0


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_report_on_missing_or_empty_directory_is_one_line(tmp_path, kind):
    target = tmp_path / "nope" if kind == "missing" else tmp_path
    result = _report(target)
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("keras-neuron-sensitivity: error:")
    assert "Traceback" not in result.stderr


def test_heatmap_and_dead_text_are_logged(dead_run):
    acc = EventAccumulator(os.path.join(dead_run[0], "sensitivity"), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("heatmap_to_weights/hidden")
    assert [e.step for e in events] == [0, 1, 2]
    width, height, png = tf.make_ndarray(events[-1].tensor_proto)
    image = tf.io.decode_png(png).numpy()
    assert image.shape[:2] == (int(height), int(width))
    # Rows 0 and 2 (dead) are magenta in every column; rows 1 and 3 are not.
    cell = np.flatnonzero((image == 255).all(axis=(1, 2)))[0]  # the white gap above the colour strip
    rows = cell // 4
    for neuron, dead in enumerate([True, False, True, False]):
        colour = image[neuron * rows + rows // 2, :, :]
        is_magenta = np.all(colour == [255, 0, 255], axis=-1)
        assert is_magenta.all() if dead else not is_magenta.any()
    text = tf.make_ndarray(acc.Tensors("dead_neurons")[-1].tensor_proto).item().decode()
    assert "| hidden | weights | 4 | 2 | 0, 2 |" in text


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_real_tensorboard_serves_our_run(dead_run):
    log_dir = dead_run[0]
    port = _free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        tags = {}
        while time.monotonic() < deadline:
            try:
                tags = _get(port, "/data/plugin/histograms/tags")
                if "sensitivity" in tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert "sensitivity" in tags, "TensorBoard did not serve the run in time"
        assert "sensitivity_to_weights/hidden" in tags["sensitivity"]
        assert "sensitivity_to_inputs/out" in tags["sensitivity"]
        scalars = _get(port, "/data/plugin/scalars/tags")["sensitivity"]
        assert {"mean_sensitivity_to_weights/hidden", "dead_fraction_to_weights/hidden"} <= set(scalars)
        assert {"dormant_fraction/hidden", "saturated_fraction/out"} <= set(scalars)
        # The per-neuron activation histogram, one count per neuron, labelled so.
        assert "mean_activation/hidden" in tags["sensitivity"]
        assert tags["sensitivity"]["mean_activation/hidden"]["description"].startswith("<p>Per neuron")
        activations = _get(port, "/data/plugin/histograms/histograms", run="sensitivity", tag="mean_activation/hidden")
        assert [step for _, step, _ in activations] == [0, 1, 2]
        for _, step, buckets in activations:
            assert sum(count for _, _, count in buckets) == 4
            means = dead_run[3].activities[step]["hidden"]["mean"]
            np.testing.assert_allclose([buckets[0][0], buckets[-1][1]], [means.min(), means.max()], rtol=1e-6)
        histograms = _get(port, "/data/plugin/histograms/histograms", run="sensitivity", tag="sensitivity_to_weights/hidden")
        assert [step for _, step, _ in histograms] == [0, 1, 2]
        expected = dead_run[3].sensitivities
        for _, step, buckets in histograms:
            counts = [count for _, _, count in buckets]
            assert sum(counts) == 4
            low, high = buckets[0][0], buckets[-1][1]
            values = expected[step]["weights"]["hidden"]
            assert low <= values.min() and values.max() <= high
        images = _get(port, "/data/plugin/images/tags")["sensitivity"]
        assert "heatmap_to_weights/hidden" in images
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("verbose", [0, 1])
def test_quiet_by_default_one_line_per_logged_epoch_when_asked(tmp_path, capsys, verbose):
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="h"), L.Dense(2, name="o")])
    model.compile("sgd", "mse")
    callback = NeuronSensitivityCallback(x[:4], log_dir=tmp_path, verbose=verbose, freq=2)
    model.fit(x, np.zeros((16, 2)), epochs=3, verbose=0, callbacks=[callback])
    lines = capsys.readouterr().out.splitlines()
    if verbose:
        assert [line.split(":")[0] for line in lines] == ["Epoch 0", "Epoch 2"]
        assert "to weights (exact): mean" in lines[0] and "/6 dead" in lines[0]
    else:
        assert lines == []
