"""The Neurons dashboard on a language-model-shaped run: TensorBoard's answers, timed, and the page in headless Chromium.

Writes two runs with `SensitivityWriter` (synthetic values, no model) under
a temporary log directory (or `--logdir`, kept and reused):

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
(`layer`, also gzipped, as a browser asks for it) and the binary one
(`matrix`, whole and with `max_steps=256`, what the page asks); an FFN site
of the LLM run through both. Bytes are the answer's body as sent. Unless
`--no-browser`: the page in headless Chromium (`/usr/bin/chromium`, driven
by `playwright`), the median of `--repeats` page loads: from
navigation until the tab says ready (with the plugin's requests and their
bytes), from a closed block's `ffn` shortcut until its matrix is drawn, and
from opening another block until the matrices in view are drawn.

No training step: nothing here runs a model. Quick: 3 repeats. Full: 5.
The runs are the same size either way (writing them takes about a minute).
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import numpy as np

from benchmarks import _harness

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
    from keras_neuron_sensitivity.engine.summary import Sensitivities
    from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter

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


def arguments(parser):
    parser.add_argument("--repeats", type=int, default=None, help="requests per route (default 5, quick 3)")
    parser.add_argument("--no-browser", action="store_true", help="skip the page in headless Chromium")
    parser.add_argument("--logdir", default=None,
                        help="write the runs there and keep them (reused if it holds them already)")


def cases(args):
    return [{"backend": "tensorflow", "repeats": args.repeats or (3 if args.quick else 5),
             "browser": not args.no_browser, "logdir": args.logdir}]


def _route(url, repeats, gzipped=False):
    """`{"seconds", "bytes"}` of one route, or `{"status"}` when it is not served."""
    status, body = fetch(url, gzipped)
    if status != 200:
        return {"status": status}
    return {"seconds": _harness.median_seconds(lambda: fetch(url, gzipped), repeats), "bytes": len(body)}


def browser_timings(base, repeats):
    """Medians, in headless Chromium: `load` from navigation until the tab
    says ready (and meanwhile the plugin's `requests`, `data_requests` of
    them to its routes, the rest its static files, and their `bytes`);
    `ffn` from a closed block's `ffn` shortcut until its matrix is drawn;
    `open` from opening another block until the matrices in view are drawn."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    root = base.split("/data/plugin/")[0]
    timings = {"load": [], "ffn": [], "open": [], "requests": [], "data_requests": [], "bytes": []}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                finished = []
                page.on("requestfinished", lambda request: finished.append(request)
                        if f"/data/plugin/{PLUGIN}/" in request.url else None)
                started = time.perf_counter()
                page.goto(f"{root}/data/plugin_entry.html?name={PLUGIN}")
                page.wait_for_selector("body[data-state=ready]", timeout=300_000)
                timings["load"].append(time.perf_counter() - started)
                loaded = list(finished)
                timings["requests"].append(len(loaded))
                timings["data_requests"].append(sum("/static/" not in r.url for r in loaded))
                timings["bytes"].append(sum(r.sizes()["responseBodySize"] for r in loaded))
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
    return {name: statistics.median(values) for name, values in timings.items()}


ROUTES = (  # (key, label, route, run, layer, query, gzipped)
    ("runs", "`runs`, the listing (both runs)", "runs", None, None, "", False),
    ("wide_layer", "`layer` (JSON), one layer of 1,024 neurons x 300 epochs x 2 wrt", "layer",
     "wide/sensitivity", "wide", "", False),
    ("wide_layer_gzip", "the same, gzipped (as a browser asks)", "layer", "wide/sensitivity", "wide", "", True),
    ("wide_matrix", "`matrix` (binary), the same layer", "matrix", "wide/sensitivity", "wide", "", False),
    ("wide_matrix_256", "the same with `max_steps=256` (what the page asks)", "matrix", "wide/sensitivity",
     "wide", "&max_steps=256", False),
    ("ffn_matrix", f"`matrix`, an FFN site of the LLM run, {FFN:,} x {EPOCHS} x 2", "matrix",
     "llm/sensitivity", FFN_KEY, "", False),
    ("ffn_layer", "`layer` (JSON), the same site", "layer", "llm/sensitivity", FFN_KEY, "", False),
)


