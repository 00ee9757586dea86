"""The key/value cache of a decoder LM's generation: every layer's keys and values, so each new
token costs one position instead of a pass over the whole prefix.

One layout for scanned and unscanned block stacks: keys and values stacked on a leading layer
axis, [layers, B, S, G, K] (G the kv heads), S the fixed maximum length (prompt bucket + new tokens). Rows may be
left-padded: `first_B` is each row's first real slot, so a token in slot s sits at RoPE position
s - first_B[b] and no query attends to a padding slot.
"""

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxscale.core import sharding

# Sharded like training activations: batch over the data axes, kv heads over the tensor axis.
LOGICAL_AXES = P('layers', 'batch', 'seq', 'kv_heads', 'kv')


@flax.struct.dataclass
class KVCache:
  keys: jax.Array     # [layers, B, S, G, K], in the model's compute dtype.
  values: jax.Array   # [layers, B, S, G, K]
  first_B: jax.Array  # int32 [B]: the first slot holding a real token (left padding before it).
  length: jax.Array   # int32 []: slots filled so far; the next token goes to this slot.

  @classmethod
  def create(cls, *, num_layers: int, batch: int, max_len: int, num_heads: int, head_dim: int,
             dtype, first_B=None) -> 'KVCache':
    shape = (num_layers, batch, max_len, num_heads, head_dim)
    first_B = jnp.zeros((batch,), jnp.int32) if first_B is None else first_B.astype(jnp.int32)
    return cls(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype), first_B=first_B,
               length=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.keys.shape[2]

  def positions(self, num_new: int):
    """(slots [L], RoPE positions [B, L]) of the next `num_new` tokens."""
    slots_L = self.length + jnp.arange(num_new, dtype=jnp.int32)
    return slots_L, jnp.maximum(slots_L[None, :] - self.first_B[:, None], 0)

  def attention_mask(self, slots_L):
    """[B, L, S]: the query in slot s sees the real slots up to and including s (causal)."""
    key_slots = jnp.arange(self.max_len, dtype=jnp.int32)[None, None, :]
    return (key_slots >= self.first_B[:, None, None]) & (key_slots <= slots_L[None, :, None])

  def constrain(self, mesh, rules) -> 'KVCache':
    """The cache laid out on `mesh` by the logical `rules` (inside jit)."""
    named = sharding.logical_to_named(LOGICAL_AXES, mesh, rules)
    return self.replace(keys=jax.lax.with_sharding_constraint(self.keys, named),
                        values=jax.lax.with_sharding_constraint(self.values, named))
