"""Bad configs fail fast, naming the key and what is allowed."""

import json
import subprocess
import sys
import time

import pytest

import jaxscale.data  # noqa: F401  (TensorFlow's import time is not validation time)
from jaxscale.config import config_base, validation
from jaxscale.config.validation import ConfigError
from jaxscale.models.registry import MODELS
from jaxscale.train import checks
from tests.helpers import tiny_config


def test_the_tiny_config_is_valid():
  checks.validate(tiny_config(), num_devices=8)


@pytest.mark.parametrize('mutate, message', [
    (lambda c: c.__setattr__('num_train_step', 5), "Unknown config key 'config.num_train_step'. Did you mean 'config.num_train_steps'?"),
    (lambda c: c.dataset.__setattr__('seqlen', 5), "'config.dataset.seqlen'"),
    (lambda c: c.model.__setattr__('n_layers', 5), "Unknown config key 'config.model.n_layers'.*config.model.num_layers"),
    (lambda c: c.optimizer.__setattr__('schedule', 'cosin'), "config.optimizer.schedule='cosin' is not allowed; choose one of: constant, cosine, wsd"),
    (lambda c: c.model.__setattr__('dtype', 'bf16'), "config.model.dtype='bf16' is not allowed; choose one of: bfloat16, float32"),
    (lambda c: c.model.__setattr__('name', 'gpt5'), "config.model.name='gpt5' is not a registered model; choose one of: .*transformer"),
    (lambda c: c.model.__setattr__('num_heads', 5), 'config.model.d_model=32 must split into config.model.num_heads=5'),
    (lambda c: c.model.__setattr__('num_kv_heads', 3), r'config.model.num_kv_heads=3 must divide config.model.num_heads=4'),
    (lambda c: c.model.__setattr__('norm_eps', 0.0), r'config.model.norm_eps=0.0 must be a positive number'),
    (lambda c: c.__setattr__('num_train_steps', 0), 'config.num_train_steps=0 must be positive'),
    (lambda c: c.quantization.__setattr__('mode', 'ptq'), "config.quantization.mode='ptq' is not allowed; choose one of: none, qat"),
    (lambda c: c.quantization.__setattr__('weight_dtype', 'int2'), "config.quantization.weight_dtype='int2' is not allowed; choose one of: int4, int8"),
    (lambda c: c.export.__setattr__('max_seq_len', 8), r'config.export.max_seq_len=8 must be 0 \(the training seq_len\) or at least config.dataset.seq_len=16'),
])
def test_bad_keys_and_values_are_named(mutate, message):
  config = tiny_config()
  config.unlock()
  mutate(config)
  start = time.perf_counter()
  with pytest.raises(ConfigError, match=message):
    checks.validate(config, num_devices=8)
  assert time.perf_counter() - start < 1.0


def test_wrong_type_is_named():
  config = tiny_config()
  config.unlock()
  del config['batch_size']
  config.batch_size = '32'
  with pytest.raises(ConfigError, match=r"config.batch_size='32' has type str; expected int"):
    checks.validate(config)


def test_mesh_must_divide_devices_and_batch_must_divide_mesh():
  config = tiny_config(**{'mesh.fsdp': 3})
  with pytest.raises(ConfigError, match='config.mesh'):
    checks.validate(config, num_devices=8)
  config = tiny_config(**{'batch_size': 12})
  with pytest.raises(ConfigError, match=r'config.batch_size=12 .* \(8 shards\)'):
    checks.validate(config, num_devices=8)


def test_cli_rejects_an_unknown_override_before_training(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxscale.main', '--config', 'configs/default.py',
       '--workdir', str(tmp_path / 'run'), '--config.model.num_layer=3'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'num_layer' in result.stderr
  assert not (tmp_path / 'run').exists()


def test_keys_added_to_the_schema_since_a_run_started_do_not_block_its_resume():
  from jaxscale.config import workdir
  new = workdir.config_as_dict(config_base.get_base_config())
  old = json.loads(json.dumps(new))
  del old['lora'], old['init_from']['reinit']  # A record written before these keys existed.
  assert workdir.config_differences(old, new) == []
  changed = json.loads(json.dumps(new))
  changed['lora']['rank'] = 4
  assert workdir.config_differences(old, changed) == ["config.lora.rank: '<absent>' -> 4"]


def test_each_component_registers_the_checks_of_its_own_keys():
  owners = {name.rsplit('.', 1)[0] for name in validation.registered_checks()}
  assert owners >= {'jaxscale.models.registry', 'jaxscale.models.lora', 'jaxscale.data.sources',
                    'jaxscale.data.augment', 'jaxscale.objectives.registry',
                    'jaxscale.train.optim', 'jaxscale.compress.quantize',
                    'jaxscale.compress.pruning', 'jaxscale.compress.distill',
                    'jaxscale.checkpoint.init_from'}
  # Each model's own values are checked by its registry entry, beside its class.
  for name in ('transformer', 'encoder', 'vit', 'resnet', 'mlp'):
    assert MODELS.check(name).__module__.startswith('jaxscale.models.'), name


def test_a_component_can_add_a_check_that_validation_runs_without_knowing_it(monkeypatch):
  monkeypatch.setattr(validation, '_CHECKS', dict(validation._CHECKS))

  @validation.register_check
  def refuse_long_runs(config):
    if config.num_train_steps > 3:
      raise ConfigError(f'config.num_train_steps={config.num_train_steps} is over 3.')

  checks.validate(tiny_config(num_train_steps=3))
  with pytest.raises(ConfigError, match='config.num_train_steps=4 is over 3'):
    checks.validate(tiny_config(num_train_steps=4))
