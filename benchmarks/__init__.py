"""The benchmarks: one harness (`python -m benchmarks`), stored results, generated tables.

See docs/benchmarks.md. `benchmarks.models` is shared with the tests.
"""
