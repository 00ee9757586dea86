"""LoRA (Hu et al. 2021): train a low-rank update of chosen weights, W + (alpha / rank) A B.

`config.lora.rank` > 0 turns it on: `add_adapters` gives every weight whose name matches
`config.lora.targets` an `Adapter` (A: [*in, rank], He-uniform; B: [rank, *out], zeros, so
training starts at the base model), and the optimizer trains the adapters only; the base
weights are frozen and, like every frozen parameter, left out of the run's checkpoints, which
hold just the adapters (and their optimizer state). They restore on top of the base
(`init_from`) the run started from.

Why not Qwix's `LoraProvider` or `flax.nnx.LoRA`: both adapt a matmul, Qwix by intercepting
the op and finding its weight among the module's parameters, nnx.LoRA by wrapping an
`nnx.Linear`. The models here keep fused weights (one QKV tensor, sliced per projection) and
call a shared einsum wrapper, so neither finds the weight. LoRA is instead applied to the weight
itself: before the forward, W <- W + (alpha / rank) A B (`merge`); x (W + s A B) is the same
function as x W + s (x A) B. This works unchanged for every model and for a scanned layer stack
(the adapters of a stack are stacked on its 'layers' axis, one update for all layers: nothing is
copied per layer). The extra cost per step is one rank-r product per adapted weight, small next
to the matmuls over a batch of tokens. Merging for export is the same operation, done once.

Which axes are the "input" of a weight comes from its logical axis names: a weight whose last
axis is 'embed' projects back into the residual stream (attention output, MLP output), and a
convolution kernel ends in 'conv_out', so all their other axes are inputs; any other weight
reads the residual stream through its first axis.
`dropout` drops input features of A (shared by the batch within a step), the weight-space
counterpart of dropping the adapter's input activations.
"""

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.models.layers import sharded_param

ADAPTER_SUFFIX = '_lora'
# Parameter names of adapters (their A and B), for freezing everything else.
ADAPTER_NAME = re.compile(rf'{ADAPTER_SUFFIX}\.(a|b)$')
NOT_AN_ADAPTER = rf'^(?!.*{ADAPTER_SUFFIX}\.(a|b)$)'


class Adapter(nnx.Module):
  """The low-rank update of one weight (or of a stack of per-layer weights)."""

  def __init__(self, weight: nnx.Param, *, rank: int, alpha: float, dropout: float,
               rngs: nnx.Rngs):
    axes = tuple(weight.get_metadata().get('out_sharding') or (None,) * weight.ndim)
    stacked = bool(axes) and axes[0] == 'layers'
    lead, core, core_axes = ((weight.shape[:1], weight.shape[1:], axes[1:]) if stacked
                             else ((), weight.shape, axes))
    # Projections back to the residual stream, and convolution kernels, read all but their last
    # axis; other weights read the residual stream through their first axis.
    in_ndim = len(core) - 1 if core_axes[-1] in ('embed', 'conv_out') else 1
    self.in_shape, self.out_shape = tuple(core[:in_ndim]), tuple(core[in_ndim:])
    lead_axes = axes[:1] if stacked else ()
    fan_in = math.prod(self.in_shape)
    # He-uniform on A, zeros on B: the update starts at 0, the base model unchanged.
    a_init = nnx.initializers.variance_scaling(2.0, 'fan_in', 'uniform', in_axis=-2, out_axis=-1)
    self.a = sharded_param(a_init, rngs.params(), (*lead, fan_in, rank),
                           (*lead_axes, core_axes[0], None))
    self.b = sharded_param(nnx.initializers.zeros, rngs.params(),
                           (*lead, rank, math.prod(self.out_shape)),
                           (*lead_axes, None, core_axes[in_ndim]))
    self.scale = alpha / rank
    self.dropout = dropout

  def delta(self, rng=None):
    """(alpha / rank) A B in the weight's shape; `rng` turns dropout on."""
    a = self.a[...]
    if rng is not None and self.dropout > 0:
      keep = jax.random.bernoulli(rng, 1 - self.dropout, a.shape[:-1] + (1,))
      a = jnp.where(keep, a / (1 - self.dropout), 0.0)
    update = jnp.einsum('...ir,...ro->...io', a, self.b[...]) * self.scale
    return update.reshape(update.shape[:-2] + self.in_shape + self.out_shape)



@validation.register_check
def check_lora(config):
  c = config.lora
  if c.rank < 0 or not 0 <= c.dropout < 1 or c.alpha <= 0:
    raise ConfigError(f'config.lora: rank={c.rank} must be >= 0 (0 = off), '
                      f'dropout={c.dropout} in [0, 1), alpha={c.alpha} > 0.')

def _parent(model, path):
  node = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


def _targets(model, patterns) -> list[tuple[tuple, str]]:
  """(parent module path, attribute) of every weight to adapt, by dotted-name regexes."""
  found = []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Param) or not path:
      continue
    name = '.'.join(str(key) for key in path)
    axes = node.get_metadata().get('out_sharding') or ()
    core_ndim = node.ndim - (1 if axes and axes[0] == 'layers' else 0)
    if core_ndim >= 2 and any(re.search(p, name) for p in patterns):
      found.append((tuple(path[:-1]), str(path[-1])))
  return found


def add_adapters(model, lora_config, rngs: nnx.Rngs):
  """Attaches an Adapter beside every targeted weight (in place); returns their names."""
  targets = _targets(model, tuple(lora_config.targets))
  if not targets:
    raise ValueError(f'config.lora.targets={tuple(lora_config.targets)!r} matches no weight '
                     'matrix of the model; see jaxscale.core.param_paths.named_leaves for the names.')
  for parent_path, attribute in targets:
    parent = _parent(model, parent_path)
    setattr(parent, attribute + ADAPTER_SUFFIX,
            Adapter(getattr(parent, attribute), rank=lora_config.rank, alpha=lora_config.alpha,
                    dropout=lora_config.dropout, rngs=rngs))
  return ['.'.join(map(str, (*p, a))) for p, a in targets]


def merge(model, rng=None):
  """Folds every adapter into its weight and removes it (in place); returns the model.

  The trainer runs it on a fresh copy of the model inside each step (with the step's rng for
  dropout); for export or generation, run it once on the restored model.
  """
  adapters = [(tuple(path[:-1]), str(path[-1])) for path, node in nnx.iter_graph(model)
              if isinstance(node, Adapter)]
  for index, (parent_path, attribute) in enumerate(adapters):
    parent = _parent(model, parent_path)
    adapter = getattr(parent, attribute)
    weight = getattr(parent, attribute[:-len(ADAPTER_SUFFIX)])
    key = None if rng is None else jax.random.fold_in(rng, index)
    weight[...] = weight[...] + adapter.delta(key).astype(weight.dtype)
    delattr(parent, attribute)
  return model


def has_adapters(model) -> bool:
  return any(isinstance(node, Adapter) for _, node in nnx.iter_graph(model))
