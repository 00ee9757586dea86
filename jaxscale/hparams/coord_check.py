"""Coordinate check (Yang et al. 2022, Tensor Programs V, and the `mup` README): train the same
model at several widths for a few steps and record the mean absolute activation of each layer type.
Under μP every curve stays flat in width; under the standard parametrisation the logits grow.

  python -m jaxscale.hparams coord-check --config configs/default.py \
      --widths 64,128,256,512,1024 --parametrization mup --png coord_check_mup.png

Each width is the config's model with its width (`d_model`, ViT's `width`) replaced and the MLP
width scaled with it (the heads keep their number, so head_dim grows). The steps are real train
steps of the run's optimizer, on the run's data, at the config's peak learning rate held constant
from step 0 (a warmup would hide the first steps). Activations come from `nnx.capture` of the
values the models sow (`layers.sow_for_capture`) in a separate forward pass on each step's batch,
so the training itself is the trainer's, unchanged.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxscale import objectives
from jaxscale.core import param_paths, sharding
from jaxscale.models import mup
from jaxscale.scaling.sweeps import run_config
from jaxscale.train import checks, optim, steps
from jaxscale.train.experiment import create_train_state, resolve_config

# What the models sow, in the order of the forward pass.
LAYER_TYPES = ('embedding_output', 'attention_output', 'mlp_output', 'logits')


def width_key(model_config) -> str:
  return 'd_model' if 'd_model' in model_config else 'width'


def config_at_width(config, width: int, parametrization: str, base_width: int):
  """`config` with the model at `width` (MLP scaled alike) and its parametrisation set, unscanned
  (sown values cannot leave a scan) and constant-LR from step 0."""
  config = ml_collections.ConfigDict(config.to_dict())
  model = config.model
  key = width_key(model)
  if 'mlp_dim' in model:
    model.mlp_dim = max(1, round(model.mlp_dim * width / model[key]))
  model[key] = width
  model.parametrization = parametrization
  model.mup_base_width = base_width if parametrization == 'mup' else model.get('mup_base_width', 0)
  model.scan_layers, model.remat_policy = False, 'none'
  config.optimizer.schedule, config.optimizer.warmup_steps = 'constant', 0
  return config


def _mean_abs_by_type(intermediates) -> dict:
  """{layer type: mean |activation|, averaged over the layers that sowed it}."""
  sizes = {}
  for path, value in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    names = [param_paths.key_name(k) for k in path]
    layer_type = next(n for n in names if n in LAYER_TYPES)
    sizes.setdefault(layer_type, []).append(jnp.mean(jnp.abs(value.astype(jnp.float32))))
  return {name: jnp.mean(jnp.stack(values)) for name, values in sizes.items()}


def _activation_probe(graphdef, objective):
  """A jitted forward pass that returns the mean |activation| per layer type."""

  @jax.jit
  def probe(params, model_state, batch):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    model.train()
    forward = nnx.capture(lambda m: objective(m, batch, train=True, rng=jax.random.key(0)),
                          nnx.Intermediate)
    _, intermediates = forward(model)
    return _mean_abs_by_type(intermediates)

  return probe


def _train_batches(config, num_steps: int):
  """The first `num_steps` training batches and the data's description (vocabulary, task)."""
  from jaxscale import data as data_lib  # TensorFlow loads here.
  datasets = data_lib.get_datasets(config.dataset, local_batch_size=config.batch_size,
                                   num_eval_batches=1, seed=config.seed)
  iterator = datasets.train.as_numpy_iterator()
  return [next(iterator) for _ in range(num_steps)], datasets


