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

`dropout` > 0 (Hu et al.'s dropout on the adapter's input) cannot live in a merged weight: each
example, token and feature of the input gets its own mask. In training the adapters then stay
beside their weights (`apply`): the weight is read as a `LoraWeight`, and the model's einsum
(`layers.einsum_f32_accumulate`) computes x W + (alpha / rank) (dropout(x) A) B, low rank. Only
models whose matmuls go through that einsum (the transformer, ViT) support it. Evaluation (no
dropout) and dropout 0 merge as before, bit for bit.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config import validation
from jaxscale.config.validation import ConfigError
from jaxscale.models.layers import einsum_f32_accumulate, sharded_param

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

  def delta(self):
    """(alpha / rank) A B in the weight's shape."""
    a = self.a[...]
    update = jnp.einsum('...ir,...ro->...io', a, self.b[...]) * self.scale
    if self.slots is None:
      return update.reshape(update.shape[:-2] + self.in_shape + self.out_shape)
    update = jnp.moveaxis(update, -3, -2)  # [..., slots, in, out] -> [..., in, slots, out]
    if len(self.slots) < self.num_slots:  # Projections without an adapter are left as they are.
      full = jnp.zeros(update.shape[:-2] + (self.num_slots, update.shape[-1]), update.dtype)
      update = full.at[..., jnp.asarray(self.slots), :].set(update)
    return update.reshape(update.shape[:-3] + self.in_shape + (self.num_slots,) + self.out_shape)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=('w', 'a', 'b', 'key'),
                   meta_fields=('scale', 'dropout', 'in_shape', 'out_shape', 'slots', 'sliced'))
@dataclasses.dataclass(frozen=True)
class LoraWeight:
  """A weight read with its adapter beside it: what the model's einsum sees in training with
  dropout. Indexing and casting act on the weight (a fused weight's slot picks that slot's
  adapter, or none); `lora_einsum` computes the adapted matmul."""
  w: jax.Array
  a: jax.Array        # [*slots, fan_in, rank]; no 'layers' axis inside a scanned block.
  b: jax.Array        # [*slots, rank, prod(out_shape)]
  key: jax.Array      # Dropout randomness of this weight (one per layer in a stack).
  scale: float
  dropout: float
  in_shape: tuple
  out_shape: tuple
  slots: tuple | None  # A fused weight's adapted slots; None for a plain weight.
  sliced: bool = False

  @property
  def shape(self):
    return self.w.shape

  @property
  def ndim(self):
    return self.w.ndim

  def astype(self, dtype):
    return dataclasses.replace(self, w=self.w.astype(dtype), a=self.a.astype(dtype),
                               b=self.b.astype(dtype))

  def __getitem__(self, index):
    if index is Ellipsis:
      return self
    # A fused weight's slot, w[:, i]: that projection's own adapter, if it has one.
    if (self.slots is not None and not self.sliced and isinstance(index, tuple)
        and len(index) == 2 and index[0] == slice(None) and isinstance(index[1], int)):
      slot = index[1]
      if slot not in self.slots:
        return self.w[index]
      part = self.slots.index(slot)
      return dataclasses.replace(self, w=self.w[index], a=self.a[part], b=self.b[part],
                                 key=jax.random.fold_in(self.key, slot), sliced=True)
    raise TypeError(f'A LoRA weight with dropout is read whole or by fused slot, not [{index}].')

  def lora_einsum(self, spec: str, x, out_dtype=None):
    """einsum(spec, x, W) + scale * einsum(spec, dropout(x), A B), the update kept low rank."""
    out = einsum_f32_accumulate(spec, x, self.w, out_dtype)
    keep = jax.random.bernoulli(self.key, 1 - self.dropout, x.shape)
    dropped = jnp.where(keep, x / (1 - self.dropout), 0).astype(x.dtype)
    (x_axes, w_axes), out_axes = spec.split('->')[0].split(','), spec.split('->')[1]
    in_axes = ''.join(c for c in w_axes if c in x_axes)
    rest = ''.join(c for c in x_axes if c not in in_axes)
    if self.slots is not None and not self.sliced or w_axes != in_axes + w_axes[len(in_axes):]:
      # A whole fused weight (one einsum over all projections): the update in weight form.
      delta = self.update_in_weight_shape()
      update = einsum_f32_accumulate(spec, dropped, delta, jnp.float32)
    else:
      r = next(c for c in 'rzyxwvu' if c not in spec)
      a = self.a.reshape(*self.in_shape, self.a.shape[-1])
      b = self.b.reshape(self.b.shape[0], *self.out_shape)
      hidden = einsum_f32_accumulate(f'{x_axes},{in_axes}{r}->{rest}{r}', dropped, a)
      update = einsum_f32_accumulate(f'{rest}{r},{r}{w_axes[len(in_axes):]}->{out_axes}',
                                     hidden, b, jnp.float32)
    return (out.astype(jnp.float32) + self.scale * update).astype(out.dtype)

  def update_in_weight_shape(self):
    """A B of every adapted slot, laid out as the (fused) weight; zeros elsewhere."""
    update = jnp.einsum('...ir,...ro->...io', self.a, self.b)
    if self.slots is None or self.sliced:
      return update.reshape(self.w.shape)
    update = jnp.moveaxis(update, 0, 1)  # [slots, in, out] -> [in, slots, out]
    full = jnp.zeros((update.shape[0], self.w.shape[1], update.shape[-1]), update.dtype)
    full = full.at[:, jnp.asarray(self.slots)].set(update)
    return full.reshape(self.w.shape)


