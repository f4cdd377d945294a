"""tf.distribute: the callback computes once, writes once, from any strategy."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKERS = os.path.join(os.path.dirname(__file__), "workers")


def test_mirrored_strategy_logs_single_device_values_from_one_writer(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(WORKERS, "mirrored.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for wrt in ["weights", "inputs"]:
        assert out["logged"][wrt].keys() == out["twin"][wrt].keys() == {"h", "bn", "o"}
        for key, values in out["twin"][wrt].items():
            np.testing.assert_allclose(out["logged"][wrt][key], values, rtol=1e-5, atol=1e-7)
        for key, values in out["twin_estimated"][wrt].items():
            np.testing.assert_allclose(out["estimated"][wrt][key], values, rtol=1e-5, atol=1e-7)
    assert out["estimated"]["weights"].keys() == {"h", "bn", "o"}
    events = [n for n in os.listdir(tmp_path / "sensitivity") if ".tfevents." in n]
    assert len(events) == 1


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_tf_keras_multi_worker_only_the_chief_writes(tmp_path):
    pytest.importorskip("tf_keras")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(WORKERS, "multi_worker.py"), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            process.kill()
    chief, other = sorted(results, key=lambda r: not r["chief"])
    assert chief["chief"] and not other["chief"]
    assert other["logged"] == {}  # the other worker computed nothing
    for wrt in ["weights", "inputs"]:
        for key, values in chief["twin"][wrt].items():
            np.testing.assert_allclose(chief["logged"][wrt][key], values, rtol=1e-5, atol=1e-7)
    written = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    assert len(written) == 1 and os.path.dirname(written[0]) == str(tmp_path / "sensitivity")
