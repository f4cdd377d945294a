"""The `sensitivity` run: what is logged to TensorBoard, and reading it back.

One module per job:

- `tags`: the run's layout, its tag names and how a tensor is laid out;
- `histograms`: the buckets of a histogram summary;
- `pictures`: the heat-map images, drawn with Pillow, and when they are drawn;
- `events`: event files, hand-made for full-disk safety (its docstring);
- `writer`: `SensitivityWriter`, one epoch's values as one event;
- `reader`: a run read back, as TensorBoard's loader reads it.
"""