def apply(model, rng):
  """Puts every adapter beside its weight (in place) for a training forward with dropout: each
  weight becomes a `LoraWeight` with its own dropout key. Returns the model."""
  adapters = [(tuple(path[:-1]), str(path[-1])) for path, node in nnx.iter_graph(model)
              if isinstance(node, Adapter)]
  for index, (parent_path, attribute) in enumerate(adapters):
    parent = _parent(model, parent_path)
    adapter = getattr(parent, attribute)
    weight = getattr(parent, attribute[:-len(ADAPTER_SUFFIX)])
    key = jax.random.fold_in(rng, index)
    axes = weight.get_metadata().get('out_sharding') or ()
    if axes and axes[0] == 'layers':  # A scanned stack: one key per layer.
      key = jax.random.split(key, weight.shape[0])
    weight.set_value(LoraWeight(
        w=weight[...], a=adapter.a[...], b=adapter.b[...], key=key, scale=adapter.scale,
        dropout=adapter.dropout, in_shape=adapter.in_shape, out_shape=adapter.out_shape,
        slots=adapter.slots))
    delattr(parent, attribute)
  return model


def prepare(model, rng, train: bool):
  """The model of one forward: adapters merged into their weights, except in training with
  dropout, where they stay beside them (`apply`). In place; returns the model."""
  dropout = any(node.dropout > 0 for _, node in nnx.iter_graph(model) if isinstance(node, Adapter))
  if train and dropout:
    return apply(model, rng)
  return merge(model)


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


def adapted_slots(name: str, targets) -> tuple | None:
  """The slots of weight `name` (a parameter path or attribute) that `targets` adapt: None for
  the whole weight, () for none."""
  slots = [slot for t in targets for pattern, slot in PROJECTIONS.get(t, ((t, None),))
           if re.search(pattern, name)]
  return None if None in slots else tuple(sorted(set(slots)))


def _targets(model, targets) -> list[tuple[tuple, str, tuple | None]]:
  """(parent module path, attribute, slots or None for all) of every weight to adapt."""
  found = []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Param) or not path:
      continue
    name = '.'.join(str(key) for key in path)
    axes = node.get_metadata().get('out_sharding') or ()
    core_ndim = node.ndim - (1 if axes and axes[0] == 'layers' else 0)
    slots = adapted_slots(name, targets)
    if core_ndim >= 2 and slots != ():
      found.append((tuple(path[:-1]), str(path[-1]), slots))
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


def merge(model):
  """Folds every adapter into its weight and removes it (in place); returns the model.

  The trainer runs it on a fresh copy of the model inside each step (`prepare`); for export or
  generation, run it once on the restored model.
  """
  adapters = [(tuple(path[:-1]), str(path[-1])) for path, node in nnx.iter_graph(model)
              if isinstance(node, Adapter)]
  for parent_path, attribute in adapters:
    parent = _parent(model, parent_path)
    adapter = getattr(parent, attribute)
    weight = getattr(parent, attribute[:-len(ADAPTER_SUFFIX)])
    weight[...] = weight[...] + adapter.delta().astype(weight.dtype)
    delattr(parent, attribute)
  return model


def has_adapters(model) -> bool:
  return any(isinstance(node, Adapter) for _, node in nnx.iter_graph(model))
