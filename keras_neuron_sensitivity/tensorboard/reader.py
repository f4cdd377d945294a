"""A `sensitivity` run read back, as TensorBoard's Python loader reads it."""

import os

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from keras_neuron_sensitivity.tensorboard import tags
from keras_neuron_sensitivity.tensorboard.events import read_events


def read_run(run_dir):
    """The per-neuron vectors of a run: `{wrt: {key: {step: (C,) array}}}`."""
    return read(run_dir).values


def read_frozen(run_dir):
    """`{key: {step: (C,) bool}}`: the neurons with nothing trainable
    upstream, for the layers and steps that had any."""
    return read(run_dir).frozen


def read_activity(run_dir):
    """`({key: {step: (len(ACTIVITY_ROWS), C) float32}}, thresholds)`: the
    neuron health a run holds (`tags.activity_from_rows` reads one), and its
    `[tau, saturation threshold]` (None if not logged)."""
    run = read(run_dir)
    return run.activity, run.thresholds


class Run:
    """What a run holds, as `read` finds it: `values` (`read_run`'s),
    `steps` (`{step: epoch of its fit or None}`), `frozen` (`read_frozen`'s),
    `activity` and `thresholds` (`read_activity`'s)."""

    def __init__(self):
        self.values, self.steps, self.frozen, self.activity = {}, {}, {}, {}
        self.thresholds = None

    def forget_from(self, step):
        """Drops the steps from `step` on, and the layers left without one."""
        per_steps = [self.steps, *self.frozen.values(), *self.activity.values()]
        per_steps += [per_step for per_layer in self.values.values() for per_step in per_layer.values()]
        for per_step in per_steps:
            for later in [s for s in per_step if s >= step]:
                del per_step[later]
        for per_key in [self.frozen, self.activity, *self.values.values()]:
            for key in [key for key, per_step in per_key.items() if not per_step]:
                del per_key[key]
        for wrt in [wrt for wrt, per_layer in self.values.items() if not per_layer]:
            del self.values[wrt]


def read(run_dir):
    """The run at `run_dir`, a `Run`.

    Reads as TensorBoard's Python loader does: the event files in the order
    of their names, and a `SessionLog.START` at step `s` (a restarted job)
    forgets the steps from `s` on read so far (`_MaybePurgeOrphanedData` of
    `plugin_event_accumulator`, for files of version 2, which every file
    here is). That loader takes a run's first START for the job's beginning
    and forgets nothing then; the writer writes its STARTs in pairs, so the
    two agree on every run written here.
    """
    run = Run()
    if not os.path.isdir(run_dir):
        return run
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." not in name:
            continue
        for event in read_events(os.path.join(run_dir, name)):
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                run.forget_from(event.step)
            for value in event.summary.value:
                tag = value.tag
                if tag == tags.EPOCH_TAG:
                    run.steps[event.step] = int(tensor_util.make_ndarray(value.tensor))
                elif tag == tags.THRESHOLDS_TAG:
                    run.thresholds = tensor_util.make_ndarray(value.tensor).astype(np.float64)
                elif tag.startswith(tags.FROZEN_PREFIX):
                    mask = tensor_util.make_ndarray(value.tensor) > 0
                    run.frozen.setdefault(tag[len(tags.FROZEN_PREFIX):], {})[event.step] = mask
                elif tag.startswith(tags.ACTIVITY_PREFIX):
                    rows = tensor_util.make_ndarray(value.tensor)
                    run.activity.setdefault(tag[len(tags.ACTIVITY_PREFIX):], {})[event.step] = rows
                elif tag.startswith(tags.WRT_PREFIX):
                    run.steps.setdefault(event.step, None)
                    wrt, _, key = tag[len(tags.WRT_PREFIX):].partition("/")
                    vector = tensor_util.make_ndarray(value.tensor)
                    run.values.setdefault(wrt, {}).setdefault(key, {})[event.step] = vector
    return run
