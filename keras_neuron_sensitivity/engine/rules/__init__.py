"""The per-layer rules of the exact sweep, on `keras.ops`, one module per
layer family, and the table that maps layer classes to them (`table.py`,
filled by `defaults.py`)."""
