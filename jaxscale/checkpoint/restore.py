"""A trained model and its config from a workdir: what generation, export, serving,
distillation and the converters all start from."""

import jax
import ml_collections
from flax import nnx

from jaxscale.checkpoint import checkpointing, hf, init_from
from jaxscale.config import workdir as workdir_lib
from jaxscale.core import param_paths, paths
from jaxscale.models import build, lora


def restore_model(workdir, step: int | None = None,
                  merge_lora: bool = True) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(model, config) with the variables of the newest checkpoint in `workdir` (or of `step`).

  Only the model's variables are read (not the optimizer state or data position), onto the
  first local device, whatever mesh the run trained on. Frozen parameters, which a run does not
  checkpoint (a LoRA run's base, a frozen backbone), come from where the run took them: its
  `init_from` source, or its seeded initialisation. LoRA adapters are merged into their weights
  (`merge_lora`), so the model is a plain one, ready for generation or export.
  """
  workdir = paths.resolve(workdir)
  config = workdir_lib.read_config(workdir)
  # Read as a plain pytree, so any subset of the train state's fields can be restored.
  manager = checkpointing.read_only_manager(workdir)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {workdir / "checkpoints"}; train first.')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  on_device = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  abstract_model = nnx.eval_shape(lambda: build.model_for(config))
  graphdef, abstract_params, abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
  saved = set(checkpointing.saved_params(manager, step))
  is_saved = lambda path, _: param_paths.path_name(path) in saved
  params = abstract_params
  if set(param_paths.named_leaves(abstract_params)) - saved:  # Frozen ones: re-derive them.
    # Jitted, as the run initialised them: eager initialisers may round differently.
    params = jax.jit(lambda: nnx.state(build.model_for(config), nnx.Param),
                     out_shardings=device)()
    if config.get('init_from', {}).get('workdir'):
      params, _ = init_from.restore_params(config.init_from, params)
    elif config.get('init_from', {}).get('hf'):
      params, _ = hf.restore_params(config.init_from, params)
  # TrainState fields to read: the saved parameters, and other model variables (e.g. batch-norm
  # statistics) where the model has any.
  fields = {'params': on_device(abstract_params.filter(is_saved))}
  if jax.tree.leaves(abstract_rest):
    fields['model_state'] = on_device(abstract_rest)
  restored = checkpointing.restore_fields(manager, step, fields)
  manager.close()
  if params is not abstract_params:
    restored['params'] = nnx.merge_state(params.filter(nnx.Not(is_saved)), restored['params'])
  model = nnx.merge(graphdef, restored['params'], restored.get('model_state', abstract_rest))
  if merge_lora and lora.has_adapters(model):
    lora.merge(model)
  return model, config
