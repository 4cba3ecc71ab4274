"""The GAN: generators and discriminators, VGG features, losses, building a GAN from a config, and the training
step. Pure PyTorch, no Ray: all of it is testable in plain pytest."""
