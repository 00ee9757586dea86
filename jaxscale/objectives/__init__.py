"""Training objectives: how a batch of examples becomes model inputs, targets and loss weights."""
