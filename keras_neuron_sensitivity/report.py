"""Reading a logged run back: `load_sensitivity` and the `report` command."""

import argparse
import os
import sys

import numpy as np

from keras_neuron_sensitivity.tensorboard import reader, tags

_SPARKS = "▁▂▃▄▅▆▇█"


class LoggedRun(dict):
    """`{wrt: {layer: {step: np.ndarray (C,)}}}`, as `load_sensitivity`
    returns it, with the run's other per-neuron data as attributes:

    Attributes:
        frozen: `{layer: {step: np.ndarray (C,) bool}}`: the neurons with
            nothing trainable upstream (their sensitivity to weights is zero
            but they are not dead), for the layers and steps that had any.
        activity: `{statistic: {layer: {step: np.ndarray (C,)}}}`, the
            neuron health logged with `activity=True` (empty otherwise):
            `mean`, `mean_abs`, `std`, `firing_rate`, `tau_score`,
            `utility`, `slope`.
        status: `{layer: {step: np.ndarray (C,) str}}`: each neuron's
            status, `"active"`, `"dormant"`, `"saturated"`, `"dead"` or
            `"frozen"` (nothing trainable upstream).
        dormant_threshold, saturation_threshold: the thresholds the
            statuses were decided with (None without activity).
    """

    def __init__(self, values, frozen, activity=None, thresholds=None):
        super().__init__(values)
        self.frozen = frozen
        self.activity, self.status = {}, {}
        for key, steps in (activity or {}).items():
            for step, rows in sorted(steps.items()):
                statistics = tags.activity_from_rows(rows)
                self.status.setdefault(key, {})[step] = statistics.pop("status")
                for name, vector in statistics.items():
                    self.activity.setdefault(name, {}).setdefault(key, {})[step] = vector
        if thresholds is None:
            self.dormant_threshold = self.saturation_threshold = None
        else:
            self.dormant_threshold, self.saturation_threshold = (float(t) for t in thresholds)

    def is_frozen(self, key, step):
        """`(C,) bool`: the neurons of `key` with nothing trainable upstream
        at `step`."""
        mask = self.frozen.get(key, {}).get(step)
        if mask is not None:
            return mask
        for per_layer in self.values():
            if step in per_layer.get(key, {}):
                return np.zeros(per_layer[key][step].shape, bool)
        raise KeyError(f"No layer {key!r} at step {step} in this run.")


def load_sensitivity(log_dir, *, as_frame=False):
    """The per-neuron sensitivities a callback logged, read back exactly.

    Args:
        log_dir: the callback's `log_dir` (holding the `sensitivity` run), or
            the run directory itself.
        as_frame: return a pandas DataFrame with columns `wrt`, `layer`,
            `step`, `neuron`, `sensitivity` and `frozen` (nothing trainable
            upstream), and for runs logged with activity, the neuron's
            `mean`, `mean_abs`, `std`, `firing_rate`, `tau_score`,
            `utility`, `slope` and `status` at that step (the same on the
            `weights` and the `inputs` rows). Needs pandas, which is not a
            dependency. Defaults to False.

    Returns:
        A `LoggedRun`: `{wrt: {layer: {step: np.ndarray (C,)}}}`, steps in
        increasing order, whose `frozen` attribute marks the neurons with
        nothing trainable upstream and whose `activity` and `status` hold
        the neuron health; or the DataFrame.

    Raises:
        FileNotFoundError: if `log_dir` does not exist or holds no run.
        ImportError: for `as_frame=True` without pandas.

    Example:

    A run read back holds exactly what the callback computed:

    >>> import tempfile
    >>> log_dir = tempfile.mkdtemp()
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden")])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    >>> callback = NeuronSensitivityCallback(x[:4], log_dir=log_dir, wrt="weights")
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    >>> logged = load_sensitivity(log_dir)
    >>> sorted(logged["weights"]["hidden"])  # the steps
    [0, 1]
    >>> np.array_equal(logged["weights"]["hidden"][1], callback.sensitivities[1]["weights"]["hidden"])
    True
    >>> logged.status["hidden"][1].shape
    (3,)
    """
    run_dir = _run_dir(log_dir)
    run = reader.read_run(run_dir)
    if not run:
        raise FileNotFoundError(
            f"No sensitivity values in {run_dir!r}. Expected event files "
            "written by NeuronSensitivityCallback (at least one logged epoch)."
        )
    run = LoggedRun(
        {
            wrt: {key: dict(sorted(steps.items())) for key, steps in per_layer.items()}
            for wrt, per_layer in run.items()
        },
        reader.read_frozen(run_dir),
        *reader.read_activity(run_dir),
    )
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
    columns = {name: [] for name in ("wrt", "layer", "step", "neuron", "sensitivity", "frozen")}
    health = list(run.activity)
    if run.status:
        columns.update({name: [] for name in [*health, "status"]})
    for wrt, per_layer in run.items():
        for key, steps in per_layer.items():
            for step, vector in steps.items():
                count = len(vector)
                frozen = run.is_frozen(key, step) if wrt == "weights" else np.zeros(count, bool)
                columns["wrt"] += [wrt] * count
                columns["layer"] += [key] * count
                columns["step"] += [step] * count
                columns["neuron"] += range(count)
                columns["sensitivity"] += np.asarray(vector, np.float64).tolist()
                columns["frozen"] += np.asarray(frozen, bool).tolist()
                if not run.status:
                    continue
                status = run.status.get(key, {}).get(step)
                for name in health:
                    logged = run.activity[name].get(key, {}).get(step)
                    columns[name] += [np.nan] * count if logged is None else np.asarray(logged, np.float64).tolist()
                columns["status"] += [None] * count if status is None else list(status)
    return pd.DataFrame(columns)


