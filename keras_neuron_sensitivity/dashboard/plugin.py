"""The Neurons plugin: per-neuron sensitivities served as JSON, and the page.

Routes, under `/data/plugin/keras_neuron_sensitivity/`:

- `runs`: every run with per-neuron tensors and its layers,
  `{"runs": [{"run": name, "layers": [{"key": key, "wrt": [...]}]}]}`;
- `layer?run=RUN&layer=KEY`: one layer of one run, per `wrt`:
  `{"steps": [...], "values": [[C floats] per step], "errors": [null or
  [C floats] per step], "methods": [text per step]}`. A step has errors only
  when its values came from the estimator; its method is then "estimate"
  (or the text the callback logged, "estimate (32 probes)"), else "exact".
  Non-finite values are the strings "NaN", "Infinity" and "-Infinity";
- `static/<file>`: the front-end, whose entry is `static/index.js`.

Everything is read through TensorBoard's data provider, for the experiment
of the request, never from the files directly.
"""

import math
import os

from werkzeug import wrappers

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from tensorboard.plugins.text import metadata as text_metadata

from keras_neuron_sensitivity import tensorboard as layout

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
            layers = {}  # key -> wrts
            for tag in listing[run]:
                parsed = _parse_values_tag(tag)
                if parsed:
                    wrt, key = parsed
                    layers.setdefault(key, []).append(wrt)
            if layers:
                order = self._model_order(ctx, experiment, run)
                keys = sorted(layers, key=lambda k: (order.get(k, len(order)), k))
                runs.append({
                    "run": run,
                    "layers": [{"key": k, "wrt": [w for w in WRT if w in layers[k]]} for k in keys],
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
    def _serve_layer(self, request):
        run, key = request.args.get("run"), request.args.get("layer")
        if not run or not key:
            raise errors.InvalidArgumentError(
                f"`layer` needs the query arguments `run` and `layer`; got "
                f"run={run!r}, layer={key!r}. Take both from the `runs` route."
            )
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        tags = [tag(wrt, key) for wrt in WRT for tag in (layout.values_tag, layout.error_tag)]
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
        result = {"run": run, "layer": key, "wrt": {}}
        for wrt in WRT:
            values = tensors.get(layout.values_tag(wrt, key))
            if not values:
                continue
            errors_at = {d.step: d.numpy for d in tensors.get(layout.error_tag(wrt, key), [])}
            steps = [d.step for d in values]
            result["wrt"][wrt] = {
                "steps": steps,
                "values": [_floats(d.numpy) for d in values],
                "errors": [
                    _floats(errors_at[s]) if s in errors_at else None for s in steps
                ],
                "methods": [
                    _method(methods.get(s, {}).get(wrt), estimated=s in errors_at)
                    for s in steps
                ],
            }
        return http_util.Respond(request, result, "application/json")

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
