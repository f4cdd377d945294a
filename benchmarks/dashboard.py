"""The Neurons dashboard on a language-model-shaped run: each route's time and size.

Writes two runs with `SensitivityWriter` (synthetic values, no model) under
a temporary log directory:

- `llm/sensitivity`: the sites keras_hub's `LlamaBackbone` logs (13 per
  block: the block, its two norms, `self_attention` and its query, key,
  value, attention_output and `heads`, the gate, intermediate and output
  dense layers, and `ffn`; then the token embedding and the final norm)
  for 8 blocks, to weights and to inputs, over 100 logged epochs. Widths:
  hidden 256, 8 query heads of 32 (2 key-value heads), feed-forward 1,024.
  A real Llama's 4,096-wide hidden and 11,008-wide feed-forward would take
  this 2-core machine minutes to write and TensorBoard gigabytes to hold;
  the FFN sites here are at least 1,024 neurons, the size the routes are
  judged at. Block 0's query has nothing trainable upstream (as before the
  first LoRA factor), so the run carries `frozen/...` tensors; the heads
  sites carry their number of heads.
- `wide/sensitivity`: one layer of 1,024 neurons over 300 logged epochs,
  to weights and to inputs (the issue's reference: 11 MB of JSON).

Values are log-normal, with dead neurons (exactly 0), values below
float16's smallest subnormal (1e-9), and one NaN.

Then starts `tensorboard` on loopback (its Rust data server, the default)
on that directory and measures, as medians of `--repeats` requests after
one warm-up: the `runs` listing; the wide layer through the JSON route
(`layer`) and the binary one (`matrix`, whole and with `max_steps=256`,
what the page asks); an FFN site of the LLM run. Bytes are the answer's
body as sent: the JSON route also as gzip, which a browser asks for. With
`--browser`, also the page in headless Chromium (Debian's `chromium`, and
`playwright`): from navigation until the tab says ready, from a closed
block's `ffn` shortcut until its matrix is drawn, and from opening a block
until the matrices in view are drawn.

    PYTHONPATH=. .venv/bin/python benchmarks/dashboard.py
    PYTHONPATH=. .venv/bin/python benchmarks/dashboard.py --repeats 3 --browser
    PYTHONPATH=. .venv/bin/python benchmarks/dashboard.py --logdir /tmp/llm_runs  # kept, reused
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the package's import loads TensorFlow

import numpy as np  # noqa: E402

from _machine import machine_info, median_seconds  # noqa: E402
from keras_neuron_sensitivity.engine.summary import Sensitivities  # noqa: E402
from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter  # noqa: E402

PLUGIN = "keras_neuron_sensitivity"
BLOCKS, EPOCHS, WIDE_EPOCHS = 8, 100, 300
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 256, 8, 2, 32, 1024
WIDE = 1024
BACKBONE = "llama_backbone"
BLOCK_SITES = {  # site -> neurons, in the order the package logs a Llama block
    "": HIDDEN,
    "self_attention_layernorm": HIDDEN,
    "self_attention": HIDDEN,
    "self_attention/query": HEADS * HEAD_DIM,
    "self_attention/key": KV_HEADS * HEAD_DIM,
    "self_attention/value": KV_HEADS * HEAD_DIM,
    "self_attention/attention_output": HIDDEN,
    "self_attention/heads": HEADS * HEAD_DIM,
    "feedforward_layernorm": HIDDEN,
    "feedforward_gate_dense": FFN,
    "feedforward_intermediate_dense": FFN,
    "feedforward_output_dense": HIDDEN,
    "ffn": FFN,
}
FFN_KEY = f"{BACKBONE}/transformer_layer_3/ffn"
FROZEN_KEY = f"{BACKBONE}/transformer_layer_0/self_attention/query"


def llm_layers():
    """`{key: neurons}` in the model's order."""
    layers = {f"{BACKBONE}/token_embedding": HIDDEN}
    for block in range(BLOCKS):
        for site, neurons in BLOCK_SITES.items():
            layers["/".join(filter(None, [BACKBONE, f"transformer_layer_{block}", site]))] = neurons
    layers[f"{BACKBONE}/sequence_output_layernorm"] = HIDDEN
    return layers


