"""Compression: distillation, quantization and pruning (`python -m jaxscale.compress`)."""
