"""tf.distribute: the callback computes once, writes once, from any strategy."""

import json
import os
import subprocess
import sys

import numpy as np

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
    events = [n for n in os.listdir(tmp_path / "sensitivity") if ".tfevents." in n]
    assert len(events) == 1
