"""The Neurons plugin: per-neuron sensitivities, served compactly, and the page.

Routes, under `/data/plugin/keras_neuron_sensitivity/`:

- `runs`: every run with per-neuron tensors and its layers in the model's
  order, `{"runs": [{"run": name, "layers": [{"key": key, "wrt": [...],
  "activity": bool}]}]}` (`activity`: the layer has neuron health).
  Keys are paths: `block/inner` for a nested model's layer or a site inside
  a layer (`.../ffn`, `.../self_attention/heads`); the page groups them.
- `matrix?run=RUN&layer=KEY[&max_steps=N]`: one layer of one run, binary
  (`application/octet-stream`, what the page reads). A little-endian
  uint32 `n`, then `n` bytes of JSON header (padded with spaces so that the
  body starts 4-byte aligned), then the body:
  `{"run", "layer", "heads": H or null, "wrt": {wrt: {"steps": [...],
  "logged_steps": count before downsampling, "methods": [...],
  "neurons": [C per step], "values": offset, "errors": null or {"columns":
  [...], "offset": offset}, "frozen": null or {"columns": [...],
  "offset": offset}}}}`. Offsets are in bytes from the body's start. At
  `values`, each step's C float32 (little-endian) back to back, exactly as
  written: NaN and Inf stay themselves, 0 stays 0, and a tiny positive
  value stays positive (float16 would turn values under 6e-8 into 0, a
  false "dead", and over 65504 into Inf). `errors`: the float32 standard
  errors of the listed columns (steps whose values came from the
  estimator). `frozen`: for the listed columns (sensitivity to weights
  only), one uint8 per neuron, 1 where nothing trainable is upstream. `H`:
  the number of heads of an attention-context site (neuron `h * C / H + d`).
  The header's `"activity"` is null, or the layer's neuron health:
  `{"steps", "logged_steps", "fields": [...], "neurons": [C per step],
  "offset": offset, "thresholds": [tau, saturation] or null}`: at `offset`
  (among the float32 arrays, after `values` and `errors`), each step's
  `len(fields)` rows of C float32 back to back (`tensorboard.tags.ACTIVITY_ROWS`:
  mean, mean |activation|, std, firing rate, tau-score, utility, slope, and
  the status's index in `health.STATUSES`).
- `layer?run=RUN&layer=KEY[&max_steps=N]`: the same as JSON, for scripts:
  `{"run", "layer", "heads", "wrt": {wrt: {"steps", "logged_steps",
  "values": [[C floats] per step], "errors": [null or [C floats] per step],
  "methods": [text per step], "frozen": [null or [C 0/1] per step]}},
  "activity": null or {"steps", "logged_steps", "fields", "thresholds",
  "values": [[[C floats] per field] per step]}}`.
  Non-finite values are the strings "NaN", "Infinity" and "-Infinity".
  About 18 bytes a value, 5x the binary route's 4, and slower to build.
- `static/<file>`: the front-end, whose entry is `static/index.js`.

`max_steps=N` keeps at most N logged steps, spread evenly from the first to
the last (both kept). A step's method is "estimate" (or the text the callback
logged, "estimate (32 probes)") when it has errors, else "exact".

Everything is read through TensorBoard's data provider, for the experiment
of the request, never from the files directly.
"""

import json
import math
import os
import struct

import numpy as np

from werkzeug import wrappers

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from tensorboard.plugins.text import metadata as text_metadata

from keras_neuron_sensitivity.tensorboard import tags as layout

WRT = ("weights", "inputs")
# Read every stored step: the loader already asked TensorBoard to keep them
# all, and each is one small vector.
_DOWNSAMPLE = 1_000_000
_STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


