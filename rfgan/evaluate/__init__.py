"""Evaluation: reconstruction metrics, and using a trained run (eval, reconstruct). No Ray."""
