"""Shared by the benchmark scripts: the machine they ran on, and a timer."""

import importlib.metadata
import os
import platform
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadavg():
    """The 1, 5 and 15 minute load averages, or "unknown"."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_info():
    """Lines on the machine, the versions and the package's commit."""
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        mem = float("nan")

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "keras_neuron_sensitivity")
    return [
        f"load average at start: {loadavg()} (other processes on the machine skew timings)",
        f"CPU: {cpu_model()}; {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); {mem:.1f} GiB RAM",
        f"Python {platform.python_version()}; TensorFlow {version('tensorflow')}; "
        f"Keras {version('keras')}; NumPy {version('numpy')}",
        f"keras-neuron-sensitivity {version('keras-neuron-sensitivity')} at {commit}"
        + (" + uncommitted changes in the package" if dirty else " (clean package tree)"),
    ]


def median_seconds(fn, repeats, warmup=0):
    """The median wall time of `repeats` calls of `fn`, after `warmup` untimed
    ones: the one timer of every benchmark, the harness's included."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
