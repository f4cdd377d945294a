"""The Neurons dashboard in a real TensorBoard (the heat-map images: test_pictures.py).

The runs are written with `SensitivityWriter` itself, from values set here:
twelve logged epochs (more than the ten TensorBoard keeps of a third-party
plugin's tensors by default), dead neurons, NaN and Inf, values too small for
float16, and three epochs whose values to weights came from the estimator
(with standard errors). A second log directory holds a model with nested
keys (`backbone/block_1/self_attention/heads`, as a keras_hub block's
sites), neurons with nothing trainable upstream, and attention heads. A real
`tensorboard` serves them on loopback, with its Rust data server (the
default) and with the Python one; the routes must give back exactly what was
written, decoded here from the layout the plugin documents. A headless
Chromium then loads the tab and is driven as a person would: hover, sort,
click, open a group, filter.
"""

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from keras_neuron_sensitivity.engine.summary import Sensitivities
from keras_neuron_sensitivity.health import STATUSES, NeuronActivity
from keras_neuron_sensitivity.tensorboard.tags import ACTIVITY_ROWS, activity_rows
from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter

PLUGIN = "keras_neuron_sensitivity"
STEPS = list(range(12))
ESTIMATED = {9, 10, 11}  # steps whose values to weights are estimates
ESTIMATE_TEXT = "estimate (8 probes)"
# In the model's order, which is not alphabetical; a nested model's key has a slash.
LAYERS = {"zeta_dense": 6, "alpha_conv": 4, "block/inner": 3}
RUNS = {"first": list(LAYERS), "second": ["zeta_dense", "alpha_conv"]}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def _values(run, seed):
    """`{wrt: {key: (len(STEPS), C) float32}}` with dead, NaN and Inf cells."""
    rng = np.random.default_rng(seed)
    values = {}
    for wrt in ("weights", "inputs"):
        values[wrt] = {}
        for key in RUNS[run]:
            matrix = (10 ** rng.uniform(-3, 1, (len(STEPS), LAYERS[key]))).astype(np.float32)
            values[wrt][key] = matrix
        values[wrt]["zeta_dense"][4:, 1] = 0  # dies at epoch 4 and stays dead
        values[wrt]["zeta_dense"][2:6, 4] = 0  # dead for a while, then back
        values[wrt]["zeta_dense"][:, 5] = 0  # dead from the start
        values[wrt]["alpha_conv"][7, 2] = np.nan
        values[wrt]["alpha_conv"][8, 3] = np.inf
        # Positive, but float16 would make the first 0 (a false "dead") and
        # the second 6e-8, a subnormal that kept one digit.
        values[wrt]["zeta_dense"][3, 0] = 1e-30
        values[wrt]["zeta_dense"][3, 2] = 3e-8
    return values