def _vector(rng, neurons, step, frozen=None):
    vector = (10 ** rng.normal(-1 + 0.002 * step, 0.6, neurons)).astype(np.float32)
    vector[: neurons // 64] = 0  # dead
    vector[neurons // 64] = 1e-9  # below float16's smallest subnormal
    if frozen is not None:
        vector[frozen] = 0
    return vector


def write_run(run_dir, layers, epochs, frozen=None, heads=None, seed=0):
    """Writes `epochs` logged epochs of `layers` ({key: neurons}) to both wrt."""
    rng = np.random.default_rng(seed)
    writer = SensitivityWriter(run_dir, num_bins=30)
    frozen = frozen or {}
    for step in range(epochs):
        reduced = {}
        for wrt in ("weights", "inputs"):
            masks = {k: np.zeros(n, bool) for k, n in layers.items()}
            for key, mask in frozen.items():
                masks[key] = mask if wrt == "weights" else np.zeros_like(mask)
            vectors = {k: _vector(rng, n, step, masks[k]) for k, n in layers.items()}
            if step == epochs - 1:
                next(iter(vectors.values()))[-1] = np.nan
            reduced[wrt] = Sensitivities(vectors, "exact", None, frozen=masks)
        dead = {w: s.dead() for w, s in reduced.items()}
        writer.write(step, reduced, dead, methods={w: "exact" for w in reduced}, heads=heads)
    writer.finish()
    writer.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, gzipped=False):
    """`(status, body bytes as sent)`."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzipped else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_tensorboard(log_dir):
    port = _free_port()
    command = [
        os.path.join(os.path.dirname(sys.executable), "tensorboard"),
        "--logdir", log_dir, "--host", "127.0.0.1", "--port", str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/{PLUGIN}"
    return process, base


def wait_until_loaded(process, base, timeout=600):
    """Seconds until both runs' last epochs are served."""
    started = time.perf_counter()
    wanted = {"wide/sensitivity": ("wide", WIDE_EPOCHS), "llm/sensitivity": (FFN_KEY, EPOCHS)}
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError("tensorboard exited")
        try:
            if all(_steps(base, run, key) == epochs for run, (key, epochs) in wanted.items()):
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"TensorBoard did not load the runs within {timeout} s")


def _steps(base, run, key):
    """How many steps the JSON route serves for one layer (-1: none yet)."""
    status, body = fetch(f"{base}/layer?" + urllib.parse.urlencode({"run": run, "layer": key}))
    return len(json.loads(body)["wrt"]["inputs"]["steps"]) if status == 200 else -1


def measure(label, url, repeats, gzipped=False):
    status, body = fetch(url, gzipped)
    if status != 200:
        print(f"{label:<52} HTTP {status} (route not served)")
        return
    seconds = median_seconds(lambda: fetch(url, gzipped), repeats)
    print(f"{label:<52} {seconds:7.3f} s  {len(body) / 1e6:8.3f} MB")