class NeuronsPlugin(base_plugin.TBPlugin):
    """The "Neurons" tab: every neuron of every layer over the logged epochs.

    Its name is the `plugin_name` the callback's per-neuron tensors carry, so
    the tab is enabled exactly when a run holds them.
    """

    plugin_name = layout.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider

    def get_plugin_apps(self):
        return {
            "/runs": self._serve_runs,
            "/layer": self._serve_layer,
            "/matrix": self._serve_matrix,
            "/static/*": self._serve_static,
        }

    def is_active(self):
        # TensorBoard already enables the plugin when the data provider
        # lists data under its name.
        return False

    def frontend_metadata(self):
        # The page has its own refresh button: TensorBoard's reload timer does
        # not reach into an iframed plugin.
        return base_plugin.FrontendMetadata(
            es_module_path="/static/index.js", tab_name="Neurons", disable_reload=True
        )

    @wrappers.Request.application
    def _serve_runs(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        listing = self._data_provider.list_tensors(
            ctx, experiment_id=experiment, plugin_name=self.plugin_name
        )
        runs = []
        for run in sorted(listing):
            layers, health = {}, set()  # key -> wrts; keys with activity
            for tag in listing[run]:
                parsed = _parse_values_tag(tag)
                if parsed:
                    wrt, key = parsed
                    layers.setdefault(key, []).append(wrt)
                elif tag.startswith(layout.ACTIVITY_PREFIX):
                    health.add(tag[len(layout.ACTIVITY_PREFIX):])
            if layers:
                order = self._model_order(ctx, experiment, run)
                keys = sorted(layers, key=lambda k: (order.get(k, len(order)), k))
                runs.append({
                    "run": run,
                    "layers": [
                        {"key": k, "wrt": [w for w in WRT if w in layers[k]], "activity": k in health}
                        for k in keys
                    ],
                })
        return http_util.Respond(request, {"runs": runs}, "application/json")

    def _model_order(self, ctx, experiment, run):
        """`{key: position}` of the layers in the model, from the last
        `dead_neurons` table (written in the model's order); `{}` without one.

        The data provider lists tags in no particular order (the Rust data
        server hashes them), and a model reads best from input to output.
        """
        texts = self._data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=text_metadata.PLUGIN_NAME,
            downsample=1,  # the latest table is always kept
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[layout.TEXT_TAG]),
        ).get(run, {}).get(layout.TEXT_TAG, [])
        order = {}
        for datum in texts[-1:]:
            for line in _text(datum).splitlines():
                # "| key | wrt | neurons | dead | ... |", one row per layer and wrt.
                cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
                if len(cells) >= 3 and cells[1] in WRT:
                    order.setdefault(cells[0], len(order))
        return order

    @wrappers.Request.application
    def _serve_matrix(self, request):
        layer = self._read_layer(request)
        return http_util.Respond(request, _binary(layer), "application/octet-stream")

    @wrappers.Request.application
    def _serve_layer(self, request):
        layer = self._read_layer(request)
        for series in layer["wrt"].values():
            series["values"] = [_floats(v) for v in series["values"]]
            series["errors"] = [None if e is None else _floats(e) for e in series["errors"]]
            series["frozen"] = [None if f is None else f.astype(int).tolist() for f in series["frozen"]]
        if layer["activity"] is not None:
            rows = layer["activity"].pop("rows")
            layer["activity"]["values"] = [[_floats(row) for row in step] for step in rows]
        return http_util.Respond(request, layer, "application/json")

    def _read_layer(self, request):
        """One layer of one run, as the `layer` and `matrix` routes serve it,
        with NumPy vectors: `{"run", "layer", "heads", "wrt": {wrt: {"steps",
        "logged_steps", "values", "errors", "methods", "frozen"}}, "activity":
        None or {"steps", "logged_steps", "fields", "thresholds", "rows"}}`."""
        run, key = request.args.get("run"), request.args.get("layer")
        if not run or not key:
            raise errors.InvalidArgumentError(
                f"`{request.path.rsplit('/', 1)[-1]}` needs the query arguments "
                f"`run` and `layer`; got run={run!r}, layer={key!r}. Take both "
                "from the `runs` route."
            )
        max_steps = _max_steps(request.args.get("max_steps"))
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        tags = [tag(wrt, key) for wrt in WRT for tag in (layout.values_tag, layout.error_tag)]
        tags += [layout.frozen_tag(key), layout.heads_tag(key), layout.activity_tag(key)]
        tags.append(layout.THRESHOLDS_TAG)
        tensors = self._data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=self.plugin_name,
            downsample=_DOWNSAMPLE,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
        ).get(run, {})
        if not any(layout.values_tag(wrt, key) in tensors for wrt in WRT):
            raise errors.NotFoundError(
                f"No per-neuron values for layer {key!r} in run {run!r}; "
                "the `runs` route lists the runs and layers there are."
            )
        methods = self._logged_methods(ctx, experiment, run)
        # Nothing trainable upstream is about the sensitivity to weights (to
        # the inputs, such a neuron has a value like any other).
        frozen_at = {d.step: d.numpy.ravel() > 0 for d in tensors.get(layout.frozen_tag(key), [])}
        heads = tensors.get(layout.heads_tag(key))
        result = {"run": run, "layer": key, "heads": int(heads[-1].numpy) if heads else None, "wrt": {}}
        result["activity"] = _activity(tensors, key, max_steps)
        for wrt in WRT:
            values = sorted(tensors.get(layout.values_tag(wrt, key), []), key=lambda d: d.step)
            if not values:
                continue
            errors_at = {d.step: d.numpy for d in tensors.get(layout.error_tag(wrt, key), [])}
            kept = [values[i] for i in _spread(len(values), max_steps)]
            steps = [d.step for d in kept]
            result["wrt"][wrt] = {
                "steps": steps,
                "logged_steps": len(values),
                "values": [d.numpy.ravel() for d in kept],
                "errors": [errors_at[s].ravel() if s in errors_at else None for s in steps],
                "methods": [
                    _method(methods.get(s, {}).get(wrt), estimated=s in errors_at)
                    for s in steps
                ],
                "frozen": [frozen_at.get(s) if wrt == "weights" else None for s in steps],
            }
        return result

    def _logged_methods(self, ctx, experiment, run):
        """`{step: {wrt: description}}` from the run's `method` text entries.

        TensorBoard keeps only a sample of text steps, so this may miss steps;
        the errors tensor alone then tells exact from estimate.
        """
        texts = self._data_provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=text_metadata.PLUGIN_NAME,
            downsample=_DOWNSAMPLE,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[layout.METHOD_TAG]),
        ).get(run, {}).get(layout.METHOD_TAG, [])
        methods = {}
        for datum in texts:
            for line in _text(datum).splitlines():
                # "- to weights: estimate (32 probes)", as the writer words it.
                if line.startswith("- to ") and ": " in line:
                    wrt, description = line[len("- to "):].split(": ", 1)
                    methods.setdefault(datum.step, {})[wrt] = description.strip()
        return methods

    @wrappers.Request.application
    def _serve_static(self, request):
        name = request.path.rsplit("/static/", 1)[-1]
        # Only files that exist in static/ itself, by exact name: no paths.
        if name not in _static_files():
            return http_util.Respond(request, f"Not found: {name}", "text/plain", code=404)
        with open(os.path.join(_STATIC_DIR, name), "rb") as file:
            body = file.read()
        content_type = _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
        return http_util.Respond(request, body, content_type)


