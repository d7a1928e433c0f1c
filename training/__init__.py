"""Training: a numpy MLP with batch normalization, its optimizers, data and run directories."""
