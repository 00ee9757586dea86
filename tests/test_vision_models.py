"""ViT, ResNet and MLP classifiers: shapes, published sizes, exact accounting, batch norm, training."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.experimental import roofline

from jaxscale.config import config_base, validation

from jaxscale.train import checks
from jaxscale.metrics import flops
from jaxscale.train import optim, steps
from jaxscale.core import sharding
from jaxscale.models import vit
from jaxscale.models import build
from jaxscale.train import experiment

IMAGE_SIZE, NUM_CLASSES = 16, 10
TINY_MODELS = {
    'vit': dict(patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64),
    'vit_gap': dict(patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64, pooling='gap'),
    'resnet18_cifar': dict(depth=18, width=8, stem='cifar'),
    'resnet50_imagenet': dict(depth=50, width=8, stem='imagenet'),
    'mlp': dict(hidden_dims=(64, 32), activation='gelu'),
}


def vision_config(name: str, **model) -> ml_collections.ConfigDict:
  """A resolved classification config (num_classes and image_size filled in)."""
  c = config_base.get_base_config()
  c.batch_size = 8
  c.num_train_steps = 10
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = 'constant'
  c.dataset.image_size = IMAGE_SIZE
  c.model = ml_collections.ConfigDict(
      {'name': name, 'num_classes': NUM_CLASSES, 'image_size': IMAGE_SIZE, **model})
  return c


def tiny_config(key: str, **overrides) -> ml_collections.ConfigDict:
  name = key.split('_')[0].rstrip('0123456789')
  return vision_config(name, **{**TINY_MODELS[key], **overrides})


def classification_batch(batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, batch_size)
  return {'image': rng.normal(size=(batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
          'labels': np.eye(NUM_CLASSES, dtype=np.float32)[labels],
          'weights': np.ones((batch_size,), np.float32)}


def param_count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(config):
  return nnx.eval_shape(lambda: build.build_model(config.model, 0))


@pytest.mark.parametrize('key', ['vit', 'vit_gap', 'resnet18_cifar', 'mlp'])
def test_bfloat16_forward_keeps_fp32_params_and_logits(key):
  config = tiny_config(key, dtype='bfloat16')
  checks.validate(config)
  model = build.build_model(config.model, 0)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  logits = nnx.jit(lambda m, x: m(x))(model, classification_batch(batch_size=3)['image'])
  assert logits.shape == (3, NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('key', sorted(TINY_MODELS))
def test_param_count_matches_the_model(key):
  config = tiny_config(key)
  assert flops.accounting(config).params_total == param_count(abstract_model(config))


@pytest.mark.parametrize('variant,published', [('S/16', 22_050_664), ('B/16', 86_567_656)])
def test_vit_sizes_have_published_param_counts(variant, published):
  config = vision_config('vit', **vit.size_config(variant))
  config.model.update(num_classes=1000, image_size=224)
  assert param_count(abstract_model(config)) == published
  assert flops.accounting(config).params_total == published


@pytest.mark.parametrize('depth,published', [(18, 11_689_512), (50, 25_557_032)])
def test_resnet_depths_have_published_param_counts(depth, published):
  config = vision_config('resnet', depth=depth, width=64, stem='imagenet', num_classes=1000)
  config.model.image_size = 224
  assert param_count(abstract_model(config)) == published
  assert flops.accounting(config).params_total == published


@pytest.mark.parametrize('name,model,published_gmacs', [
    ('resnet', dict(depth=18), 1.814), ('resnet', dict(depth=50), 4.089),
    ('vit', vit.size_config('B/16'), 17.56)])
def test_forward_flops_match_published_figures(name, model, published_gmacs):
  config = vision_config(name, **model)
  config.model.update(num_classes=1000, image_size=224)
  if name == 'resnet':
    cost = flops.resnet_cost(flops.model_kwargs(config))
  else:
    cost = flops.vit_cost(flops.model_kwargs(config))
  assert cost.forward_flops / 2e9 == pytest.approx(published_gmacs, rel=0.005)


def test_size_config_rejects_unknown_variants():
  assert vit.size_config('L/16') == dict(width=1024, depth=24, num_heads=16, mlp_dim=4096,
                                         patch_size=16)
  with pytest.raises(ValueError, match='SIZE/PATCH'):
    vit.size_config('XL/16')


@pytest.mark.parametrize('model,message', [
    (dict(name='resnet', depth=20), 'config.model.depth=20 is not allowed; choose one of: 18, 34'),
    (dict(name='resnet', stem='tiny'), "config.model.stem='tiny'"),
    (dict(name='vit', patch_size=5), 'config.model.patch_size=5 must divide the image size 16'),
    (dict(name='vit', pooling='max'), "config.model.pooling='max' is not allowed"),
    (dict(name='mlp', hidden_dims=(64, 0)), 'config.model.hidden_dims=(64, 0)'),
])
def test_validation_names_the_bad_model_key(model, message):
  config = vision_config(**model)
  with pytest.raises(validation.ConfigError, match=message.replace('(', r'\(')
                     .replace(')', r'\)')):
    checks.validate(config)


def test_gradient_accumulation_with_batch_norm_is_refused_at_validation():
  resnet = tiny_config('resnet18_cifar')
  resnet.optimizer.grad_accum_steps = 2
  with pytest.raises(validation.ConfigError,
                     match=r"grad_accum_steps=2 with model 'resnet', which uses batch norm"):
    checks.validate(resnet)
  resnet.optimizer.grad_accum_steps = 1
  checks.validate(resnet)
  vit_config = tiny_config('vit')  # No batch norm: micro-batches sum to the whole-batch step.
  vit_config.optimizer.grad_accum_steps = 2
  checks.validate(vit_config)


def test_mlp_widths_may_be_a_tuple_or_a_list():
  for dims in [(32, 16), [32, 16]]:
    config = vision_config('mlp', hidden_dims=dims)
    checks.validate(config)
    assert param_count(build.build_model(config.model, 0)) == flops.accounting(config).params_total


def _split(config):
  graphdef, params, model_state = nnx.split(build.build_model(config.model, 0), nnx.Param, ...)
  return graphdef, params, model_state


def test_accuracy_and_the_confusion_matrix_break_ties_alike_the_first_class_wins():
  model = build.build_model(tiny_config('vit').model, 0)
  batch = classification_batch()
  sums = steps.loss_sums(*nnx.split(model, nnx.Param, ...), jax.tree.map(jnp.asarray, batch),
                         objective='classification', train=False)[0]
  # A zero-initialised head ties every class: argmax predicts class 0 for all.
  labels = np.argmax(batch['labels'], -1)
  assert float(sums['weight_sum']) == 8
  assert float(sums['top1_sum']) == np.sum(labels == 0) > 0
  assert float(sums['top1_sum']) == np.trace(np.asarray(sums['confusion']))
  assert float(sums['top5_sum']) == np.sum(labels < 5)

  from jaxscale.objectives import classification  # noqa: PLC0415
  labels, weights = np.eye(3, dtype=np.float32)[[0, 1, 1, 0]], np.ones(4, np.float32)
  # Strictly top (hit); tied after class 0 (miss); tied before class 2 (hit); second (miss).
  logits = jnp.array([[2., 1., 0.], [1., 1., 0.], [0., 1., 1.], [1., 2., 0.]])
  sums = classification.class_sums(logits, labels, weights, with_confusion=True)
  assert float(sums['top1_sum']) == 2 == np.trace(np.asarray(sums['confusion']))


def test_batch_norm_statistics_update_in_training_and_freeze_in_eval():
  graphdef, params, model_state = _split(tiny_config('resnet18_cifar'))
  batch = jax.tree.map(jnp.asarray, classification_batch())
  run = jax.jit(steps.loss_sums, static_argnames=('graphdef', 'objective', 'train'))
  _, trained_state = run(graphdef, params, model_state, batch, objective='classification', train=True)
  _, eval_state = run(graphdef, params, model_state, batch, objective='classification', train=False)
  before, after_train = jax.tree.leaves(model_state), jax.tree.leaves(trained_state)
  assert len(before) == 2 * (1 + 8 * 2 + 3)  # mean and var of every norm: stem, 8 blocks, shortcuts
  assert all(not np.allclose(a, b) for a, b in zip(before, after_train))
  for a, b in zip(before, jax.tree.leaves(eval_state)):
    np.testing.assert_array_equal(a, b)


def _train_steps(config, batch, mesh, num_steps):
  optimizer, lr_fn = optim.make_optimizer(config.optimizer, config.num_train_steps)
  graphdef, state, state_shardings = experiment.create_train_state(config, mesh, optimizer)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  train_step, _ = steps.compile_steps(graphdef, optimizer, lr_fn, state_shardings, batch_sharding,
                                      sharding.replicated(mesh), objective='classification')
  losses = []
  for _ in range(num_steps):
    state, metrics = train_step(state, sharding.global_batch(batch, batch_sharding))
    losses.append(float(metrics['train_loss']))
  return state, losses


def test_batch_norm_uses_the_global_batch_when_sharded():
  """8 devices each holding one image compute the statistics of one device holding all 8: under
  jit the batch mean is over the global batch, not over each shard."""
  config = tiny_config('resnet18_cifar')
  config.mesh.fsdp = 2  # Batch over ('data', 'fsdp') = 4 x 2; convolutions FSDP-sharded too.
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.devices.size == 8
  graphdef, params, model_state = _split(config)
  forward = functools.partial(steps.loss_sums, graphdef, objective='classification', train=True)
  batch = classification_batch()
  param_shardings = sharding.state_shardings(params, mesh, config.mesh.rules)
  sharded_sums, sharded_stats = jax.jit(forward)(
      jax.device_put(params, param_shardings), model_state,
      sharding.global_batch(batch, sharding.batch_sharding(mesh, config.mesh.rules)))
  assert len(sharded_sums['loss_sum'].sharding.device_set) == 8
  one_device = jax.devices()[0]
  single_sums, single_stats = jax.jit(forward)(
      *jax.device_put((params, model_state, batch), one_device))
  for a, b in zip(jax.tree.leaves((sharded_sums, sharded_stats)),
                  jax.tree.leaves((single_sums, single_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Per-shard statistics would differ: one image's channel means are not the batch's.
  first_mean = jax.tree.leaves(sharded_stats)[0]
  own_mean = jax.jit(forward)(params, model_state, jax.tree.map(lambda x: x[:1], batch))[1]
  assert not np.allclose(first_mean, jax.tree.leaves(own_mean)[0], atol=1e-4)


@pytest.mark.parametrize('key,model', [
    ('vit', dict(width=64, num_heads=4, mlp_dim=256)),
    ('vit_gap', dict(width=64, num_heads=4, mlp_dim=256, image_size=32)),
    ('resnet18_cifar', dict(width=16, image_size=128)),
    ('resnet50_imagenet', dict(width=16, image_size=224)),
    ('mlp', dict(hidden_dims=(256, 256))),
])
def test_train_flops_match_the_traced_matmuls_and_xla(key, model):
  """Only traced and compiled, never run, so the images can be large. ViT and MLP: exactly the
  matmul FLOPs jax's roofline counts in the train step. ResNet (its convolutions are counted by
  the hand count below): within 5% of XLA, which skips the taps on zero padding that the
  published convention counts and adds batch norm's elementwise work."""
  config = tiny_config(key, **model)
  graphdef, params, model_state = _split(config)
  batch_size, size = 4, config.model.image_size
  batch = {'image': jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
           'labels': jax.ShapeDtypeStruct((batch_size, NUM_CLASSES), jnp.float32),
           'weights': jax.ShapeDtypeStruct((batch_size,), jnp.float32)}

  def loss(p, batch):
    sums, _ = steps.loss_sums(graphdef, p, model_state, batch, objective='classification', train=True)
    return sums['loss_sum']

  grad = jax.value_and_grad(loss)
  ours = flops.accounting(config).train_flops_per_example * batch_size
  if key.startswith('resnet'):
    xla_flops = jax.jit(grad).lower(params, batch).compile().cost_analysis()['flops']
    assert abs(ours - xla_flops) / xla_flops < 0.05, (ours, xla_flops)
  else:
    _, traced = roofline.roofline(grad)(params, batch)
    assert ours == traced.flops


