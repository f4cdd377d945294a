"""Reading a logged run back: `load_sensitivity` and the `report` command."""

import argparse
import os
import sys

import numpy as np

from keras_neuron_sensitivity import tensorboard

_SPARKS = "▁▂▃▄▅▆▇█"


def load_sensitivity(log_dir, *, as_frame=False):
    """The per-neuron sensitivities a callback logged, read back exactly.

    Args:
        log_dir: the callback's `log_dir` (holding the `sensitivity` run), or
            the run directory itself.
        as_frame: return a pandas DataFrame with columns `wrt`, `layer`,
            `step`, `neuron`, `sensitivity` (needs pandas, which is not a
            dependency). Defaults to False.

    Returns:
        `{wrt: {layer: {step: np.ndarray (C,)}}}`, steps in increasing order;
        or the DataFrame.

    Raises:
        FileNotFoundError: if `log_dir` does not exist or holds no run.
        ImportError: for `as_frame=True` without pandas.

    Example:

    >>> logged = load_sensitivity("logs")
    >>> logged["weights"]["dense"][0].shape
    (64,)
    """
    run_dir = _run_dir(log_dir)
    run = tensorboard.read_run(run_dir)
    if not run:
        raise FileNotFoundError(
            f"No sensitivity values in {run_dir!r}. Expected event files "
            "written by NeuronSensitivityCallback (at least one logged epoch)."
        )
    run = {
        wrt: {key: dict(sorted(steps.items())) for key, steps in per_layer.items()}
        for wrt, per_layer in run.items()
    }
    if not as_frame:
        return run
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError(
            "load_sensitivity(..., as_frame=True) needs pandas, which is not "
            "installed. Install it (`pip install pandas`) or use the default "
            "dict of NumPy arrays."
        ) from error
    rows = [
        (wrt, key, step, neuron, float(value))
        for wrt, per_layer in run.items()
        for key, steps in per_layer.items()
        for step, vector in steps.items()
        for neuron, value in enumerate(vector)
    ]
    return pd.DataFrame(rows, columns=["wrt", "layer", "step", "neuron", "sensitivity"])


def _run_dir(log_dir):
    log_dir = os.fspath(log_dir)
    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"No such directory: {log_dir!r}.")
    nested = os.path.join(log_dir, tensorboard.RUN_NAME)
    return nested if os.path.isdir(nested) else log_dir


def dead_since(steps, vectors):
    """Per neuron: the first step of its final all-dead streak, or None.

    A neuron dead at the last step has been dead since the returned step
    without interruption; a neuron alive at the last step gets None.
    """
    since = []
    for values in np.stack(vectors, axis=1):  # one row per neuron, over steps
        if values[-1] != 0:
            since.append(None)
            continue
        alive = np.flatnonzero(values != 0)
        since.append(steps[alive[-1] + 1] if alive.size else steps[0])
    return since


def _sparkline(values):
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "?" * len(values)
    low, high = finite.min(), finite.max()
    span = (high - low) or 1.0
    return "".join(
        _SPARKS[int((v - low) / span * (len(_SPARKS) - 1))] if np.isfinite(v) else "?"
        for v in values
    )


def format_report(run):
    """The report's lines for `run` as `load_sensitivity` returns it."""
    lines = []
    header = f"{'layer':<24} {'to':<8} {'neurons':>7} {'dead':>5}  {'dead since epoch':<18} {'mean sensitivity, first -> last':<34} trend"
    for wrt, per_layer in run.items():
        for key, per_step in per_layer.items():
            steps = list(per_step)
            vectors = list(per_step.values())
            if len({v.shape for v in vectors}) > 1:
                vectors, steps = vectors[-1:], steps[-1:]
            since = [s for s in dead_since(steps, vectors) if s is not None]
            if since:
                first, last = min(since), max(since)
                when = f"{first}" if first == last else f"{first} to {last}"
            else:
                when = "-"
            means = [float(np.nanmean(np.where(np.isfinite(v), v, np.nan))) if np.isfinite(v).any() else float("nan") for v in vectors]
            change = (
                f"{means[0]:.4g} -> {means[-1]:.4g}"
                + (f" ({(means[-1] / means[0] - 1) * 100:+.0f}%)" if means[0] else "")
            )
            lines.append(
                f"{key:<24} {wrt:<8} {vectors[-1].size:>7} {len(since):>5}  {when:<18} {change:<34} {_sparkline(means)}"
            )
    all_steps = sorted({s for per_layer in run.values() for p in per_layer.values() for s in p})
    title = f"Logged epochs: {len(all_steps)} (steps {all_steps[0]} to {all_steps[-1]})"
    return [title, "", header, *lines]


def main(argv=None):
    """`keras-neuron-sensitivity report LOG_DIR`: a summary of a logged run."""
    parser = argparse.ArgumentParser(
        prog="keras-neuron-sensitivity",
        description="Summaries of the neuron sensitivities a NeuronSensitivityCallback logged.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report",
        help="per layer: neurons, dead neurons and since when, trend of the mean",
    )
    report.add_argument("log_dir", help="the callback's log_dir (or its sensitivity run)")
    args = parser.parse_args(argv)
    try:
        run = load_sensitivity(args.log_dir)
    except (FileNotFoundError, OSError) as error:
        print(f"keras-neuron-sensitivity: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(format_report(run)))
    return 0
