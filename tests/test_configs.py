"""Every experiment config in configs/ validates, builds, and is counted exactly by flops.py."""

import jax
import pytest
from flax import nnx

from jaxscale.metrics import flops
from jaxscale.models import build
from jaxscale.train import checks
from tests.helpers import CONFIG_DIR, load_config_file

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob('*.py'))
# What the data would fill in at run time (loop.resolve_config): classes and vocabulary.
NUM_CLASSES = {'digits': 10, 'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000}


def _load(name):
  return load_config_file(name[:-3])


def _resolved(config):
  config = config.copy_and_resolve_references()
  if 'vocab_size' in config.model and not config.model.vocab_size:
    config.model.vocab_size = 256
  if 'num_classes' in config.model and not config.model.num_classes:
    config.model.num_classes = NUM_CLASSES.get(config.dataset.name)  # None: a text dataset.
  if 'image_size' in config.model and not config.model.image_size:
    config.model.image_size = config.dataset.image_size
  return config


def test_all_experiment_configs_are_found():
  assert {'default.py', 'mlp_digits.py', 'resnet_digits.py', 'resnet18_cifar10.py',
          'vit_s16_cifar10.py', 'resnet50_imagenet.py', 'vit_b16_imagenet.py'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates_and_its_parameter_count_is_exact(name, request):
  config = _load(name)
  if config.dataset.get('tokenizer', 'byte').startswith('hf:'):
    # A tokenizer its docstring trains first (jaxscale.data.train_tokenizer): the same one.
    config.dataset.tokenizer = f"hf:{request.getfixturevalue('stdlib_bpe')}"
  checks.validate(config, num_devices=jax.device_count(), process_count=1)
  config = _resolved(config)
  model = nnx.eval_shape(lambda: build.build_model(config.model, seed=0))
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  size = flops.accounting(config)
  assert size.params_total == actual
  assert size.train_flops_per_example > 0


@pytest.mark.parametrize('name, expected_millions', [
    ('resnet50_imagenet.py', 25.56), ('vit_b16_imagenet.py', 86.57)])
def test_standard_recipes_have_their_published_sizes(name, expected_millions):
  size = flops.accounting(_resolved(_load(name)))
  assert size.params_total / 1e6 == pytest.approx(expected_millions, abs=0.01)
