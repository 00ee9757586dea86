"""Knowledge distillation (Hinton et al. 2015): a finished run teaches this one.

`load_teacher` rebuilds the teacher run's model from its `config.json` and restores its newest
checkpoint's variables straight into shardings of the student's mesh, by the student's logical
rules, whatever mesh the teacher trained on. `objective` wraps the run's objective ('lm' per
token, or 'classification'): the train step passes the teacher's arrays in, the teacher runs in
eval mode on exactly the inputs the student sees (the augmented, mixed batch) under
`stop_gradient`, and

  loss = alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * hard-label loss,

with both softmaxes at temperature T (T^2 keeps the KD gradients' scale as T changes). With
`top_k`, the KD term compares the two distributions renormalised over the teacher's top-k
classes or tokens only (large vocabularies). The teacher is no part of the TrainState: it is
never updated nor saved in the student's checkpoints, and eval steps score the student alone.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax import nnx

from jaxscale.checkpoint import checkpointing, restore
from jaxscale.config import validation, workdir as workdir_lib
from jaxscale.config.validation import ConfigError
from jaxscale.core import param_paths, paths, sharding
from jaxscale.metrics import flops
from jaxscale.models import build

SUPPORTED_OBJECTIVES = ('lm', 'classification')


@validation.register_check
def check_distill(config):
  d = config.distill
  if d.temperature <= 0 or not 0 <= d.alpha <= 1 or d.top_k < 0:
    raise ConfigError(f'config.distill: temperature={d.temperature} must be > 0, alpha={d.alpha} '
                      f'in [0, 1] and top_k={d.top_k} >= 0 (0 = every class or token).')


class TeacherError(ConfigError):
  pass


@dataclasses.dataclass
class Teacher:
  workdir: epath.Path
  config: ml_collections.ConfigDict   # The teacher run's resolved config.
  step: int                           # Its checkpoint the variables come from.
  graphdef: Any
  variables: tuple                    # (params, model_state), sharded on the student's mesh.
  shardings: tuple                    # Their NamedShardings (the step's in_shardings).
  forward_flops_per_example: float    # One forward pass on one student example.


def _output(config) -> tuple[str, int]:
  """What the model predicts, for the compatibility check: classes or a vocabulary."""
  model = config.model
  if model.get('num_classes'):
    return 'model.num_classes', model.num_classes
  return 'model.vocab_size', model.get('vocab_size')


def check_teacher_run(config, student_workdir, objective_name: str):
  """(teacher workdir, its config), or a TeacherError naming both runs; reads two JSON files."""
  teacher = paths.resolve(config.distill.teacher_workdir)
  student = paths.resolve(student_workdir)
  where = f'config.distill.teacher_workdir={teacher} (teaching {student})'
  if objective_name not in SUPPORTED_OBJECTIVES:
    raise TeacherError(f'{where}: distillation works with the objectives '
                       f'{SUPPORTED_OBJECTIVES}; this run uses {objective_name!r}.')
  if not teacher.exists():
    raise TeacherError(f'{where}: the teacher workdir does not exist.')
  try:
    teacher_config = workdir_lib.read_config(teacher)
  except FileNotFoundError:
    raise TeacherError(f'{where}: the teacher workdir has no config.json; it is not a jaxscale '
                       'run.') from None
  summary = workdir_lib.read_summary(teacher)
  if not (summary or {}).get('finished'):
    raise TeacherError(f'{where}: the teacher run is unfinished (no summary.json marking it '
                       'finished); train it to its num_train_steps first.')
  teacher_key, teacher_size = _output(teacher_config)
  student_key, student_size = _output(config)
  if (teacher_key, teacher_size) != (student_key, student_size):
    raise TeacherError(f'{where}: the teacher predicts {teacher_key}={teacher_size} but this '
                       f'run predicts {student_key}={student_size}; a teacher must predict the '
                       'same classes or vocabulary as its student.')
  teacher_image = teacher_config.model.get('image_size')
  if teacher_image and teacher_image != config.dataset.image_size:
    raise TeacherError(f'{where}: the teacher takes {teacher_image}x{teacher_image} images but '
                       f'this run feeds {config.dataset.image_size}x{config.dataset.image_size} '
                       '(config.dataset.image_size); they must match.')
  return teacher, teacher_config


def _restore_variables(teacher: epath.Path, teacher_config, mesh, rules):
  """(graphdef, (params, model_state), shardings, step) of the teacher's newest checkpoint."""
  reader = checkpointing.read_only_manager(teacher)
  step = reader.latest_step()
  if step is None:
    raise TeacherError(f'config.distill.teacher_workdir={teacher} holds no checkpoint.')
  saved = set(checkpointing.saved_params(reader, step))
  reader.close()
  abstract = nnx.eval_shape(lambda: build.model_for(teacher_config))
  graphdef, abstract_params, abstract_rest = nnx.split(abstract, nnx.Param, ...)
  if set(param_paths.named_leaves(abstract_params)) - saved:
    # A LoRA or frozen-backbone teacher: its checkpoints hold part of its parameters only.
    model, _ = restore.restore_model(teacher, step)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shardings = (sharding.state_shardings(params, mesh, rules),
                 sharding.state_shardings(rest, mesh, rules))
    return graphdef, jax.device_put((params, rest), shardings), shardings, step
  shardings = (sharding.state_shardings(abstract_params, mesh, rules),
               sharding.state_shardings(abstract_rest, mesh, rules))
  fields = {'params': sharding.abstract_arrays(abstract_params, shardings[0])}
  if jax.tree.leaves(abstract_rest):  # Batch-norm statistics.
    fields['model_state'] = sharding.abstract_arrays(abstract_rest, shardings[1])
  manager = checkpointing.read_only_manager(teacher)
  restored = checkpointing.restore_fields(manager, step, fields)
  manager.close()
  variables = (restored['params'], restored.get('model_state', abstract_rest))
  return graphdef, variables, shardings, step