def _static_files():
    return {
        name for name in os.listdir(_STATIC_DIR)
        if os.path.isfile(os.path.join(_STATIC_DIR, name))
    }


def _text(datum):
    """The string of a text summary's datum (a scalar string tensor)."""
    text = datum.numpy.item() if datum.numpy.size == 1 else b""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _parse_values_tag(tag):
    """`(wrt, key)` of a `per_neuron_to_{wrt}/{key}` tag, else None."""
    if not tag.startswith(layout.WRT_PREFIX):
        return None
    wrt, _, key = tag[len(layout.WRT_PREFIX):].partition("/")
    return (wrt, key) if wrt in WRT and key else None


def _max_steps(text):
    """The `max_steps` query argument: None (every step) or a positive int."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise errors.InvalidArgumentError(
            f"`max_steps` must be a positive integer; got {text!r}. Leave it "
            "out for every logged step."
        )
    return value


def _spread(count, max_steps):
    """Indices of at most `max_steps` of `count` steps, evenly spread from the
    first to the last (both kept; the last alone when `max_steps` is 1)."""
    if max_steps is None or count <= max_steps:
        return list(range(count))
    if max_steps == 1:
        return [count - 1]
    return sorted({int(i) for i in np.linspace(0, count - 1, max_steps).round()})


def _activity(tensors, key, max_steps):
    """A layer's neuron health as `_read_layer` gives it, or None."""
    rows = sorted(tensors.get(layout.activity_tag(key), []), key=lambda d: d.step)
    if not rows:
        return None
    thresholds = tensors.get(layout.THRESHOLDS_TAG)
    kept = [rows[i] for i in _spread(len(rows), max_steps)]
    return {
        "steps": [d.step for d in kept],
        "logged_steps": len(rows),
        "fields": list(layout.ACTIVITY_ROWS),
        "thresholds": [float(t) for t in thresholds[-1].numpy] if thresholds else None,
        "rows": [np.asarray(d.numpy, np.float32) for d in kept],
    }