def _errors(values, seed):
    rng = np.random.default_rng(seed)
    return {
        key: (matrix * rng.uniform(0.05, 0.2, matrix.shape)).astype(np.float32)
        for key, matrix in values["weights"].items()
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Two runs side by side, `{run}/sensitivity`, as `dead_relus.py` lays them out."""
    log_dir = tmp_path_factory.mktemp("dashboard")
    written = {}
    for seed, run in enumerate(RUNS):
        values, errors = _values(run, seed), _errors(_values(run, seed), seed + 10)
        writer = SensitivityWriter(log_dir / run, num_bins=5)
        for step in STEPS:
            reduced = {w: {k: m[step] for k, m in per_key.items()} for w, per_key in values.items()}
            dead = {w: {k: v == 0 for k, v in per_key.items()} for w, per_key in reduced.items()}
            estimated = step in ESTIMATED
            writer.write(
                step, reduced, dead,
                errors={"weights": {k: e[step] for k, e in errors.items()}} if estimated else None,
                methods={"weights": ESTIMATE_TEXT if estimated else "exact", "inputs": "exact"},
            )
        writer.close()
        written[f"{run}/sensitivity"] = {"values": values, "errors": errors}
    return log_dir, written


# A model with nested keys, as the package logs a keras_hub block's sites:
# the block's output, its attention (query, and the heads: 2 x 4 channels),
# its feed-forward units. In the model's order, the embedding first.
NESTED_STEPS = list(range(5))
NESTED_HEADS = 2
BLOCK_SITES = ["", "self_attention", "self_attention/query", "self_attention/heads", "ffn"]
NESTED_KEYS = ["backbone/embedding"] + [
    "/".join(filter(None, ["backbone", f"block_{b}", site])) for b in range(3) for site in BLOCK_SITES
] + ["head"]
NESTED_WIDTH = {key: 12 if key.endswith("/ffn") else 8 for key in NESTED_KEYS}
# Nothing trainable upstream (sensitivity to weights exactly zero, not dead):
# block 0's query entirely (before the first trainable layer), neurons 0-3 of
# block 1's feed-forward units; its neuron 5 is dead from epoch 2.
FROZEN = {"backbone/block_0/self_attention/query": slice(None), "backbone/block_1/ffn": slice(0, 4)}
FFN = "backbone/block_1/ffn"
HEADS_KEY = "backbone/block_1/self_attention/heads"


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    """`(log_dir, {"values": {wrt: {key: (S, C)}}, "frozen": {key: (C,) bool}})`."""
    log_dir = tmp_path_factory.mktemp("nested")
    rng = np.random.default_rng(7)
    values, frozen = {}, {}
    for wrt in ("weights", "inputs"):
        values[wrt] = {
            key: (10 ** rng.uniform(-3, 1, (len(NESTED_STEPS), NESTED_WIDTH[key]))).astype(np.float32)
            for key in NESTED_KEYS
        }
    for key, neurons in FROZEN.items():
        frozen[key] = np.zeros(NESTED_WIDTH[key], bool)
        frozen[key][neurons] = True
        values["weights"][key][:, frozen[key]] = 0
    values["weights"][FFN][2:, 5] = 0
    masks = {k: frozen.get(k, np.zeros(NESTED_WIDTH[k], bool)) for k in NESTED_KEYS}
    writer = SensitivityWriter(log_dir / "model", num_bins=5)
    for step in NESTED_STEPS:
        reduced = {
            wrt: Sensitivities(
                {k: m[step] for k, m in per_key.items()}, "exact", None,
                frozen=masks if wrt == "weights" else None,
            )
            for wrt, per_key in values.items()
        }
        dead = {w: s.dead() for w, s in reduced.items()}
        heads = {k: NESTED_HEADS for k in NESTED_KEYS if k.endswith("/heads")}
        writer.write(step, reduced, dead, methods={w: "exact" for w in values}, heads=heads)
    writer.close()
    return log_dir, {"values": values, "frozen": frozen}


# A run with neuron health, written from values set here: per step, each
# neuron's statistics and status. `dense` neuron 0 is saturated from step 2
# (its sensitivity is 0 from step 4: a capped unit, not dead), 2 dormant from
# step 3, 3 dormant at steps 1 and 2 only, 4 dormant from step 1, 5 dead
# throughout (zero sensitivity, dead status); `conv` is all active.
HEALTH_STEPS = list(range(6))
HEALTH_LAYERS = {"dense": 6, "conv": 4}
HEALTH_METRICS = ["weights", "inputs", "mean_abs", "tau_score", "firing_rate", "utility"]
DORMANT, SATURATED = [245, 150, 40], [215, 40, 40]


def _health_status():
    status = {key: np.full((len(HEALTH_STEPS), width), "active", dtype=object) for key, width in HEALTH_LAYERS.items()}
    dense = status["dense"]
    dense[2:, 0] = "saturated"
    dense[3:, 2] = "dormant"
    dense[1:3, 3] = "dormant"
    dense[1:, 4] = "dormant"
    dense[:, 5] = "dead"
    return {key: value.astype(str) for key, value in status.items()}


@pytest.fixture(scope="module")
def health_logged(tmp_path_factory):
    """`(log_dir, {"values": {wrt: {key: (S, C)}}, "activity": {key: {stat: (S, C)}}, "status": ...})`."""
    log_dir = tmp_path_factory.mktemp("health")
    rng = np.random.default_rng(5)
    status = _health_status()
    values = {
        wrt: {key: (10 ** rng.uniform(-2, 1, (len(HEALTH_STEPS), width))).astype(np.float32)
              for key, width in HEALTH_LAYERS.items()}
        for wrt in ("weights", "inputs")
    }
    for wrt in values:
        values[wrt]["dense"][:, 5] = 0  # dead
        values[wrt]["dense"][4:, 0] = 0  # saturated, capped: zero sensitivity
    activity = {}
    for key, width in HEALTH_LAYERS.items():
        shape = (len(HEALTH_STEPS), width)
        stats = {
            "mean": rng.normal(size=shape), "mean_abs": 10 ** rng.uniform(-1, 1, shape),
            "std": rng.uniform(0.1, 1, shape), "firing_rate": rng.uniform(0.05, 1, shape),
            "tau_score": rng.uniform(0.3, 2, shape), "utility": 10 ** rng.uniform(-1, 1, shape),
            "slope": rng.uniform(0.2, 1, shape),
        }
        dormant, dead = status[key] == "dormant", status[key] == "dead"
        stats["tau_score"][dormant] = rng.uniform(0.01, 0.09, dormant.sum())
        for name in ("mean", "mean_abs", "tau_score", "firing_rate", "utility"):
            stats[name][dead] = 0.0
        stats["slope"][dead] = np.nan
        stats["slope"][status[key] == "saturated"] = 0.001
        activity[key] = {name: value.astype(np.float32) for name, value in stats.items()}
    writer = SensitivityWriter(log_dir / "model", num_bins=5)
    for step in HEALTH_STEPS:
        reduced = {w: {k: m[step] for k, m in per_key.items()} for w, per_key in values.items()}
        dead = {w: {k: v == 0 for k, v in per_key.items()} for w, per_key in reduced.items()}
        health = NeuronActivity(
            {key: {**{n: v[step] for n, v in stats.items()}, "status": status[key][step]}
             for key, stats in activity.items()},
            0.1, 0.01,
        )
        writer.write(step, reduced, dead, methods={w: "exact" for w in values}, activity=health)
    writer.close()
    return log_dir, {"values": values, "activity": activity, "status": status}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def _json(base, path, **query):
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    return json.loads(_get(url)[2])


def _status(url):
    try:
        return _get(url)[0]
    except urllib.error.HTTPError as error:
        return error.code


@contextlib.contextmanager
def _tensorboards(log_dirs, loaded):
    """`start(load_fast, logdir=...)`: the base URL of a real TensorBoard on
    `log_dirs[logdir]`, started once per `--load_fast` value ("auto" is the
    Rust data server here, "false" the Python multiplexer) and logdir, and
    returned once `loaded(base, logdir)` is true; all stopped on exit."""
    servers = {}

    def start(load_fast, logdir="flat"):
        if (load_fast, logdir) in servers:
            return servers[load_fast, logdir][1]
        port = _free_port()
        command = [
            os.path.join(os.path.dirname(sys.executable), "tensorboard"),
            "--logdir", str(log_dirs[logdir]), "--host", "127.0.0.1", "--port", str(port),
            "--load_fast", load_fast,
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        servers[load_fast, logdir] = (process, base)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if loaded(base, logdir):
                    return base
            except (OSError, KeyError, ValueError):
                pass
            assert process.poll() is None, f"tensorboard exited: {command}"
            time.sleep(0.5)
        raise AssertionError(f"TensorBoard did not serve the runs within 90 s: {command}")

    try:
        yield start
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:  # it lingers on its reload thread
                process.kill()
                process.wait(timeout=30)


def _all_steps(base, layers):
    """Whether each `(run, key, steps)` serves that many steps."""
    return all(
        len(_json(base, f"/data/plugin/{PLUGIN}/layer", run=run, layer=key)["wrt"]["inputs"]["steps"]) == steps
        for run, key, steps in layers
    )


@pytest.fixture(scope="module")
def tensorboard(logged, nested, health_logged):
    """`tensorboard(load_fast, logdir="flat")`: the base URL of a real
    TensorBoard on the `logged` ("flat") or `nested` runs, stopped after the
    module."""
    # Loaded when every run's last layer has every step.
    wanted = {
        "flat": [(f"{run}/sensitivity", "zeta_dense", len(STEPS)) for run in RUNS],
        "nested": [("model/sensitivity", NESTED_KEYS[-1], len(NESTED_STEPS))],
        "health": [("model/sensitivity", "conv", len(HEALTH_STEPS))],
    }
    with _tensorboards({"flat": logged[0], "nested": nested[0], "health": health_logged[0]},
                       lambda base, logdir: _all_steps(base, wanted[logdir])) as start:
        yield start


INGESTERS = [pytest.param("auto", id="rust-data-server"), pytest.param("false", id="python-multiplexer")]


@pytest.mark.parametrize("load_fast", INGESTERS)
def test_plugin_is_listed_enabled_and_routes_give_back_what_was_written(tensorboard, logged, load_fast):
    base = tensorboard(load_fast)
    listing = _json(base, "/data/plugins_listing")[PLUGIN]
    assert listing["enabled"] is True
    assert listing["tab_name"] == "Neurons"
    assert listing["loading_mechanism"] == {
        "type": "IFRAME", "module_path": f"/data/plugin/{PLUGIN}/static/index.js",
    }

    runs = _json(base, f"/data/plugin/{PLUGIN}/runs")["runs"]
    assert [r["run"] for r in runs] == ["first/sensitivity", "second/sensitivity"]
    for entry in runs:
        expected = RUNS[entry["run"].split("/")[0]]
        # Every layer, in the model's order, each to weights and to inputs.
        assert [layer["key"] for layer in entry["layers"]] == expected
        assert all(layer["wrt"] == ["weights", "inputs"] for layer in entry["layers"])

    for run, truth in logged[1].items():
        for key in RUNS[run.split("/")[0]]:
            layer = _json(base, f"/data/plugin/{PLUGIN}/layer", run=run, layer=key)
            assert (layer["run"], layer["layer"]) == (run, key)
            for wrt in ("weights", "inputs"):
                served = layer["wrt"][wrt]
                assert served["steps"] == STEPS  # all twelve, not a sample of ten
                values = np.array([[float(v) for v in row] for row in served["values"]], np.float32)
                np.testing.assert_array_equal(values, truth["values"][wrt][key])  # NaN == NaN here
                for step, errors, method in zip(STEPS, served["errors"], served["methods"]):
                    if wrt == "weights" and step in ESTIMATED:
                        # The logged text where TensorBoard kept that step's
                        # `method` entry (it samples text; the last is kept).
                        assert method == ESTIMATE_TEXT if step == STEPS[-1] else method in (ESTIMATE_TEXT, "estimate")
                        np.testing.assert_array_equal(np.float32(errors), truth["errors"][key][step])
                    else:
                        assert (errors, method) == (None, "exact")
    nonfinite = _json(base, f"/data/plugin/{PLUGIN}/layer", run="first/sensitivity", layer="alpha_conv")
    assert nonfinite["wrt"]["weights"]["values"][7][2] == "NaN"
    assert nonfinite["wrt"]["weights"]["values"][8][3] == "Infinity"


def test_routes_refuse_bad_requests_and_serve_the_front_end(tensorboard):
    base = tensorboard("auto") + f"/data/plugin/{PLUGIN}"
    for route in ("layer", "matrix"):
        assert _status(f"{base}/{route}?run=first/sensitivity&layer=nope") == 404
        assert _status(f"{base}/{route}?run=first/sensitivity") == 400
        for bad in ("0", "-3", "x", "2.5"):
            assert _status(f"{base}/{route}?run=first/sensitivity&layer=zeta_dense&max_steps={bad}") == 400, bad
    status, content_type, body = _get(f"{base}/static/index.js")
    assert status == 200 and content_type.startswith("text/javascript")
    assert b"export async function render" in body
    for path in ["static/../plugin.py", "static/%2e%2e/plugin.py", "static/", "static/nope.js"]:
        assert _status(f"{base}/{path}") == 404, path
    entry = _get(tensorboard("auto") + f"/data/plugin_entry.html?name={PLUGIN}")[2].decode()
    assert "static/index.js" in entry


# --- A preempted fit, trained again from an older backup ----------------------

PREEMPTED_AT = 2  # logged, then preempted before BackupAndRestore saved it
PREEMPTED_EPOCHS = 4


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """A real `fit` with the callback, preempted at the end of epoch 2 after
    the callback logged it and before `BackupAndRestore` saved it, then
    resumed (from epoch 2, with other batches: a new process's seed):
    `(log_dir, abandoned, rerun)`, each `{step: {wrt: {key: (C,)}}}`."""
    import keras

    from keras_neuron_sensitivity import NeuronSensitivityCallback
    from keras_neuron_sensitivity._background import drain

    class Preempt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == PREEMPTED_AT:
                raise RuntimeError("preempted")

    root = tmp_path_factory.mktemp("preempted")
    log_dir = root / "logs"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype("float32"), rng.integers(0, 3, 32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(6, activation="relu", name="hidden"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    backup = keras.callbacks.BackupAndRestore(root / "backup")
    first = NeuronSensitivityCallback(x[:8], log_dir=log_dir, method="exact")
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(x, y, epochs=PREEMPTED_EPOCHS, batch_size=8, verbose=0,
                  callbacks=[first, Preempt(), backup])
    drain()
    keras.utils.set_random_seed(2)
    resumed = NeuronSensitivityCallback(x[:8], log_dir=log_dir, method="exact")
    model.fit(x, y, epochs=PREEMPTED_EPOCHS, batch_size=8, verbose=0, callbacks=[backup, resumed])
    return log_dir, first.sensitivities, resumed.sensitivities


@pytest.mark.parametrize("load_fast", INGESTERS)
def test_tensorboard_serves_the_epoch_trained_again_not_the_abandoned_one(preempted, load_fast):
    log_dir, abandoned, rerun = preempted
    steps = list(range(PREEMPTED_EPOCHS))
    run = "sensitivity"

    def loaded(base, logdir):
        layer = _json(base, f"/data/plugin/{PLUGIN}/layer", run=run, layer="hidden")
        # The last step is written after the step trained again.
        return layer["wrt"]["weights"]["steps"][-1] == steps[-1]

    with _tensorboards({"preempted": log_dir}, loaded) as start:
        base = start(load_fast, "preempted")
        for key in ("hidden", "out"):
            layer = _json(base, f"/data/plugin/{PLUGIN}/layer", run=run, layer=key)
            for wrt in ("inputs", "weights"):
                served = layer["wrt"][wrt]
                assert served["steps"] == steps  # each once
                values = np.array([[float(v) for v in row] for row in served["values"]], np.float32)
                if wrt == "inputs":  # (to weights, the first layer's may not change)
                    assert not np.array_equal(values[PREEMPTED_AT], abandoned[PREEMPTED_AT][wrt][key])
                for step in steps:
                    truth = (rerun if step >= PREEMPTED_AT else abandoned)[step][wrt][key]
                    np.testing.assert_array_equal(values[step], truth)
        # TensorBoard's own dashboards too: each step once, the rerun's values.
        tag = "mean_sensitivity_to_weights/hidden"
        scalars = _json(base, "/data/plugin/scalars/scalars", run=run, tag=tag)
        assert [step for _, step, _ in scalars] == steps
        np.testing.assert_allclose(
            scalars[PREEMPTED_AT][2], rerun[PREEMPTED_AT]["weights"]["hidden"].mean(), rtol=1e-6
        )
        histograms = _json(base, "/data/plugin/histograms/histograms", run=run,
                           tag="sensitivity_to_inputs/out")
        assert [step for _, step, _ in histograms] == steps
        buckets = np.array(histograms[PREEMPTED_AT][2])
        vector = rerun[PREEMPTED_AT]["inputs"]["out"]
        np.testing.assert_allclose(buckets[0][0], vector.min(), rtol=1e-6)
        np.testing.assert_allclose(buckets[-1][1], vector.max(), rtol=1e-6)


def _decode(body):
    """The `matrix` route's answer, read by the layout plugin.py documents:
    `(header, {wrt: {"values": {step: (C,)}, "errors": {step: (C,)},
    "frozen": {step: (C,) uint8}}})`."""
    (length,) = struct.unpack("<I", body[:4])
    assert (4 + length) % 4 == 0  # the body starts aligned for a Float32Array
    header = json.loads(body[4:4 + length])
    data = body[4 + length:]
    decoded = {}
    for wrt, entry in header["wrt"].items():
        steps, neurons = entry["steps"], entry["neurons"]

        def read(offset, columns, dtype):
            vectors = {}
            for col in columns:
                vectors[steps[col]] = np.frombuffer(data, dtype, neurons[col], offset)
                offset += neurons[col] * np.dtype(dtype).itemsize
            return vectors

        decoded[wrt] = {
            "values": read(entry["values"], range(len(steps)), "<f4"),
            "errors": read(entry["errors"]["offset"], entry["errors"]["columns"], "<f4") if entry["errors"] else {},
            "frozen": read(entry["frozen"]["offset"], entry["frozen"]["columns"], "u1") if entry["frozen"] else {},
        }
    activity = header.get("activity")
    if activity:  # per step, len(fields) rows of C float32
        offset, rows = activity["offset"], {}
        for step, neurons in zip(activity["steps"], activity["neurons"]):
            size = len(activity["fields"]) * neurons
            rows[step] = np.frombuffer(data, "<f4", size, offset).reshape(len(activity["fields"]), neurons)
            offset += 4 * size
        decoded["activity"] = rows
    return header, decoded


def _matrix(base, **query):
    """`(header, decoded, body)` of the `matrix` route."""
    status, content_type, body = _get(f"{base}/data/plugin/{PLUGIN}/matrix?" + urllib.parse.urlencode(query))
    assert status == 200 and content_type == "application/octet-stream"
    return (*_decode(body), body)


@pytest.mark.parametrize("load_fast", INGESTERS)
def test_matrix_route_decodes_to_exactly_the_float32_written(tensorboard, logged, load_fast):
    base = tensorboard(load_fast)
    for run, truth in logged[1].items():
        for key in RUNS[run.split("/")[0]]:
            header, served, body = _matrix(base, run=run, layer=key)
            assert (header["run"], header["layer"], header["heads"]) == (run, key, None)
            floats = 0
            for wrt in ("weights", "inputs"):
                entry, got = header["wrt"][wrt], served[wrt]
                assert entry["steps"] == STEPS and entry["logged_steps"] == len(STEPS)
                written = truth["values"][wrt][key]
                # Bit for bit: NaN, Inf, zeros and the tiny values as written.
                assert np.stack([got["values"][s] for s in STEPS]).tobytes() == written.tobytes()
                estimated = [s for s in STEPS if wrt == "weights" and s in ESTIMATED]
                assert sorted(got["errors"]) == estimated
                for step in estimated:
                    assert got["errors"][step].tobytes() == truth["errors"][key][step].tobytes()
                for step, method in zip(STEPS, entry["methods"]):
                    if step in estimated:  # the logged text where TensorBoard kept it
                        assert method == ESTIMATE_TEXT if step == STEPS[-1] else method in (ESTIMATE_TEXT, "estimate")
                    else:
                        assert method == "exact"
                assert entry["frozen"] is None and got["frozen"] == {}
                floats += written.size + len(estimated) * written.shape[1]
            # Compact: four bytes a value after the header.
            (length,) = struct.unpack("<I", body[:4])
            assert len(body) == 4 + length + 4 * floats
    # Positive stays positive: float16 would have served these as 0 and 6e-8.
    _, served, _ = _matrix(base, run="first/sensitivity", layer="zeta_dense")
    assert served["weights"]["values"][3][0] == np.float32(1e-30) and np.float16(1e-30) == 0
    assert served["weights"]["values"][3][2] == np.float32(3e-8) != np.float16(3e-8)


@pytest.mark.parametrize("max_steps", [1, 2, 5, 11, 12, 50])
def test_max_steps_keeps_the_first_and_last_steps_evenly_spread(tensorboard, logged, max_steps):
    base = tensorboard("auto")
    truth = logged[1]["first/sensitivity"]
    header, served, _ = _matrix(base, run="first/sensitivity", layer="zeta_dense", max_steps=max_steps)
    as_json = _json(base, f"/data/plugin/{PLUGIN}/layer", run="first/sensitivity", layer="zeta_dense",
                    max_steps=max_steps)
    for wrt in ("weights", "inputs"):
        steps = header["wrt"][wrt]["steps"]
        assert as_json["wrt"][wrt]["steps"] == steps
        assert header["wrt"][wrt]["logged_steps"] == as_json["wrt"][wrt]["logged_steps"] == len(STEPS)
        if max_steps >= len(STEPS):
            assert steps == STEPS
        elif max_steps == 1:
            assert steps == STEPS[-1:]
        else:
            assert len(steps) == max_steps and (steps[0], steps[-1]) == (STEPS[0], STEPS[-1])
            gaps = np.diff(steps)
            assert gaps.max() - gaps.min() <= 1, steps  # evenly spread
        for step in steps:
            assert served[wrt]["values"][step].tobytes() == truth["values"][wrt]["zeta_dense"][step].tobytes()
        assert sorted(served[wrt]["errors"]) == [s for s in steps if wrt == "weights" and s in ESTIMATED]


@pytest.mark.parametrize("load_fast", INGESTERS)
def test_frozen_neurons_and_heads_are_served(tensorboard, nested, load_fast):
    base = tensorboard(load_fast, "nested")
    (run,) = _json(base, f"/data/plugin/{PLUGIN}/runs")["runs"]
    assert [layer["key"] for layer in run["layers"]] == NESTED_KEYS  # the model's order
    truth = nested[1]
    for key in NESTED_KEYS:
        header, served, _ = _matrix(base, run="model/sensitivity", layer=key)
        as_json = _json(base, f"/data/plugin/{PLUGIN}/layer", run="model/sensitivity", layer=key)
        assert header["heads"] == as_json["heads"] == (NESTED_HEADS if key.endswith("/heads") else None)
        for wrt in ("weights", "inputs"):
            written = truth["values"][wrt][key]
            assert np.stack([served[wrt]["values"][s] for s in NESTED_STEPS]).tobytes() == written.tobytes()
            frozen = served[wrt]["frozen"]
            if wrt == "weights" and key in truth["frozen"]:
                mask = truth["frozen"][key]
                assert sorted(frozen) == NESTED_STEPS
                for step in NESTED_STEPS:
                    np.testing.assert_array_equal(frozen[step], mask.astype(np.uint8))
                assert as_json["wrt"][wrt]["frozen"] == [mask.astype(int).tolist()] * len(NESTED_STEPS)
            else:  # to the inputs, and layers with none: no mask at all
                assert header["wrt"][wrt]["frozen"] is None
                assert as_json["wrt"][wrt]["frozen"] == [None] * len(NESTED_STEPS)


@pytest.mark.parametrize("load_fast", INGESTERS)
def test_neuron_health_is_served_exactly_as_written(tensorboard, health_logged, load_fast):
    base = tensorboard(load_fast, "health")
    (run,) = _json(base, f"/data/plugin/{PLUGIN}/runs")["runs"]
    assert run["layers"] == [{"key": k, "wrt": ["weights", "inputs"], "activity": True} for k in HEALTH_LAYERS]
    truth = health_logged[1]
    for key in HEALTH_LAYERS:
        header, served, body = _matrix(base, run="model/sensitivity", layer=key)
        entry = header["activity"]
        assert entry["steps"] == HEALTH_STEPS and entry["logged_steps"] == len(HEALTH_STEPS)
        assert entry["fields"] == list(ACTIVITY_ROWS) and entry["thresholds"] == [0.1, 0.01]
        for step in HEALTH_STEPS:
            written = activity_rows(
                {**{n: v[step] for n, v in truth["activity"][key].items()}, "status": truth["status"][key][step]}
            )
            assert served["activity"][step].tobytes() == written.tobytes()  # NaN slopes included
            codes = served["activity"][step][-1].astype(int)
            assert [STATUSES[c] for c in codes] == list(truth["status"][key][step])
        as_json = _json(base, f"/data/plugin/{PLUGIN}/layer", run="model/sensitivity", layer=key)["activity"]
        assert as_json["steps"] == HEALTH_STEPS and as_json["fields"] == list(ACTIVITY_ROWS)
        tau = ACTIVITY_ROWS.index("tau_score")
        np.testing.assert_array_equal(
            np.float32([step[tau] for step in as_json["values"]]), truth["activity"][key]["tau_score"]
        )
        # Compact: four bytes a value, sensitivities and activity alike.
        (length,) = struct.unpack("<I", body[:4])
        floats = 2 * len(HEALTH_STEPS) * HEALTH_LAYERS[key] * (1 + len(ACTIVITY_ROWS) / 2)
        assert len(body) == 4 + length + 4 * floats
    # A run without neuron health says so.
    header, _, _ = _matrix(tensorboard(load_fast), run="first/sensitivity", layer="zeta_dense")
    assert header["activity"] is None


# --- The front-end in headless Chromium --------------------------------------

def _expected_order(matrix, how, frozen=None):
    """Rows of the matrix view, computed here independently of the page's
    JavaScript; `frozen`: (C,) neurons with nothing trainable upstream, which
    are zero but not dead."""
    first, last = matrix[0].astype(np.float64), matrix[-1].astype(np.float64)
    dead = (matrix == 0) & ~(np.zeros(matrix.shape[1], bool) if frozen is None else frozen)
    neurons = range(matrix.shape[1])
    if how == "last":  # largest first, non-finite last
        key = [last[n] if np.isfinite(last[n]) else -np.inf for n in neurons]
    elif how == "death":  # dead at the end: earliest final dead streak first
        key = []
        for n in neurons:
            column = dead[:, n]
            if not column[-1]:
                key.append(-np.inf)
            else:
                alive = np.flatnonzero(~column)
                key.append(-(alive[-1] + 1 if alive.size else 0))
    else:  # change: |log10(last / first)|, dying or reviving largest
        key = []
        for n in neurons:
            a, b = first[n], last[n]
            if not (np.isfinite(a) and np.isfinite(b)):
                key.append(-np.inf)
            elif a == 0 and b == 0:
                key.append(0.0)
            elif a == 0 or b == 0:
                key.append(np.inf)
            else:
                key.append(abs(np.log10(b) - np.log10(a)))
    return sorted(neurons, key=lambda n: (-key[n], n))


def _cell_centre(canvas, row, col):
    """Where a cell is: rows come in groups (an attention site's heads) with
    a gap between two groups, as the canvas's data attributes say."""
    data = {k: float(v) for k, v in canvas.evaluate("c => ({...c.dataset})").items() if k != "order"}
    x = data["x0"] + (col + 0.5) * data["cellWidth"]
    y = data["top"] + (row + 0.5) * data["cellHeight"] + (row // data["groupSize"]) * data["gap"]
    return {"x": x, "y": y}


def _pixel(canvas, position):
    """The canvas's `[r, g, b, a]` at a CSS position (device pixel ratio 1)."""
    return canvas.evaluate(
        "(c, p) => Array.from(c.getContext('2d').getImageData(Math.floor(p.x), Math.floor(p.y), 1, 1).data)",
        position,
    )


def _browser(driver):
    return driver.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


def _order(canvas):
    return [int(n) for n in canvas.get_attribute("data-order").split(",")]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_tab_in_headless_chromium(tensorboard, logged):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    base = tensorboard("auto")
    truth = logged[1]["first/sensitivity"]
    with sync_api.sync_playwright() as driver:
        browser = _browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # TensorBoard puts a plugin in an iframe: its own entry page is the tab.
            page.goto(f"{base}/data/plugin_entry.html?name={PLUGIN}")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            assert errors == []

            # A matrix per layer, in the model's order, as before groups: the
            # lone nested layer `block/inner` is a layer, not a group of one.
            assert page.locator("section.group").count() == 0
            assert page.locator("#filter").is_hidden()
            sections = page.locator("section.layer")
            assert [sections.nth(i).get_attribute("data-layer") for i in range(sections.count())] == list(LAYERS)
            for key in LAYERS:
                panels = page.locator(f'section.layer[data-layer="{key}"] .panel')
                assert panels.count() == sum(key in layers for layers in RUNS.values())
                assert page.locator(f'section.layer[data-layer="{key}"] canvas.matrix').count() == panels.count()

            def matrix(key, run="first/sensitivity"):
                return page.locator(f'section.layer[data-layer="{key}"] .panel[data-run="{run}"] canvas.matrix')

            tooltip = page.locator("#tooltip")

            def hover(key, row, col):
                canvas = matrix(key)
                canvas.hover(position=_cell_centre(canvas, row, col))
                tooltip.wait_for(state="visible")
                return tooltip.evaluate("t => ({...t.dataset})"), tooltip.inner_text()

            # Hover: layer, neuron, epoch, value and method of the cell, in the DOM.
            data, text = hover("zeta_dense", 3, 2)
            assert (data["layer"], data["neuron"], data["epoch"], data["method"]) == ("zeta_dense", "3", "2", "exact")
            assert np.float32(float(data["value"])) == truth["values"]["weights"]["zeta_dense"][2, 3]
            assert "zeta_dense, neuron 3, epoch 2, value " in text and "exact" in text
            data, text = hover("zeta_dense", 0, 10)  # an estimate: value ± its standard error
            assert data["method"] == ESTIMATE_TEXT
            assert np.float32(float(data["value"])) == truth["values"]["weights"]["zeta_dense"][10, 0]
            assert np.float32(float(data["error"])) == truth["errors"]["zeta_dense"][10, 0]
            assert f"{ESTIMATE_TEXT} ± " in text
            data, text = hover("zeta_dense", 5, 0)
            assert data["value"] == "0" and "(dead)" in text
            data, text = hover("alpha_conv", 2, 7)
            assert data["value"] == "NaN" and "value NaN" in text

            # Sorting: the rows' neurons, against an order computed here.
            assert _order(matrix("zeta_dense")) == list(range(LAYERS["zeta_dense"]))
            for how in ["last", "death", "change"]:
                page.select_option("#sort", how)
                for key in ["zeta_dense", "alpha_conv"]:
                    assert _order(matrix(key)) == _expected_order(truth["values"]["weights"][key], how), (how, key)
            page.select_option("#sort", "last")
            data, _ = hover("zeta_dense", 0, len(STEPS) - 1)
            assert int(data["neuron"]) == _expected_order(truth["values"]["weights"]["zeta_dense"], "last")[0]

            # Click a neuron: its curve, to weights and to inputs, with the numbers behind it.
            canvas = matrix("zeta_dense")
            row = 2
            neuron = _order(canvas)[row]
            canvas.click(position=_cell_centre(canvas, row, 0))
            curve = page.locator("#curve")
            curve.wait_for(state="visible")
            assert curve.get_attribute("data-neuron") == str(neuron)
            assert f"zeta_dense, neuron {neuron}" in curve.locator("h2").inner_text()
            assert curve.locator("canvas.curve").count() == 1
            for wrt in ("weights", "inputs"):
                cells = curve.locator(f'td[data-wrt="{wrt}"]')
                shown = [float(cells.nth(i).get_attribute("data-value")) for i in range(cells.count())]
                np.testing.assert_array_equal(np.float32(shown), truth["values"][wrt]["zeta_dense"][:, neuron])
            assert errors == []
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_nested_keys_in_groups_loaded_when_shown_with_frozen_neurons_and_heads(tensorboard, nested):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    base = tensorboard("auto", "nested")
    values, frozen = nested[1]["values"]["weights"], nested[1]["frozen"]
    block_keys = {b: [k for k in NESTED_KEYS if k.startswith(f"backbone/block_{b}")] for b in range(3)}
    with sync_api.sync_playwright() as driver:
        browser = _browser(driver)
        try:
            # Short, so that an open block's last layers start out of view.
            page = browser.new_page(viewport={"width": 1400, "height": 600})
            errors, requested = [], []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda r: "/matrix?" in r.url and requested.append(
                urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query)["layer"][0]))
            page.goto(f"{base}/data/plugin_entry.html?name={PLUGIN}")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)

            def group(path):
                return page.locator(f'section.group[data-group="{path}"]')

            def layers():
                shown = page.locator("section.layer")
                return [shown.nth(i).get_attribute("data-layer") for i in range(shown.count())]

            # The backbone, the only group at the top, is open; its blocks are
            # closed, each offering its feed-forward units and heads.
            assert group("backbone").get_attribute("data-open") == "true"
            for b in range(3):
                assert group(f"backbone/block_{b}").get_attribute("data-open") == "false"
                chips = group(f"backbone/block_{b}").locator(":scope > .group-head button.shortcut")
                assert [chips.nth(i).inner_text() for i in range(chips.count())] == ["ffn", "heads"]
                assert [chips.nth(i).get_attribute("data-key") for i in range(chips.count())] == [
                    f"backbone/block_{b}/ffn", f"backbone/block_{b}/self_attention/heads"]
            assert layers() == ["backbone/embedding", "head"]
            # Only the layers shown were fetched.
            assert sorted(requested) == ["backbone/embedding", "head"]

            # A block's shortcut: its ffn matrix under the closed block's header.
            block_2 = group("backbone/block_2")
            block_2.locator(":scope > .group-head button.shortcut", has_text="ffn").click()
            block_2.locator('section.layer[data-layer="backbone/block_2/ffn"] canvas.matrix').wait_for()
            assert block_2.get_attribute("data-open") == "false"
            assert block_2.locator("section.layer").count() == 1
            assert set(requested) == {"backbone/embedding", "head", "backbone/block_2/ffn"}

            # Open block 1: its layers appear, and are fetched as they come into view.
            group("backbone/block_1").locator(":scope > .group-head button.toggle").click()
            assert group("backbone/block_1").get_attribute("data-open") == "true"
            assert layers()[1:1 + len(block_keys[1])] == block_keys[1]
            ffn = page.locator(f'section.layer[data-layer="{FFN}"]')
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            # Out of view (the page loads half a screen ahead): not fetched yet.
            assert ffn.evaluate("s => s.getBoundingClientRect().top") > 1.5 * 600
            assert FFN not in requested
            ffn.scroll_into_view_if_needed()
            canvas = ffn.locator("canvas.matrix")
            canvas.wait_for(timeout=30_000)
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            assert FFN in requested and not set(requested) & set(block_keys[0])

            # Nothing trainable upstream: pale blue, not counted or marked dead.
            assert _pixel(canvas, _cell_centre(canvas, 0, 0)) == [190, 215, 235, 255]
            assert _pixel(canvas, _cell_centre(canvas, 5, len(NESTED_STEPS) - 1)) == [255, 0, 255, 255]
            dead_at_end = (values[FFN][-1] == 0) & ~frozen[FFN]
            assert ffn.locator(".dead-count").inner_text() == f"{dead_at_end.sum()} dead"
            assert ffn.locator(".frozen-count").inner_text() == f"{frozen[FFN].sum()} with nothing trainable upstream"
            canvas.hover(position=_cell_centre(canvas, 1, 2))
            tooltip = page.locator("#tooltip")
            tooltip.wait_for(state="visible")
            assert tooltip.get_attribute("data-frozen") == "true"
            assert "value 0 (nothing trainable upstream)" in tooltip.inner_text()
            assert "(dead)" not in tooltip.inner_text()
            page.select_option("#sort", "death")
            order = _order(ffn.locator("canvas.matrix"))
            assert order == _expected_order(values[FFN], "death", frozen[FFN])
            assert order != _expected_order(values[FFN], "death")  # as if they were dead
            page.select_option("#sort", "index")

            # Heads: rows in heads of 4, a separator between two, the hover
            # names head and dim.
            heads = page.locator(f'section.layer[data-layer="{HEADS_KEY}"]')
            heads.scroll_into_view_if_needed()
            canvas = heads.locator("canvas.matrix")
            canvas.wait_for(timeout=30_000)
            data = canvas.evaluate("c => ({...c.dataset})")
            head_dim = NESTED_WIDTH[HEADS_KEY] // NESTED_HEADS
            assert (int(data["groupSize"]), int(data["gap"])) == (head_dim, 3)
            between = {"x": float(data["x0"]) + 1,
                       "y": float(data["top"]) + head_dim * float(data["cellHeight"]) + 1}
            assert _pixel(canvas, between) == [153, 153, 153, 255]  # the separator's grey line
            above = _cell_centre(canvas, head_dim - 1, 0)
            assert _pixel(canvas, above)[:3] not in ([153, 153, 153], [0, 0, 0])
            canvas.hover(position=_cell_centre(canvas, 6, 1))
            tooltip.wait_for(state="visible")
            assert (tooltip.get_attribute("data-head"), tooltip.get_attribute("data-dim")) == ("1", "2")
            assert "neuron 6 (head 1, dim 2)" in tooltip.inner_text()
            # Sorted, each head's channels stay in their head, sorted there.
            page.select_option("#sort", "last")
            order = _order(heads.locator("canvas.matrix"))
            matrix = values[HEADS_KEY].reshape(len(NESTED_STEPS), NESTED_HEADS, head_dim)
            assert order == [h * head_dim + d for h in range(NESTED_HEADS)
                             for d in _expected_order(matrix[:, h], "last")]
            assert order != _expected_order(values[HEADS_KEY], "last")
            page.select_option("#sort", "index")

            # The filter: the matching layers in one list, fetched as shown.
            page.fill("#filter", "ffn")
            ffns = [k for k in NESTED_KEYS if k.endswith("/ffn")]
            assert layers() == ffns
            page.wait_for_function(
                f"document.querySelectorAll('section.layer canvas.matrix').length === {len(ffns)}",
                timeout=30_000,
            )
            page.fill("#filter", "block_0 HEADS")
            assert layers() == ["backbone/block_0/self_attention/heads"]
            page.fill("#filter", "")
            assert group("backbone/block_1").get_attribute("data-open") == "true"  # as the user left it
            assert errors == []
        finally:
            browser.close()


def _expected_dormancy_order(status):
    """Rows sorted by the first epoch of the final dormant streak (longest
    first), then the others by index, computed here from the statuses."""
    key = []
    for n in range(status.shape[1]):
        column = status[:, n] == "dormant"
        if not column[-1]:
            key.append(-np.inf)
        else:
            other = np.flatnonzero(~column)
            key.append(-(other[-1] + 1 if other.size else 0))
    return sorted(range(status.shape[1]), key=lambda n: (-key[n], n))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_neuron_health_in_the_tab(tensorboard, health_logged):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    base = tensorboard("auto", "health")
    truth = health_logged[1]
    last = len(HEALTH_STEPS) - 1
    with sync_api.sync_playwright() as driver:
        browser = _browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/data/plugin_entry.html?name={PLUGIN}")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            options = page.locator("#metric option")
            assert [options.nth(i).get_attribute("value") for i in range(options.count())] == HEALTH_METRICS
            sorts = page.locator("#sort option")
            assert {"dormancy", "death", "last:tau_score", "last:utility"} <= {
                sorts.nth(i).get_attribute("value") for i in range(sorts.count())}
            dense = page.locator('section.layer[data-layer="dense"]')
            canvas = dense.locator("canvas.matrix")
            tooltip = page.locator("#tooltip")

            def hover(row, col):
                canvas.hover(position=_cell_centre(canvas, row, col))
                tooltip.wait_for(state="visible")
                return tooltip.evaluate("t => ({...t.dataset})")

            # Sensitivity to weights: dead magenta, dormant and saturated in
            # their colours (a capped unit's zero sensitivity is saturated).
            assert _pixel(canvas, _cell_centre(canvas, 5, 0))[:3] == [255, 0, 255]
            assert _pixel(canvas, _cell_centre(canvas, 4, 2))[:3] == DORMANT
            assert _pixel(canvas, _cell_centre(canvas, 0, 5))[:3] == SATURATED
            data = hover(0, 5)
            assert (data["value"], data["status"], data["state"]) == ("0", "saturated", "saturated")
            assert "value 0 (saturated)" in tooltip.inner_text()
            caption = dense.locator(".caption").inner_text()
            assert "1 dead" in caption and "2 dormant, 1 saturated" in caption
            # Without status colours, a dormant cell shows its value.
            page.locator("#status-colours").uncheck()
            canvas = dense.locator("canvas.matrix")
            assert _pixel(canvas, _cell_centre(canvas, 4, 2))[:3] != DORMANT
            page.locator("#status-colours").check()
            canvas = dense.locator("canvas.matrix")

            # Each statistic of the neuron health, its values as written.
            for metric in ["tau_score", "mean_abs", "firing_rate", "utility"]:
                page.select_option("#metric", metric)
                canvas = dense.locator("canvas.matrix")
                data = hover(1, 3)
                assert data["metric"] == metric
                assert np.float32(float(data["value"])) == truth["activity"]["dense"][metric][3, 1]
            page.select_option("#metric", "tau_score")
            canvas = dense.locator("canvas.matrix")
            assert hover(2, last)["status"] == "dormant"

            # Sorting by the first epoch of dormancy, and by another metric.
            page.select_option("#sort", "dormancy")
            assert _order(dense.locator("canvas.matrix")) == _expected_dormancy_order(truth["status"]["dense"]) == [4, 2, 0, 1, 3, 5]
            page.select_option("#metric", "weights")
            page.select_option("#sort", "last:utility")
            utility = truth["activity"]["dense"]["utility"][last].astype(np.float64)
            assert _order(dense.locator("canvas.matrix")) == sorted(range(6), key=lambda n: (-utility[n], n))
            page.select_option("#sort", "index")

            # A neuron's curve: sensitivity and activity together, and the numbers.
            canvas = dense.locator("canvas.matrix")
            canvas.click(position=_cell_centre(canvas, 2, 0))
            curve = page.locator("#curve")
            curve.wait_for(state="visible")
            keys = curve.locator(".curve-key")
            assert [keys.nth(i).get_attribute("data-metric") for i in range(keys.count())] == [
                "weights", "inputs", "mean_abs", "tau_score"]
            for metric in HEALTH_METRICS:
                cells = curve.locator(f'td[data-metric="{metric}"]')
                shown = np.float32([float(cells.nth(i).get_attribute("data-value")) for i in range(cells.count())])
                written = (truth["values"][metric] if metric in ("weights", "inputs") else truth["activity"])["dense"]
                np.testing.assert_array_equal(shown, written[metric][:, 2] if metric not in ("weights", "inputs") else written[:, 2])
            statuses = curve.locator("td[data-status]")
            assert [statuses.nth(i).get_attribute("data-status") for i in range(statuses.count())] == list(truth["status"]["dense"][:, 2])
            assert errors == []
        finally:
            browser.close()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real `fit` with the callback at its defaults (neuron health on):
    hand-set neurons as in `test_report.py` (`relu` 0 dead, 1 dormant;
    `squash` 0 saturated). `(log_dir, callback)`."""
    import keras

    from keras_neuron_sensitivity import NeuronSensitivityCallback

    log_dir = tmp_path_factory.mktemp("real")
    x = np.random.default_rng(0).uniform(size=(64, 5)).astype("float32")
    y = np.random.default_rng(1).normal(size=(64, 2)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(4, activation="relu", name="relu"),
        keras.layers.Dense(3, activation="sigmoid", name="squash"),
        keras.layers.Dense(2, name="out"),
    ])
    kernel = np.full((5, 4), 0.5, "float32")
    kernel[:, 1] = 0.001
    model.get_layer("relu").kernel.assign(kernel)
    model.get_layer("relu").bias.assign(np.array([-100.0, 0.0, 0.1, 0.2], "float32"))
    model.get_layer("squash").kernel.assign(np.full((4, 3), 0.1, "float32"))
    model.get_layer("squash").bias.assign(np.array([9.0, 0.0, 0.5], "float32"))
    model.compile(keras.optimizers.SGD(1e-4), "mse")
    callback = NeuronSensitivityCallback(x[:16], log_dir=log_dir)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    return log_dir, callback


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_a_real_run_shows_its_neuron_health(real_run):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    from keras_neuron_sensitivity import load_sensitivity

    log_dir, callback = real_run
    run = load_sensitivity(log_dir)
    steps = sorted(callback.activities)

    def loaded(base, logdir):
        layer = _json(base, f"/data/plugin/{PLUGIN}/layer", run="sensitivity", layer="out")
        return layer["activity"]["steps"] == steps

    with _tensorboards({"real": log_dir}, loaded) as start, sync_api.sync_playwright() as driver:
        base = start("auto", "real")
        browser = _browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/data/plugin_entry.html?name={PLUGIN}")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            tooltip = page.locator("#tooltip")
            for key, row, status in [("relu", 1, "dormant"), ("squash", 0, "saturated"), ("relu", 0, "dead")]:
                canvas = page.locator(f'section.layer[data-layer="{key}"] canvas.matrix')
                canvas.hover(position=_cell_centre(canvas, row, len(steps) - 1))
                tooltip.wait_for(state="visible")
                assert tooltip.get_attribute("data-status") == status == run.status[key][steps[-1]][row]
            page.select_option("#metric", "tau_score")
            for key in ("relu", "squash", "out"):
                canvas = page.locator(f'section.layer[data-layer="{key}"] canvas.matrix')
                canvas.hover(position=_cell_centre(canvas, 1, 1))
                tooltip.wait_for(state="visible")
                logged = callback.activities[steps[1]][key]["tau_score"][1]
                assert np.float32(float(tooltip.get_attribute("data-value"))) == np.float32(logged)
                assert np.float32(logged) == run.activity["tau_score"][key][steps[1]][1]
            assert "1 dormant, 0 saturated" in page.locator('section.layer[data-layer="relu"] .caption').inner_text()
            assert "0 dormant, 1 saturated" in page.locator('section.layer[data-layer="squash"] .caption').inner_text()
            assert errors == []
        finally:
            browser.close()