def test_resnet_flops_match_a_hand_count():
  """ResNet-18, CIFAR stem, width 4 on 8x8x3 images, 10 classes: every conv is
  2 * output pixels * kernel area * in channels * out channels."""
  config = tiny_config('resnet18_cifar', width=4, image_size=8)
  stem = 2 * 8 * 8 * 9 * 3 * 4
  stage0 = 4 * (2 * 8 * 8 * 9 * 4 * 4)              # Two blocks of two 3x3 convs, 8x8.
  # Each later stage halves the map and doubles the channels c -> 2c: a strided 3x3 conv, a 1x1
  # projection shortcut, then three 3x3 convs 2c -> 2c on the halved map.
  later = [2 * o * o * (9 * c * 2 * c + c * 2 * c + 3 * 9 * 2 * c * 2 * c)
           for o, c in ((4, 4), (2, 8), (1, 16))]
  head = 2 * 32 * 10
  cost = flops.resnet_cost(flops.model_kwargs(config))
  assert cost.forward_flops == stem + stage0 + sum(later) + head == 284800
  assert cost.first_layer_flops == stem
  assert cost.train_flops == 3 * 284800 - stem


@pytest.mark.parametrize('key', ['vit', pytest.param('resnet18_cifar', marks=pytest.mark.slow), 'mlp'])
def test_train_steps_lower_the_loss(key):
  config = tiny_config(key)
  config.optimizer.learning_rate = 1e-2
  _, losses = _train_steps(config, classification_batch(), sharding.make_mesh(config.mesh), 8)
  assert losses[-1] < 0.5 * losses[0], losses


