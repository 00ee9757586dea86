"""The fixed throughput comparison point (same shape as the nanodo baseline it is compared with).

  python benchmarks/train_throughput.py --config configs/bench_small.py
  python benchmarks/train_throughput.py --config configs/bench_small.py \
      --config.model.num_layers=8 --config.model.d_model=512 --config.model.num_heads=8 \
      --config.model.mlp_dim=2048
"""

from jaxscale.config import config_base


def get_config():
  c = config_base.get_base_config()
  c.batch_size = 16
  c.dataset.name = 'python_stdlib'  # Byte vocabulary of 256.
  c.dataset.seq_len = 256
  c.model.vocab_size = 256
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.mlp_activation = 'gelu'   # nanodo's MLP: Dense -> GELU -> Dense.
  c.model.tie_embeddings = True
  c.model.dtype = 'bfloat16'        # bf16 compute, fp32 parameters.
  c.optimizer.name = 'adamw'
  return c
