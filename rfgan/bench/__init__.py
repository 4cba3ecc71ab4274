"""Benchmarks: rfgan's step against the reference loop (no Ray), and the data path and worker scaling (Ray)."""