def test_vit_scanned_layers_compute_the_same_function_as_the_loop():
  loop_model = build.build_model(tiny_config('vit').model, 0)
  scan_model = build.build_model(tiny_config('vit', scan_layers=True, remat_policy='full').model, 0)
  layer_states = [nnx.state(block) for block in loop_model.blocks]
  nnx.update(scan_model.blocks, jax.tree.map(lambda *xs: jnp.stack(xs), *layer_states))
  for name in ('patch_PxPxCxD', 'patch_bias_D', 'cls_D', 'pos_LxD', 'head_DxK', 'head_bias_K'):
    getattr(scan_model, name)[...] = getattr(loop_model, name)[...] + 0.01  # Non-zero head.
    getattr(loop_model, name)[...] = getattr(scan_model, name)[...]
  images = jnp.asarray(classification_batch(batch_size=2)['image'])
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(forward(loop_model, images), forward(scan_model, images), atol=1e-5)


def test_throughput_benchmark_reports_images_per_second_for_classifiers():
  root = pathlib.Path(__file__).parent.parent
  result = subprocess.run(
      [sys.executable, str(root / 'benchmarks' / 'train_throughput.py'),
       '--config', str(root / 'configs' / 'mlp_digits.py'), '--config.batch_size=16',
       '--config.model.hidden_dims=(32,)', '--steps=2', '--warmup=1'],
      capture_output=True, text=True, check=True, cwd=root, timeout=300)
  row = json.loads(result.stdout.strip().splitlines()[-1])
  assert row['num_classes'] == 10 and row['image_size'] == 8  # From the digits metadata.
  assert row['params_total'] == 8 * 8 * 3 * 32 + 32 + 32 * 10 + 10
  assert row['flops_per_step'] == 16 * 2 * (2 * 8 * 8 * 3 * 32 + 3 * 32 * 10)
  assert row['examples_per_sec'] > 0 and 'tokens_per_s' not in row