def measure(case, emit):
    log_dir = case["logdir"] or tempfile.mkdtemp(prefix="dashboard_bench_")
    layers = llm_layers()
    result = {"llm_layers": len(layers), "llm_neurons": sum(layers.values())}
    process = None
    try:
        if not os.path.isdir(os.path.join(log_dir, "wide", "sensitivity")):
            frozen = {FROZEN_KEY: np.ones(layers[FROZEN_KEY], bool)}
            heads = {k: HEADS for k in layers if k.endswith("/heads")}
            _harness.progress("writing the LLM-shaped run")
            started = time.perf_counter()
            write_run(os.path.join(log_dir, "llm"), layers, EPOCHS, frozen=frozen, heads=heads)
            result["write_llm"] = time.perf_counter() - started
            _harness.progress("writing the wide run")
            started = time.perf_counter()
            write_run(os.path.join(log_dir, "wide"), {"wide": WIDE}, WIDE_EPOCHS, seed=1)
            result["write_wide"] = time.perf_counter() - started
        result["event_bytes"] = sum(os.path.getsize(os.path.join(d, f))
                                    for d, _, files in os.walk(log_dir) for f in files)
        emit(result)
        process, base = start_tensorboard(log_dir)
        _harness.progress("TensorBoard: loading the runs")
        result["tensorboard_load"] = wait_until_loaded(process, base)
        routes = result["routes"] = {}
        for key, _, route, run, layer, query, gzipped in ROUTES:
            _harness.progress(f"route {key}")
            arguments = "" if run is None else "?" + urllib.parse.urlencode({"run": run, "layer": layer})
            routes[key] = _route(f"{base}/{route}{arguments}{query}", case["repeats"], gzipped)
            emit(result)
        if case["browser"]:
            _harness.progress("the page in headless Chromium")
            result["browser"] = browser_timings(base, case["repeats"])
            result["browser_loads"] = case["repeats"]
    finally:
        if process is not None:
            process.terminate()  # our own tensorboard, by its handle
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not case["logdir"]:
            shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _size(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def table(record):
    entry = record["cases"][0]
    r, c = entry["result"] or {}, entry["case"]
    lines = ["| what | median | body |", "|---|---|---|"]
    for key, label, *_ in ROUTES:
        route = r.get("routes", {}).get(key)
        if route is None:
            lines.append(f"| {label} | {entry['status']} | |")
        elif "seconds" not in route:
            lines.append(f"| {label} | HTTP {route['status']} (not served) | |")
        else:
            lines.append(f"| {label} | {_harness.duration(route['seconds'])} | {_size(route['bytes'])} |")
    b = r.get("browser")
    if b:
        lines += [f"| the tab, from navigation until ready (headless Chromium) | {_harness.duration(b['load'])} "
                  f"| {b['requests']:.0f} requests ({b['data_requests']:.0f} to its routes), {_size(b['bytes'])} |",
                  f"| a closed block's `ffn` shortcut, until its matrix is drawn | {_harness.duration(b['ffn'])} | |",
                  f"| opening another block, until the matrices in view are drawn | "
                  f"{_harness.duration(b['open'])} | |"]
    elif c.get("browser"):
        lines.append(f"| the tab in headless Chromium | {entry['status']} | |")
    loads = r.get("browser_loads")
    if "tensorboard_load" in r:
        lines += ["", f"LLM-shaped run: {r['llm_layers']} layers, {r['llm_neurons']:,} neurons, {EPOCHS} epochs, "
                  f"both wrt; wide run: {WIDE:,} neurons, {WIDE_EPOCHS} epochs, both wrt; "
                  f"{_size(r['event_bytes'])} of event files, which TensorBoard served whole after "
                  f"{r['tensorboard_load']:.0f} s. Medians of {c['repeats']} requests after a warm-up"
                  + (f", and of {loads} page load{'s' if loads > 1 else ''}" if loads else "") + "."]
    return "\n".join(lines)
