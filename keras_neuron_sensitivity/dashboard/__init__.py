"""The "Neurons" dashboard: a TensorBoard plugin shipped with the package.

TensorBoard finds it through the `tensorboard_plugins` entry point
(`loader.NeuronsLoader`), so `tensorboard --logdir logs` shows the tab with no
extra step. `plugin.py` serves the runs' per-neuron tensors (binary for the
page, JSON for scripts), read through TensorBoard's data provider; `static/`
holds the front-end, plain JavaScript modules drawing on canvases, with no
build step.

Nothing here imports TensorFlow or Keras: TensorBoard loads this package at
start-up, and it must stay quick to import.
"""
