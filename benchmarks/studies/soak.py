"""Soak: NeuronSensitivityCallback left on for hundreds of logged epochs.

A small MLP (64-128-64-10, relu, softmax; Adam) on the first 512 samples
of scikit-learn's digits, batch 128 (4 steps per epoch), with the callback at
its defaults (asynchronous, every epoch, both wrt, probe of 128) for
`--epochs` epochs (400). It checks the issue's criteria:

- memory: the process's resident set size (VmRSS), sampled at every epoch
  end, grows by at most 40 MiB from epoch 50 to the end;
- the event file: every logged epoch adds the same number of bytes (its
  histograms, scalars, per-neuron vectors, text), plus a heat-map drawing
  at logged epochs 1, 2, 4, ..., 64, then every 64, whose size is bounded
  (at most 128 columns); so the growth per epoch does not increase.

The event file is read back after `fit` (record by record, each record's
bytes on disk attributed to its step), so the sizes are exact and do not
depend on when the background thread wrote them.

    .venv/bin/python benchmarks/studies/soak.py                 # 400 epochs, ~2-5 min
    .venv/bin/python benchmarks/studies/soak.py --epochs 1000

A study, not on the harness: its conclusions are prose in
docs/safe-to-leave-on.md, and nothing of it is stored.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: `benchmarks`

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.compat.proto import event_pb2  # noqa: E402

from benchmarks import models  # noqa: E402
from benchmarks._machine import cpu_model, loadavg  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity  # noqa: E402
from keras_neuron_sensitivity.tensorboard import pictures  # noqa: E402
from keras_neuron_sensitivity.tensorboard.tags import WRT_PREFIX  # noqa: E402

RSS_LIMIT_MIB = 40
RSS_FROM_EPOCH = 50


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Sampler(keras.callbacks.Callback):
    """After the sensitivity callback: RSS at every epoch end."""

    def __init__(self):
        super().__init__()
        self.rss = []
        self.times = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rss.append(rss_mib())
        self.times.append(time.perf_counter() - self._start)


def bytes_per_step(run_dir):
    """`{step: (bytes of its epoch event, bytes of heat-map events)}` on disk."""
    sizes = {}
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." not in name:
            continue
        for record in tf.data.TFRecordDataset(os.path.join(run_dir, name)):
            event = event_pb2.Event.FromString(record.numpy())
            if not event.HasField("summary"):
                continue  # the file version
            size = len(record.numpy()) + 16  # length, CRCs
            tags = {v.tag for v in event.summary.value}
            epoch_bytes, heatmap_bytes = sizes.get(event.step, (0, 0))
            if any(t.startswith(WRT_PREFIX) for t in tags):
                # The epoch's own event; its heat maps counted apart.
                heat = sum(
                    len(v.SerializeToString()) + 4
                    for v in event.summary.value
                    if v.tag.startswith("heatmap_to_")
                )
                sizes[event.step] = (epoch_bytes + size - heat, heatmap_bytes + heat)
            else:  # the heat maps drawn when training ends
                sizes[event.step] = (epoch_bytes, heatmap_bytes + size)
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--asynchronous", type=int, default=1)
    parser.add_argument("--method", default="auto")
    args = parser.parse_args()
    print("soak.py: NeuronSensitivityCallback over many logged epochs")
    print(f"  CPU: {cpu_model()}; {os.cpu_count()} cores; load average at start: {loadavg()}")
    x, y = models.digits()
    x, y = x[:512], y[:512]
    print(
        f"  MLP 64-128-64-10, 512 samples, batch 128 (4 steps/epoch), {args.epochs} epochs, "
        f"probe 128, asynchronous={bool(args.asynchronous)}, method={args.method!r}, every epoch, both wrt"
    )
    log_dir = tempfile.mkdtemp(prefix="kns_soak_")
    try:
        keras.utils.set_random_seed(0)
        model = models.digits_mlp()
        model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        sampler = Sampler()
        callback = NeuronSensitivityCallback(
            x[:128], log_dir=log_dir, asynchronous=bool(args.asynchronous), method=args.method
        )
        start = time.perf_counter()
        model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0, callbacks=[callback, sampler])
        elapsed = time.perf_counter() - start
        run_dir = os.path.join(log_dir, "sensitivity")
        logged = load_sensitivity(log_dir)
        steps = sorted(logged["weights"]["hidden_1"])
        sizes = bytes_per_step(run_dir)
        file_bytes = sum(os.path.getsize(os.path.join(run_dir, n)) for n in os.listdir(run_dir))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    methods = {w: s.method for w, s in callback.sensitivities[0].items()}
    print(f"  methods: {methods}; fit {elapsed:.0f} s; training waited {callback.waited:.1f} s for the callback")
    print(f"  logged steps readable: {len(steps)} of {args.epochs} (0..{steps[-1]})")
    print()

    rss = sampler.rss
    base = rss[RSS_FROM_EPOCH - 1]
    growth = rss[-1] - base
    print(f"Memory (VmRSS): epoch 1 {rss[0]:.0f} MiB, epoch {RSS_FROM_EPOCH} {base:.0f} MiB, "
          f"max {max(rss):.0f} MiB, last {rss[-1]:.0f} MiB")
    marks = [e for e in (50, 100, 200, 300, 400, 600, 800, 1000) if e <= len(rss)]
    print("  at epochs " + ", ".join(f"{e}: {rss[e - 1]:.1f}" for e in marks) + " MiB")
    ok_rss = growth <= RSS_LIMIT_MIB
    print(f"  growth after epoch {RSS_FROM_EPOCH}: {growth:+.1f} MiB (limit {RSS_LIMIT_MIB}): "
          f"{'MET' if ok_rss else 'NOT MET'}")
    print()

    epoch_bytes = [sizes[s][0] for s in steps]
    drawn = {s: sizes[s][1] for s in steps if sizes[s][1]}
    # Step 0 carries each tag's metadata (the first value of a tag in a file).
    plain = [b for s, b in zip(steps, epoch_bytes) if s not in (steps[0], steps[-1])]
    print("Event file:")
    print(f"  total {file_bytes / 2**20:.2f} MiB for {len(steps)} logged epochs")
    print(f"  first logged epoch (with each tag's metadata): {epoch_bytes[0]} B")
    print(f"  later logged epochs (without heat maps): median {statistics.median(plain):.0f} B, "
          f"min {min(plain)} B, max {max(plain)} B")
    print("  heat-map drawings (step: bytes): " + ", ".join(f"{s}: {b}" for s, b in drawn.items()))
    largest = max(drawn.values())
    print(f"  largest drawing: {largest} B ({pictures.HEATMAP_COLUMNS} columns at most)")
    print(
        f"  bound: bytes after N logged epochs <= {epoch_bytes[0]} + {max(plain)} N + {largest} x (drawings: "
        f"log2 of min(N, {pictures.HEATMAP_EVERY}) + 1 + N / {pictures.HEATMAP_EVERY} + 1 per fit)"
    )
    window = pictures.HEATMAP_EVERY
    rows = []
    for begin in range(0, len(steps) - window + 1, window):
        chunk = steps[begin:begin + window]
        total = sum(sizes[s][0] + sizes[s][1] for s in chunk if s != steps[-1])
        rows.append((chunk[0], chunk[-1], total / len(chunk)))
    print(f"  growth per logged epoch over windows of {window} (one drawing each):")
    for first, last, per in rows:
        print(f"    epochs {first:4d}-{last:4d}: {per:8.0f} B/epoch")
    settled = [per for first, _, per in rows if first >= 2 * window]
    flat_epochs = max(plain) - min(plain) <= 0.02 * statistics.median(plain)
    not_increasing = all(b <= 1.05 * a for a, b in zip(settled, settled[1:])) if len(settled) > 1 else True
    print(
        f"  per-epoch bytes constant (within 2 %): {'yes' if flat_epochs else 'NO'}; "
        f"window growth not increasing from epoch {2 * window}: {'yes' if not_increasing else 'NO'}"
    )
    print()
    later = statistics.median(sampler.times[1:])
    print(f"Epoch time (median, sampler's clock): {1e3 * later:.1f} ms; load average at end: {loadavg()}")
    print(f"Criteria: RSS {'MET' if ok_rss else 'NOT MET'}; event-file growth "
          f"{'MET' if flat_epochs and not_increasing else 'NOT MET'}")


if __name__ == "__main__":
    main()
