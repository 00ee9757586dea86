"""Knowledge distillation: the KD loss, a teacher run inside the student's train step, and the
errors for teachers that cannot teach."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxscale import objectives
from jaxscale.checkpoint import checkpointing
from jaxscale.compress import distill
from jaxscale.config import config_base
from jaxscale.core import param_paths
from jaxscale.inference import sampling
from jaxscale.metrics import flops, writers
from jaxscale.models import build
from jaxscale.train import experiment, loop
from tests.helpers import digits_config, random_batch, tiny_config

# The student sees 5% of the digits' training labels (75 images); the teacher was trained on all
# of them, so its soft labels on those images carry what the student's hard labels lack.
STUDENT = {'num_train_steps': 100, 'dataset.train_fraction': 0.05, 'model.hidden_dims': (32,),
           'optimizer.warmup_steps': 10}


def _digits(data_dir, **overrides):
  return digits_config(data_dir, **{'log_every_steps': 20, 'eval_every_steps': 1000,
                                    'checkpoint_every_steps': 1000, **overrides})


def _host(params) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf)
          for name, leaf in param_paths.named_leaves(params).items()}


@pytest.fixture(scope='module')
def teacher(digits_mlp_run):
  """The MLP at hidden width 64, trained on all the labels."""
  return digits_mlp_run[0]


@pytest.fixture(scope='module')
def alone(data_dir, tmp_path_factory):
  return loop.run(_digits(data_dir, **STUDENT), str(tmp_path_factory.mktemp('alone')))


@pytest.fixture(scope='module')
def distilled(data_dir, teacher, tmp_path_factory):
  """(experiment, the teacher's params before training, summary, workdir) of the same student
  as `alone`, distilled."""
  workdir = tmp_path_factory.mktemp('distilled')
  config = _digits(data_dir, **STUDENT, **{'distill.teacher_workdir': str(teacher),
                                           'distill.temperature': 4.0, 'distill.alpha': 0.9})
  built = experiment.build(config, str(workdir))
  before = _host(built.teacher.variables[0])
  return built, before, loop.train_loop(built), workdir


def test_a_distilled_student_beats_the_same_student_trained_alone(alone, distilled, teacher):
  built, _, summary, workdir = distilled
  # Same init, same batches; the margins are a third of what it gains on an idle CPU.
  assert summary['eval_accuracy'] >= alone['eval_accuracy'] + 0.02, (summary, alone)
  assert summary['eval_loss'] <= alone['eval_loss'] - 0.07, (summary, alone)
  rows = [r for r in writers.read_jsonl(workdir / 'metrics.jsonl') if 'train_kd_loss' in r]
  assert [r['step'] for r in rows] == [20, 40, 60, 80, 100]
  assert 0 < rows[-1]['train_kd_loss'] < rows[0]['train_kd_loss']
  assert rows[-1]['train_hard_loss'] > 0
  assert 0.5 < rows[-1]['train_teacher_agreement'] <= 1
  # The teacher's forward pass is counted exactly: its two matmuls, 8x8x3 pixels -> 64 -> 10.
  # (Not a third of its training FLOPs: backward skips the first layer's input gradient.)
  teacher_forward = 2 * (192 * 64 + 64 * 10)
  teacher_config = ml_collections.ConfigDict(json.loads((teacher / 'config.json').read_text()))
  assert flops.accounting(teacher_config).forward_flops_per_example == teacher_forward
  assert summary['flops_per_example'] == pytest.approx(
      alone['flops_per_example'] + teacher_forward)
  assert summary['flops_seen'] == pytest.approx(100 * 64 * summary['flops_per_example'])


def test_the_teacher_is_read_never_trained_nor_saved(distilled, teacher):
  built, before, _, workdir = distilled
  assert _host(built.teacher.variables[0]).keys() == before.keys()
  for name, value in _host(built.teacher.variables[0]).items():
    np.testing.assert_array_equal(value, before[name])
  teacher_model, _ = sampling.restore_model(teacher)
  for name, value in _host(nnx.state(teacher_model, nnx.Param)).items():
    np.testing.assert_array_equal(value, before[name])  # Its final checkpoint, exactly.
  # The student's checkpoints hold the student (hidden width 32), none of the teacher's (64).
  reader = checkpointing.read_only_manager(workdir)
  saved = checkpointing.saved_params(reader, 100)
  tree = reader.item_metadata(100)['state']
  reader.close()
  assert set(getattr(tree, 'tree', tree)) == {'step', 'params', 'model_state', 'opt_state',
                                              'skipped_updates'}
  assert {name: tuple(meta.shape) for name, (_, meta) in saved.items()} == {
      'hidden.0.kernel': (192, 32), 'hidden.0.bias': (32,), 'head.kernel': (32, 10),
      'head.bias': (10,)}


# ----------------------------------------------------------------------------- the KD loss


def _distill_config(**overrides):
  c = config_base.get_base_config().distill
  c.update(overrides)
  return c


def _split(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, (params, rest)


def _lm_and_batch(seed):
  config = tiny_config(**{'model.num_layers': 1})
  model = build.build_model(config.model, seed)
  batch = {k: jnp.asarray(v) for k, v in random_batch(4, 16, 64).items()}
  batch['weights'] = batch['weights'].at[:, -5:].set(0.0)  # Padding: no loss there.
  return model, batch


def _mlp_and_batch(seed):
  model_config = ml_collections.ConfigDict(dict(name='mlp', num_classes=10, image_size=8,
                                                hidden_dims=(16,), channels=1))
  images = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  batch = {'image': images, 'labels': jax.nn.one_hot(jnp.arange(6) % 10, 10),
           'weights': jnp.ones((6,))}
  return build.build_model(model_config, seed), batch


@pytest.mark.parametrize('task, make', [('lm', _lm_and_batch),
                                        ('classification', _mlp_and_batch)])
def test_the_kd_loss_is_zero_when_the_student_is_its_teacher(task, make):
  student, batch = make(seed=0)
  other, _ = make(seed=1)
  sums = distill.objective(objectives.make(task), _split(student)[0],
                           _distill_config(temperature=1.0, alpha=1.0))
  itself = sums(student, batch, train=True, rng=jax.random.key(0), teacher=_split(student)[1])
  assert abs(float(itself['loss_sum'])) < 1e-4
  assert float(itself['logged_sums']['teacher_agreement']) == float(itself['weight_sum'])
  taught = sums(student, batch, train=True, rng=jax.random.key(0), teacher=_split(other)[1])
  assert float(taught['loss_sum']) > 1e-2 * float(taught['weight_sum'])
  np.testing.assert_allclose(taught['loss_sum'], taught['logged_sums']['kd_loss'])
  # Without a teacher (the eval step) it is the plain objective.
  plain = objectives.make(task)(student, batch, train=False, rng=jax.random.key(0))
  evaluated = sums(student, batch, train=False, rng=jax.random.key(0))
  assert evaluated.keys() == plain.keys()
  np.testing.assert_allclose(evaluated['loss_sum'], plain['loss_sum'])


def test_the_kd_term_is_the_tempered_kl_times_t_squared():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
  weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])

  def reference(top_k):
    total = 0.0
    for index in np.ndindex(weights.shape):
      s, t = student[index] / 2.0, teacher[index] / 2.0
      keep = np.argsort(-t)[:top_k] if top_k else np.arange(7)
      p_t = np.exp(t[keep]) / np.exp(t[keep]).sum()
      p_s = np.exp(s[keep]) / np.exp(s[keep]).sum()
      total += weights[index] * 4.0 * np.sum(p_t * np.log(p_t / p_s))
    return total

  for top_k in (0, 3):
    result = distill.kd_sums(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights),
                             temperature=2.0, top_k=top_k)
    np.testing.assert_allclose(float(result['kd_loss']), reference(top_k), rtol=1e-5)
  agreement = (student.argmax(-1) == teacher.argmax(-1)) * weights
  np.testing.assert_allclose(float(result['teacher_agreement']), agreement.sum(), rtol=1e-6)


# ---------------------------------------------------------------------------- bad teachers


def _fake_teacher(teacher, tmp_path, *, finished=True, **model):
  """A copy of the teacher's record (config.json and maybe summary.json) with model keys changed."""
  fake = tmp_path / 'fake_teacher'
  fake.mkdir()
  config = json.loads((teacher / 'config.json').read_text())
  config['model'].update(model)
  (fake / 'config.json').write_text(json.dumps(config))
  if finished:
    shutil.copy(teacher / 'summary.json', fake / 'summary.json')
  return fake


@pytest.mark.parametrize('case', ['missing', 'unfinished', 'other_classes', 'lm_teacher'])
def test_a_teacher_that_cannot_teach_is_an_error_naming_both_runs(case, data_dir, teacher,
                                                                  tmp_path):
  teacher_dir, expected = {
      'missing': lambda: (tmp_path / 'nowhere', 'does not exist'),
      'unfinished': lambda: (_fake_teacher(teacher, tmp_path, finished=False), 'unfinished'),
      'other_classes': lambda: (_fake_teacher(teacher, tmp_path, num_classes=5),
                                'model.num_classes=5 but this run predicts model.num_classes=10'),
      'lm_teacher': lambda: (_fake_teacher(teacher, tmp_path, num_classes=0, vocab_size=256),
                             'model.vocab_size=256 but this run predicts model.num_classes=10'),
  }[case]()
  student = tmp_path / 'student'
  config = _digits(data_dir, **STUDENT, **{'distill.teacher_workdir': str(teacher_dir)})
  with pytest.raises(distill.TeacherError, match=expected) as error:
    experiment.build(config, str(student))
  assert str(teacher_dir) in str(error.value) and str(student) in str(error.value)
  assert not student.exists()  # Nothing written.
