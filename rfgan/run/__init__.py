"""Running training: the Ray Train worker loop and TorchTrainer driver, checkpoints, and run artifacts."""
