"""Model compression through the same trainer: distillation, pruning and quantization."""
