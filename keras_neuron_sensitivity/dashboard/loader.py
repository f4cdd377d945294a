"""How TensorBoard loads the Neurons plugin (the `tensorboard_plugins` entry point)."""

from tensorboard.plugins import base_plugin

from keras_neuron_sensitivity.tensorboard.tags import PLUGIN_NAME


class NeuronsLoader(base_plugin.TBLoader):
    """Loads `NeuronsPlugin`, keeping every logged step of its tensors.

    TensorBoard keeps a random sample of a third-party plugin's tensors, 10
    per tag by default (100 with the Rust data server), so a 15-epoch run
    would show 10 of its epochs. A neuron-by-epoch matrix needs every
    column: unless the user chose a number with
    `--samples_per_plugin keras_neuron_sensitivity=N`, keep all of them.
    They are small (one float per neuron and logged epoch).
    """

    def fix_flags(self, flags):
        samples = getattr(flags, "samples_per_plugin", None)
        if isinstance(samples, dict):
            samples.setdefault(PLUGIN_NAME, 0)  # 0: keep everything

    def load(self, context):
        # Imported here so that a failure to import the plugin cannot stop
        # TensorBoard from starting: it would only lose this tab.
        from keras_neuron_sensitivity.dashboard.plugin import NeuronsPlugin

        return NeuronsPlugin(context)