def load_teacher(config, student_workdir, objective_name: str, mesh) -> Teacher:
  """The teacher of `config` (the student's resolved config), restored onto `mesh`. Raises a
  TeacherError naming both runs, before the student's workdir is touched, for a teacher that
  is missing, unfinished, or predicts other classes or another vocabulary."""
  teacher, teacher_config = check_teacher_run(config, student_workdir, objective_name)
  graphdef, variables, shardings, step = _restore_variables(teacher, teacher_config, mesh,
                                                            config.mesh.rules)
  cost_config = ml_collections.ConfigDict(teacher_config.to_dict())
  cost_config.dataset.seq_len = config.dataset.seq_len  # The student's examples.
  forward = flops.accounting(cost_config).forward_flops_per_example
  return Teacher(workdir=teacher, config=teacher_config, step=step, graphdef=graphdef,
                 variables=variables, shardings=shardings, forward_flops_per_example=forward)


# --------------------------------------------------------------------------------- the loss


def kd_sums(student_logits, teacher_logits, weights, *, temperature: float, top_k: int = 0
            ) -> dict:
  """Weighted sums over the batch (or tokens) of the KD term KL(teacher_T || student_T) * T^2
  and of top-1 agreement between the two models."""
  student_t = student_logits.astype(jnp.float32) / temperature
  teacher_t = teacher_logits.astype(jnp.float32) / temperature
  if top_k and top_k < teacher_t.shape[-1]:
    teacher_t, top_indices = jax.lax.top_k(teacher_t, top_k)
    student_t = jnp.take_along_axis(student_t, top_indices, axis=-1)
  kl = optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(student_t), jax.nn.log_softmax(teacher_t)) * temperature ** 2
  agree = jnp.argmax(student_logits, axis=-1) == jnp.argmax(teacher_logits, axis=-1)
  return {'kd_loss': jnp.sum(kl * weights), 'teacher_agreement': jnp.sum(agree * weights)}


def objective(base, teacher_graphdef, distill_config):
  """The distillation objective around `base` (an objective's `sums`): with a teacher passed
  in, loss_sum mixes the KD and hard losses and `logged_sums` adds kd_loss, hard_loss and
  teacher_agreement; without one (eval) it is `base` unchanged."""
  temperature, alpha, top_k = distill_config.temperature, distill_config.alpha, distill_config.top_k

  def sums(model, batch, *, train: bool, rng, teacher=None):
    if teacher is None:
      return base(model, batch, train=train, rng=rng)
    calls = []

    def student(*inputs):  # Records the inputs the base objective feeds the model.
      logits = model(*inputs)
      calls.append((inputs, logits))
      return logits

    hard = base(student, batch, train=train, rng=rng)
    if len(calls) != 1:
      raise ValueError(f'Distillation needs an objective that runs the model once per batch; '
                       f'it ran {len(calls)} times.')
    inputs, student_logits = calls[0]
    teacher_model = nnx.merge(teacher_graphdef, *teacher, copy=True)
    teacher_model.eval()
    teacher_logits = jax.lax.stop_gradient(teacher_model(*inputs))
    weights = batch['weights']
    if weights.shape != student_logits.shape[:-1]:
      raise ValueError(f'Batch weights of shape {weights.shape} do not match the logits '
                       f'{student_logits.shape}: distillation needs one weight per prediction.')
    kd = kd_sums(student_logits, teacher_logits, weights, temperature=temperature, top_k=top_k)
    result = dict(hard)
    result['loss_sum'] = alpha * kd['kd_loss'] + (1 - alpha) * hard['loss_sum']
    result['logged_sums'] = {'kd_loss': kd['kd_loss'], 'hard_loss': hard['loss_sum'],
                             'teacher_agreement': kd['teacher_agreement']}
    return result

  return sums
