"""A finished run put to use: text generation, KV-cache decoding, post-training quantization,
export (jax.export, SavedModel) and serving."""
