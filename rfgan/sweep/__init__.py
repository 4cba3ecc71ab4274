"""Sweeps: the search space, the Ray Tune + Optuna runner, and the results table and plots."""
