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
copied per layer). A fused weight gets one adapter per projection (Q, K and V each their own
rank-r update); `config.lora.targets` names them 'q', 'k', 'v', 'o', 'mlp_in', 'mlp_out', or
gives regexes of parameter names. The extra cost per step is one rank-r product per adapted
weight, small next to the matmuls over a batch of tokens. Merging for export is the same operation, done once.

Which axes are the "input" of a weight comes from its logical axis names: a weight whose last
axis is 'embed' projects back into the residual stream (attention output, MLP output), and a
convolution kernel ends in 'conv_out', so all their other axes are inputs; any other weight
reads the residual stream through its first axis.
`dropout` drops input features of A (shared by the batch within a step), the weight-space
counterpart of dropping the adapter's input activations; it is not Hu et al.'s per-example
dropout, which needs the adapter inside each model's matmuls rather than merged into the weight.
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
  """The low-rank update of one weight (or of a stack of per-layer weights).

  A fused weight [in, T, *out] (Q, K and V; SwiGLU's gate and input) is T projections: each of
  those in `slots` (default all) gets its own rank-r update, as separate weights would.
  """

  def __init__(self, weight: nnx.Param, *, rank: int, alpha: float, dropout: float,
               rngs: nnx.Rngs, slots=None):
    axes = tuple(weight.get_metadata().get('out_sharding') or (None,) * weight.ndim)
    stacked = bool(axes) and axes[0] == 'layers'
    lead, core, core_axes = ((weight.shape[:1], weight.shape[1:], axes[1:]) if stacked
                             else ((), weight.shape, axes))
    # Projections back to the residual stream, and convolution kernels, read all but their last
    # axis; other weights read the residual stream through their first axis.
    in_ndim = len(core) - 1 if core_axes[-1] in ('embed', 'conv_out') else 1
    self.in_shape = tuple(core[:in_ndim])
    fused = in_ndim == 1 and len(core) >= 3 and core_axes[1] is None
    if fused:
      self.num_slots = core[1]
      self.slots = tuple(range(core[1])) if slots is None else tuple(sorted(set(slots)))
      self.out_shape, out_axis = tuple(core[2:]), core_axes[2]
      part, part_axes = (len(self.slots),), (None,)
    else:
      self.num_slots, self.slots = 0, None
      self.out_shape, out_axis = tuple(core[in_ndim:]), core_axes[in_ndim]
      part, part_axes = (), ()
    lead_axes = axes[:1] if stacked else ()
    fan_in = math.prod(self.in_shape)
    # He-uniform on A over its own fan-in: the layers and slot axes are batch axes, not a
    # receptive field, so a scanned stack's A has the scale of a single layer's. Zeros on B: the
    # update starts at 0, the base model unchanged.
    a_init = nnx.initializers.variance_scaling(2.0, 'fan_in', 'uniform', in_axis=-2, out_axis=-1,
                                               batch_axis=tuple(range(len(lead) + len(part))))
    self.a = sharded_param(a_init, rngs.params(), (*lead, *part, fan_in, rank),
                           (*lead_axes, *part_axes, core_axes[0], None))
    self.b = sharded_param(nnx.initializers.zeros, rngs.params(),
                           (*lead, *part, rank, math.prod(self.out_shape)),
                           (*lead_axes, *part_axes, None, out_axis))
    self.scale = alpha / rank
    self.dropout = dropout

  def delta(self, rng=None):
    """(alpha / rank) A B in the weight's shape; `rng` turns dropout on."""
    a = self.a[...]
    if rng is not None and self.dropout > 0:
      keep = jax.random.bernoulli(rng, 1 - self.dropout, a.shape[:-1] + (1,))
      a = jnp.where(keep, a / (1 - self.dropout), 0.0)
    update = jnp.einsum('...ir,...ro->...io', a, self.b[...]) * self.scale
    if self.slots is None:
      return update.reshape(update.shape[:-2] + self.in_shape + self.out_shape)
    update = jnp.moveaxis(update, -3, -2)  # [..., slots, in, out] -> [..., in, slots, out]
    if len(self.slots) < self.num_slots:  # Projections without an adapter are left as they are.
      full = jnp.zeros(update.shape[:-2] + (self.num_slots, update.shape[-1]), update.dtype)
      update = full.at[..., jnp.asarray(self.slots), :].set(update)
    return update.reshape(update.shape[:-3] + self.in_shape + (self.num_slots,) + self.out_shape)


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


# Target names for the projections, as the LoRA paper names them: a fused QKV weight's slot or
# a whole weight. Any other target is a regex of parameter names (e.g. 'qkv', 'out_HxKxD').
# Under grouped-query attention the queries have their own weight and K and V share a fused one.
_QKV, _Q, _KV = r'(^|\.)qkv_DxTxHxK$', r'(^|\.)q_DxHxK$', r'(^|\.)kv_DxTxGxK$'
PROJECTIONS = {'q': ((_QKV, 0), (_Q, None)), 'k': ((_QKV, 1), (_KV, 0)),
               'v': ((_QKV, 2), (_KV, 1)), 'o': ((r'(^|\.)out_HxKxD$', None),),
               'mlp_in': (('mlp_in', None),), 'mlp_out': (('mlp_out', None),)}


def _targets(model, targets) -> list[tuple[tuple, str, tuple | None]]:
  """(parent module path, attribute, slots or None for all) of every weight to adapt."""
  rules = [rule for t in targets for rule in PROJECTIONS.get(t, ((t, None),))]
  found = []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Param) or not path:
      continue
    name = '.'.join(str(key) for key in path)
    axes = node.get_metadata().get('out_sharding') or ()
    core_ndim = node.ndim - (1 if axes and axes[0] == 'layers' else 0)
    slots = [slot for pattern, slot in rules if re.search(pattern, name)]
    if core_ndim >= 2 and slots:
      found.append((tuple(path[:-1]), str(path[-1]), None if None in slots else tuple(slots)))
  return found


def add_adapters(model, lora_config, rngs: nnx.Rngs):
  """Attaches an Adapter beside every targeted weight (in place); returns their names."""
  targets = _targets(model, tuple(lora_config.targets))
  if not targets:
    raise ValueError(f'config.lora.targets={tuple(lora_config.targets)!r} matches no weight '
                     'matrix of the model; see jaxscale.core.param_paths.named_leaves for the names.')
  for parent_path, attribute, slots in targets:
    parent = _parent(model, parent_path)
    setattr(parent, attribute + ADAPTER_SUFFIX,
            Adapter(getattr(parent, attribute), rank=lora_config.rank, alpha=lora_config.alpha,
                    dropout=lora_config.dropout, rngs=rngs, slots=slots))
  return ['.'.join(map(str, (*p, a))) for p, a, _ in targets]


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