def sizes_at_width(config, batches, datasets) -> dict[str, list[float]]:
  """{layer type: [mean |activation| at each step]} for one width: step t's value is the forward
  pass on batch t after t updates."""
  config = resolve_config(config, datasets)
  checks.validate(config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  optimizer, lr_fn = optim.make_optimizer(config.optimizer, config.num_train_steps, config.model)
  graphdef, state, state_shardings = create_train_state(config, mesh, optimizer)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  objective = objectives.make(objectives.name_for(config, datasets.task), config)
  train_step, _ = steps.compile_steps(graphdef, optimizer, lr_fn, state_shardings, batch_sharding,
                                      sharding.replicated(mesh), objective=objective,
                                      seed=config.seed)
  probe = _activation_probe(graphdef, objective)
  per_step = []
  for batch in batches:
    batch = sharding.global_batch(batch, batch_sharding)
    per_step.append(jax.device_get(probe(state.params, state.model_state, batch)))
    state, _ = train_step(state, batch)
  return {name: [float(sizes[name]) for sizes in per_step] for name in per_step[0]}


def coordinate_check(config, widths, num_steps: int, parametrization: str = '') -> dict:
  """The command's JSON: {'parametrization', 'widths', 'steps', 'activations': {layer type:
  [[value per step] per width]}}. `parametrization` '' keeps the config's; μP without a
  `mup_base_width` takes the smallest width as the base."""
  parametrization = parametrization or config.model.get('parametrization', 'sp')
  if parametrization not in mup.PARAMETRIZATIONS:
    raise ValueError(f'--parametrization {parametrization!r}; choose one of '
                     f'{", ".join(mup.PARAMETRIZATIONS)}.')
  if num_steps < 1 or not widths:
    raise ValueError(f'Need at least one step and one width (got steps={num_steps}, '
                     f'widths={list(widths)}).')
  base_width = config.model.get('mup_base_width', 0) or min(widths)
  batches, datasets = _train_batches(config, num_steps)
  activations = {}
  for width in widths:
    sizes = sizes_at_width(config_at_width(config, width, parametrization, base_width), batches,
                           datasets)
    for name, values in sizes.items():
      activations.setdefault(name, []).append(values)
  ordered = {name: activations[name] for name in LAYER_TYPES if name in activations}
  return {'parametrization': parametrization, 'widths': list(widths),
          'steps': list(range(num_steps)), 'activations': ordered}


def plot(result: dict, path) -> None:
  """One panel per layer type: mean |activation| against width (log-log), a line per step."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  names = list(result['activations'])
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(result['steps'])))
  for ax, name in zip(axes[0], names):
    values_WxS = np.asarray(result['activations'][name])
    for step, color in zip(result['steps'], colors):
      ax.plot(result['widths'], values_WxS[:, step], 'o-', color=color, label=f'step {step}')
    ax.set(xscale='log', yscale='log', xlabel='width', title=name.replace('_', ' '))
    # At least a decade tall, so a flat curve does not look steep at a tight zoom.
    low, high = float(values_WxS.min()), float(values_WxS.max())
    ax.set_ylim(min(low, high / 10) / 1.5, high * 1.5)
    ax.set_xticks(result['widths'], [str(w) for w in result['widths']])
    ax.minorticks_off()
  axes[0][0].set_ylabel('mean |activation|')
  axes[0][-1].legend(fontsize='small')
  fig.suptitle(f'coordinate check, {result["parametrization"]}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jaxscale.hparams coord-check',
      description='Mean |activation| per layer type over the first train steps, per width (JSON '
                  'on stdout, plot as PNG). Flat in width under μP.')
  parser.add_argument('--config', required=True, help='run config file (file.py or file.py:arg)')
  parser.add_argument('--widths', default='64,128,256,512,1024',
                      help='comma-separated model widths (d_model; ViT: width)')
  parser.add_argument('--parametrization', default='', choices=('',) + mup.PARAMETRIZATIONS,
                      help="'sp' or 'mup' (default: the config's)")
  parser.add_argument('--steps', type=int, default=5, help='train steps to record')
  parser.add_argument('--png', default='', help='plot path (default: coord_check_<param>.png)')
  parser.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, as the trainer\'s --config.KEY=VALUE (repeatable)')
  args = parser.parse_args(argv)
  try:
    widths = [int(w) for w in args.widths.split(',') if w.strip()]
  except ValueError:
    parser.error(f'--widths {args.widths!r} must be comma-separated integers, e.g. 64,128,256.')
  config = run_config.apply_overrides(run_config.load_config_file(args.config), args.override)
  result = coordinate_check(config, widths, args.steps, args.parametrization)
  plot(result, args.png or f'coord_check_{result["parametrization"]}.png')
  json.dump(result, sys.stdout)
  sys.stdout.write('\n')
  return 0