def _run_dir(log_dir):
    log_dir = os.fspath(log_dir)
    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"No such directory: {log_dir!r}.")
    nested = os.path.join(log_dir, tags.RUN_NAME)
    return nested if os.path.isdir(nested) else log_dir


def status_since(steps, statuses, status):
    """Per neuron: the first step of its final streak with `status` (it has
    it at the last step and at every step since), or None."""
    since = []
    for column in np.stack([np.asarray(s) == status for s in statuses], axis=1):
        if not column[-1]:
            since.append(None)
            continue
        other = np.flatnonzero(~column)
        since.append(steps[other[-1] + 1] if other.size else steps[0])
    return since


def dead_since(steps, vectors, frozen=None):
    """Per neuron: the first step of its final all-dead streak, or None.

    A neuron dead at the last step has been dead since the returned step
    without interruption; a neuron alive at the last step, or with nothing
    trainable upstream there (`frozen`, a `(C,)` bool, or None), gets None.
    """
    since = []
    last_frozen = np.zeros(len(vectors[-1]), bool) if frozen is None else frozen
    for values, is_frozen in zip(np.stack(vectors, axis=1), last_frozen):  # per neuron, over steps
        if values[-1] != 0 or is_frozen:
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
    frozen_run = getattr(run, "frozen", {})
    width = max([24] + [len(k) for per_layer in run.values() for k in per_layer])
    header = f"{'layer':<{width}} {'to':<8} {'neurons':>7} {'dead':>5}  {'dead since epoch':<18} {'mean sensitivity, first -> last':<34} trend"
    frozen_lines = []
    for wrt, per_layer in run.items():
        for key, per_step in per_layer.items():
            steps = list(per_step)
            vectors = list(per_step.values())
            if len({v.shape for v in vectors}) > 1:
                vectors, steps = vectors[-1:], steps[-1:]
            frozen = frozen_run.get(key, {}).get(steps[-1]) if wrt == "weights" else None
            if frozen is not None and frozen.any():
                frozen_lines.append(f"{key}: {int(frozen.sum())} of {frozen.size}")
            since = [s for s in dead_since(steps, vectors, frozen) if s is not None]
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
                f"{key:<{width}} {wrt:<8} {vectors[-1].size:>7} {len(since):>5}  {when:<18} {change:<34} {_sparkline(means)}"
            )
    all_steps = sorted({s for per_layer in run.values() for p in per_layer.values() for s in p})
    title = f"Logged epochs: {len(all_steps)} (steps {all_steps[0]} to {all_steps[-1]})"
    footer = []
    if frozen_lines:
        footer = [
            "",
            "Nothing trainable upstream at the last step (sensitivity to weights zero, not "
            "counted as dead):",
            *(f"  {line}" for line in frozen_lines),
        ]
    return [title, "", header, *lines, *footer, *_health_lines(run)]


def _indices(mask, most=16):
    indices = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in indices[:most])
    if len(indices) > most:
        shown += f", ... ({len(indices) - most} more)"
    return shown or "-"


def _span(since):
    since = [s for s in since if s is not None]
    if not since:
        return "-"
    first, last = min(since), max(since)
    return f"{first}" if first == last else f"{first} to {last}"


def _health_lines(run):
    """Per layer, its dormant and saturated neurons at the last step (and
    since when they are dormant), for a run logged with activity."""
    status = getattr(run, "status", None)
    if not status:
        return []
    width = max([24] + [len(k) for k in status])
    lines = [
        "",
        f"Neuron health at the last step (dormant: tau-score at most {run.dormant_threshold:g}; "
        f"saturated: firing, activation slope at most {run.saturation_threshold:g} of its largest):",
        f"{'layer':<{width}} {'neurons':>7} {'dormant':>8} {'saturated':>10}  {'dormant since':<14} "
        f"{'dormant neurons':<40} saturated neurons",
    ]
    for key, per_step in status.items():
        steps = list(per_step)
        statuses = list(per_step.values())
        if len({s.shape for s in statuses}) > 1:
            steps, statuses = steps[-1:], statuses[-1:]
        last = statuses[-1]
        dormant, saturated = last == "dormant", last == "saturated"
        since = _span(status_since(steps, statuses, "dormant"))
        lines.append(
            f"{key:<{width}} {last.size:>7} {int(dormant.sum()):>8} {int(saturated.sum()):>10}  "
            f"{since:<14} {_indices(dormant):<40} {_indices(saturated)}"
        )
    return lines


def main(argv=None):
    """`keras-neuron-sensitivity report LOG_DIR`: a summary of a logged run."""
    parser = argparse.ArgumentParser(
        prog="keras-neuron-sensitivity",
        description="Summaries of the neuron sensitivities a NeuronSensitivityCallback logged.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report",
        help="per layer: neurons, dead neurons and since when, trend of the mean; "
        "dormant and saturated neurons",
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
