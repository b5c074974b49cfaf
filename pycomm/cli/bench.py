"""``pycomm bench``: benchmarks that run pycomm and its anchor side by side (placeholder wiring; the
harness lives in pycomm.benchmarks)."""
