"""Compression through the same trainer: distillation, pruning and quantization
(`python -m jaxscale.compress`)."""
