"""Compression through the same trainer: distillation, pruning and quantization-aware training,
which the train step applies; post-training quantization of a finished run is
`jaxscale.inference.ptq` (`python -m jaxscale.compress quantize`)."""