def _binary(layer):
    """The `matrix` route's answer (its layout is in the module docstring)."""
    header = {"run": layer["run"], "layer": layer["layer"], "heads": layer["heads"], "wrt": {}}
    floats, masks = [], []  # (where the offset goes, its name, the vectors)
    for wrt, series in layer["wrt"].items():
        entry = header["wrt"][wrt] = {
            "steps": series["steps"],
            "logged_steps": series["logged_steps"],
            "methods": series["methods"],
            "neurons": [int(v.size) for v in series["values"]],
        }
        floats.append((entry, "values", series["values"]))
        for field, parts in (("errors", floats), ("frozen", masks)):
            columns = [i for i, v in enumerate(series[field]) if v is not None]
            entry[field] = {"columns": columns} if columns else None
            if columns:
                parts.append((entry[field], "offset", [series[field][i] for i in columns]))
    activity = layer.get("activity")
    header["activity"] = None
    if activity is not None:
        header["activity"] = {
            "steps": activity["steps"],
            "logged_steps": activity["logged_steps"],
            "fields": activity["fields"],
            "thresholds": activity["thresholds"],
            "neurons": [int(rows.shape[-1]) for rows in activity["rows"]],
        }
        floats.append((header["activity"], "offset", activity["rows"]))
    body, offset = [], 0
    # The float32 arrays first, so that each starts 4-byte aligned (as a
    # Float32Array must), then the uint8 masks.
    for parts, dtype in ((floats, "<f4"), (masks, "u1")):
        for target, name, vectors in parts:
            target[name] = offset
            for vector in vectors:
                body.append(np.asarray(vector).astype(dtype, copy=False).tobytes())
                offset += len(body[-1])
    text = json.dumps(header, allow_nan=False).encode()
    text += b" " * (-(4 + len(text)) % 4)
    return b"".join([struct.pack("<I", len(text)), text, *body])


def _floats(array):
    """A JSON-safe list: finite floats as numbers, the rest as strings."""
    out = []
    for value in array.ravel().tolist():
        if math.isfinite(value):
            out.append(value)
        else:
            out.append("NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    return out


def _method(logged, estimated):
    """The method of one step: the logged text if it agrees with the data."""
    if logged and ("estimate" in logged) == estimated:
        return logged
    return "estimate" if estimated else "exact"