def browser_timings(base, repeats):
    """Seconds, in headless Chromium, from navigation until the tab says
    ready; from a closed block's `ffn` shortcut until its matrix is drawn;
    from opening another block until the matrices in view are drawn."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    root = base.split("/data/plugin/")[0]
    timings = {"load": [], "ffn": [], "open": []}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                started = time.perf_counter()
                page.goto(f"{root}/data/plugin_entry.html?name={PLUGIN}")
                page.wait_for_selector("body[data-state=ready]", timeout=300_000)
                timings["load"].append(time.perf_counter() - started)
                block = f'.group[data-group="{BACKBONE}/transformer_layer_3"] > .group-head'
                started = time.perf_counter()
                page.click(f"{block} button.shortcut >> text=ffn")
                page.wait_for_selector(f'section.layer[data-layer="{FFN_KEY}"] canvas.matrix', timeout=300_000)
                timings["ffn"].append(time.perf_counter() - started)
                started = time.perf_counter()
                # The click fetches synchronously what comes into view, so
                # the page says "loading" until those matrices are drawn.
                page.click(f'.group[data-group="{BACKBONE}/transformer_layer_5"] > .group-head button.toggle')
                page.wait_for_selector("body[data-state=ready]", timeout=300_000)
                timings["open"].append(time.perf_counter() - started)
                page.close()
        finally:
            browser.close()
    return {name: float(np.median(times)) for name, times in timings.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    parser.add_argument(
        "--logdir",
        help="write the runs there and keep them (reused as they are if it holds them already); "
        "defaults to a temporary directory, removed at the end",
    )
    args = parser.parse_args()
    for line in machine_info():
        print(line)

    log_dir = args.logdir or tempfile.mkdtemp(prefix="dashboard_bench_")
    layers = llm_layers()
    if os.path.isdir(os.path.join(log_dir, "wide", "sensitivity")):
        print(f"\nreusing the runs in {log_dir}")
    else:
        frozen = {FROZEN_KEY: np.ones(layers[FROZEN_KEY], bool)}
        heads = {k: HEADS for k in layers if k.endswith("/heads")}
        started = time.perf_counter()
        write_run(os.path.join(log_dir, "llm"), layers, EPOCHS, frozen=frozen, heads=heads)
        llm_seconds = time.perf_counter() - started
        started = time.perf_counter()
        write_run(os.path.join(log_dir, "wide"), {"wide": WIDE}, WIDE_EPOCHS, seed=1)
        wide_seconds = time.perf_counter() - started
        print(
            f"\nllm run: {len(layers)} layers ({BLOCKS} blocks x {len(BLOCK_SITES)} sites + 2), "
            f"{sum(layers.values())} neurons, {EPOCHS} epochs, both wrt: written in {llm_seconds:.1f} s"
        )
        print(f"wide run: 1 layer of {WIDE} neurons, {WIDE_EPOCHS} epochs, both wrt: written in {wide_seconds:.1f} s")
    size = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(log_dir) for f in files
    )
    print(f"event files: {size / 1e6:.1f} MB\n")

    process, base = start_tensorboard(log_dir)
    try:
        print(f"TensorBoard loaded both runs in {wait_until_loaded(process, base):.1f} s\n")
        print(f"{'route':<52} {'median':>9}  {'body':>11}")
        measure("runs", f"{base}/runs", args.repeats)
        wide = urllib.parse.urlencode({"run": "wide/sensitivity", "layer": "wide"})
        measure("layer (JSON), wide 1024 x 300 x 2", f"{base}/layer?{wide}", args.repeats)
        measure("layer (JSON, gzip), wide 1024 x 300 x 2", f"{base}/layer?{wide}", args.repeats, gzipped=True)
        measure("matrix (binary), wide 1024 x 300 x 2", f"{base}/matrix?{wide}", args.repeats)
        measure("matrix (binary), wide, max_steps=256", f"{base}/matrix?{wide}&max_steps=256", args.repeats)
        ffn = urllib.parse.urlencode({"run": "llm/sensitivity", "layer": FFN_KEY})
        measure(f"matrix (binary), llm ffn {FFN} x {EPOCHS} x 2", f"{base}/matrix?{ffn}", args.repeats)
        measure(f"layer (JSON), llm ffn {FFN} x {EPOCHS} x 2", f"{base}/layer?{ffn}", args.repeats)
        if args.browser:
            timings = browser_timings(base, max(1, args.repeats // 2))
            print(f"\n{'page: navigation until ready (headless Chromium)':<52} {timings['load']:7.3f} s")
            print(f"{'page: ffn shortcut of a closed block until drawn':<52} {timings['ffn']:7.3f} s")
            print(f"{'page: open a block until the matrices in view are drawn':<52} {timings['open']:7.3f} s")
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not args.logdir:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
